"""``first-frame``: the worked example of docs/adding-a-method.md (a method in one folder, on every family)."""

"""ConsiStory (Tewel et al., SIGGRAPH 2024): see ``method.py`` and ``docs/methods/consistory.md``."""

"""``storycast methods``: the methods and model presets available."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list the methods (with their settings) and the model presets"


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("name", nargs="?", help="show one method's card (families and why, cost, source) and settings")
    parser.add_argument(
        "--table", action="store_true", help="print the methods as a Markdown table (the README's table of methods)"
    )
    parser.set_defaults(handler=run)


def print_settings(settings_class: Any) -> None:
    """Each setting: its --set name, dotted path, type, default and help (from the settings' own fields)."""
    import textwrap

    from storycast.settings import describe_type

    # The method's own settings first, then one block per group.
    leaves = sorted(settings_class.leaves(), key=lambda leaf: len(leaf.path) > 1)
    if not leaves:
        print("  (no settings of its own: frames follow the generation settings)")
        return
    group = None
    for leaf in leaves:
        if len(leaf.path) > 1 and leaf.path[0] != group:
            group = leaf.path[0]
            print(f"\n  {group}:")
        where = f"   ({leaf.dotted})" if leaf.dotted != leaf.flat else ""
        print(f"    {leaf.flat} = {leaf.default!r}   [{describe_type(leaf.annotation)}]{where}")
        for line in textwrap.wrap(leaf.help, width=100):
            print(f"        {line}")


def print_card(method: Any) -> None:
    """The method's card: families and why, training, input, cost per frame, source."""
    import textwrap

    from storycast.methods.card import family_labels

    card = method.card
    rows = [("families", f"{family_labels(method.families)}" + (f": {card.families_why}" if card else ""))]
    if card is not None:
        rows += [("training", card.training), ("input", card.inputs), ("cost", card.cost), ("from", card.source)]
    for label, text in rows:
        print("\n".join(textwrap.wrap(f"  {label + ':':<12}{text}", width=110, subsequent_indent=" " * 14)))


def run(args: argparse.Namespace) -> int:
    # Built-in methods are described by their about.py modules: nothing here imports torch.
    from storycast.methods.registry import get_about, list_methods
    from storycast.models.presets import ADAPTERS, BASE_PRESETS

    names = [args.name] if args.name else list_methods()
    if args.table:
        from storycast.methods.card import methods_table

        print(methods_table(get_about(name) for name in names))
        return 0
    print("methods:")
    for name in names:
        about = get_about(name)
        print(f"  {name:<16} {about.summary}  [{', '.join(about.families)}]")
    if args.name:
        print()
        print_card(get_about(args.name))
        print(f"\nsettings (story file: methods: {{{args.name}: {{...}}}}; command line: --set NAME=VALUE):")
        print_settings(get_about(args.name).settings)
        return 0
    print("model presets (--preset):")
    for preset in BASE_PRESETS.values():
        where = preset.repo_id or "built in code"
        print(f"  {preset.name:<16} {preset.description} ({where})")
    print("adapter weights:")
    for ref in ADAPTERS.values():
        print(f"  {ref.name:<16} {ref.description} ({ref.repo_id}{'/' + ref.filename if ref.filename else ''})")
    return 0

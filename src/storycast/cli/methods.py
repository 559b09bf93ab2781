"""``storycast methods``: the methods and model presets available."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list the methods (with their settings) and the model presets"


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("name", nargs="?", help="show one method's settings and defaults")
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


def run(args: argparse.Namespace) -> int:
    from storycast.methods.registry import get_method, list_methods
    from storycast.models.presets import ADAPTERS, BASE_PRESETS

    names = [args.name] if args.name else list_methods()
    print("methods:")
    for name in names:
        method = get_method(name)
        print(f"  {name:<16} {method.summary}  [{', '.join(method.families)}]")
    if args.name:
        print(f"\nsettings (story file: methods: {{{args.name}: {{...}}}}; command line: --set NAME=VALUE):")
        print_settings(get_method(args.name).settings_class)
        return 0
    print("model presets (--preset):")
    for preset in BASE_PRESETS.values():
        where = preset.repo_id or "built in code"
        print(f"  {preset.name:<16} {preset.description} ({where})")
    print("adapter weights:")
    for ref in ADAPTERS.values():
        print(f"  {ref.name:<16} {ref.description} ({ref.repo_id}{'/' + ref.filename if ref.filename else ''})")
    return 0

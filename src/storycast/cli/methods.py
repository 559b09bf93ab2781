"""``storycast methods``: the methods and model presets available."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

HELP = "list the methods (with their settings) and the model presets"


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("name", nargs="?", help="show one method's settings and defaults")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from storycast.methods.registry import get_method, list_methods
    from storycast.models.presets import ADAPTERS, BASE_PRESETS

    names = [args.name] if args.name else list_methods()
    print("methods:")
    for name in names:
        method = get_method(name)
        print(f"  {name:<16} {method.summary}  [{', '.join(method.families)}]")
        if args.name:
            for field in dataclasses.fields(method.settings_class):
                print(f"      {field.name} = {field.default!r}")
    if args.name:
        return 0
    print("model presets (--preset):")
    for preset in BASE_PRESETS.values():
        where = preset.repo_id or "built in code"
        print(f"  {preset.name:<16} {preset.description} ({where})")
    print("adapter weights:")
    for ref in ADAPTERS.values():
        print(f"  {ref.name:<16} {ref.description} ({ref.repo_id}{'/' + ref.filename if ref.filename else ''})")
    return 0

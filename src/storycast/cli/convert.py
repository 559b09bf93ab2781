"""``storycast convert``: between our story format and the ConsiStory-Human benchmark layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "convert stories between the storycast format and the ConsiStory-Human benchmark format"
EPILOG = """\
examples:
  storycast convert story_000.json -o story_000.yaml          # benchmark -> storycast
  storycast convert mystory.yaml --to consistory-human -o s.json
  storycast convert bench/single/ -o stories/                  # a whole folder"""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a story file, or a folder of them")
    parser.add_argument("-o", "--output", type=Path, help="output file (or folder for a folder); default: print")
    parser.add_argument(
        "--to",
        choices=("storycast", "consistory-human"),
        help="target format (default: the other one of the input's)",
    )
    parser.set_defaults(handler=run)


def render(story: Any, target: str) -> str:
    import yaml

    from storycast.story.benchmark import to_consistory_human
    from storycast.story.parse import story_to_dict

    if target == "consistory-human":
        return json.dumps(to_consistory_human(story), indent=4, ensure_ascii=False) + "\n"
    base = story.source.parent if story.source else None
    return yaml.safe_dump(story_to_dict(story, relative_to=base), sort_keys=False, allow_unicode=True, width=100)


def run(args: argparse.Namespace) -> int:
    from storycast.errors import StorycastError
    from storycast.story.parse import load_story
    from storycast.utils.io import atomic_write_text

    if args.source.is_dir():
        if args.output is None:
            raise StorycastError(f"'{args.source}' is a folder. Fix: pass -o OUTPUT_FOLDER.")
        files = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".yaml", ".yml", ".json"))
    else:
        files = [args.source]
    for path in files:
        story = load_story(path)
        target = args.to or ("storycast" if story.source_format != "storycast" else "consistory-human")
        text = render(story, target)
        if args.output is None:
            sys.stdout.write(text)
            continue
        suffix = ".json" if target == "consistory-human" else ".yaml"
        if args.source.is_dir():
            destination = args.output / path.relative_to(args.source).with_suffix(suffix)
        else:
            destination = args.output
        atomic_write_text(destination, text)
        print(f"{path} -> {destination} ({target})")
    return 0

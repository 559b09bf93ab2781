"""``storycast convert``: between our story format and the ConsiStory-Human benchmark layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storycast.errors import Problem

HELP = "convert stories between the storycast format and the ConsiStory-Human benchmark format"
EPILOG = """\
examples:
  storycast convert story_000.json -o story_000.yaml          # benchmark -> storycast
  storycast convert mystory.yaml --to consistory-human -o s.json
  storycast convert examples/two_friends.yaml --to consistory-human --drop-frames -o s.json
  storycast convert bench/single/ -o stories/                  # a whole folder

to consistory-human:
  The benchmark format holds the characters' descriptions and class words ('character', 'token'), the
  style prefix ('style') and, per frame, the full prompt ('prompts'), the context ('settings'; a frame
  without one gets its whole text) and the context type ('settings_types'). Every prompt shows every
  character: a frame that shows only some of the characters, or none, cannot be written, so convert
  refuses the story and names each such frame (exit status 2; that story's file is not written).
  --drop-frames leaves such frames out instead, with a warning for each. Fields the format has no place
  for are left out, each named in a warning on stderr: the title, generation and method settings,
  character ids, names and references, and per-frame seeds, negative prompts, captions, masks and
  control images; a style suffix stays at the end of every prompt. The file written always reads back
  ('storycast validate' accepts it)."""


def add_parser(subparsers: Any, name: str) -> None:
    from storycast.cli.common import add_language_argument

    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a story file, or a folder of them")
    add_language_argument(parser)
    parser.add_argument("-o", "--output", type=Path, help="output file (or folder for a folder); default: print")
    parser.add_argument(
        "--to",
        choices=("storycast", "consistory-human"),
        help="target format (default: the other one of the input's)",
    )
    parser.add_argument(
        "--drop-frames",
        action="store_true",
        help="to consistory-human: leave out frames that do not show every character (default: refuse the story)",
    )
    parser.set_defaults(handler=run)


def render(story: Any, target: str, *, drop_frames: bool = False) -> tuple[str, list[Problem]]:
    """The story as text in ``target`` format, and the problems naming what that format could not hold."""
    import yaml

    from storycast.story.benchmark import consistory_human_losses, to_consistory_human
    from storycast.story.parse import story_to_dict

    if target == "consistory-human":
        document = to_consistory_human(story, drop_frames=drop_frames)
        losses = consistory_human_losses(story, drop_frames=drop_frames)
        return json.dumps(document, indent=4, ensure_ascii=False) + "\n", losses
    base = story.source.parent if story.source else None
    text = yaml.safe_dump(story_to_dict(story, relative_to=base), sort_keys=False, allow_unicode=True, width=100)
    return text, []


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
        story = load_story(path, language=args.lang)
        target = args.to or ("storycast" if story.source_format != "storycast" else "consistory-human")
        text, losses = render(story, target, drop_frames=args.drop_frames)
        for problem in losses:
            print(f"warning: {problem.format(path)}", file=sys.stderr)
        if args.output is None:
            sys.stdout.write(text)
            continue
        suffix = ".json" if target == "consistory-human" else ".yaml"
        if args.source.is_dir():
            destination = args.output / path.relative_to(args.source).with_suffix(suffix)
        else:
            destination = args.output
        atomic_write_text(destination, text)
        left_out = f", {len(losses)} field(s) not carried over" if losses else ""
        print(f"{path} -> {destination} ({target}{left_out})")
    return 0

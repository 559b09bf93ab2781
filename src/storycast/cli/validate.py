"""``storycast validate``: print every problem in story files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "check story files and print every problem (exit status 1 if any)"


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("stories", type=Path, nargs="+", metavar="STORY", help="story files or folders of them")
    parser.add_argument("--method", help="also check the story's settings for this method")
    parser.set_defaults(handler=run)


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in (".yaml", ".yml", ".json")))
        else:
            files.append(path)
    return files


def run(args: argparse.Namespace) -> int:
    from storycast.errors import StorycastError, StoryError
    from storycast.methods.registry import get_method
    from storycast.story.parse import load_story

    failed = 0
    for path in _files(args.stories):
        try:
            story = load_story(path)
            if args.method:
                get_method(args.method).settings_class.from_mapping(
                    story.methods.get(args.method), where=f"{path}: methods.{args.method}"
                )
        except StoryError as err:
            failed += 1
            for problem in err.problems:
                print(f"error: {problem.format(path)}")
            continue
        except StorycastError as err:
            failed += 1
            print(f"error: {err}")
            continue
        frames = f"{len(story)} frame{'s' if len(story) != 1 else ''}"
        characters = f"{len(story.characters)} character{'s' if len(story.characters) != 1 else ''}"
        print(f"ok: {path} ({frames}, {characters}, {story.source_format} format)")
    if failed:
        print(f"{failed} file(s) with problems")
    return 1 if failed else 0

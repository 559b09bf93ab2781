"""``storycast validate``: print every problem in story files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "check story files and print every problem (exit status 1 if any)"


def add_parser(subparsers: Any, name: str) -> None:
    from storycast.cli.common import add_language_argument

    parser = subparsers.add_parser(name, help=HELP, description=HELP)
    parser.add_argument("stories", type=Path, nargs="+", metavar="STORY", help="story files or folders of them")
    parser.add_argument("--method", help="also check the story's settings for this method")
    add_language_argument(parser)
    parser.set_defaults(handler=run)


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in (".yaml", ".yml", ".json")))
        else:
            files.append(path)
    return files


TINY_PRESETS = {"sdxl": "tiny", "sd15": "tiny-sd15", "flux": "tiny-flux"}
"""A stand-in model per family: planning needs a model's facts, and these are known without loading anything."""


def _check_for_method(story: Any, name: str) -> None:
    """Everything the planner refuses before loading, for the chosen method on its own (first) family, with the
    story's settings (its ``methods:`` entry, its generation settings); imports the method, loads no model."""
    from storycast.methods.registry import get_method
    from storycast.models.spec import ModelSpec
    from storycast.runs.plan import plan_run

    method = get_method(name)
    preset = TINY_PRESETS.get(method.families[0], "tiny")
    plan_run(story, method, model=ModelSpec(source=preset, device="cpu"))


def run(args: argparse.Namespace) -> int:
    from storycast.errors import StorycastError, StoryError
    from storycast.methods.registry import get_method
    from storycast.runs.plan import check_method_names
    from storycast.story.parse import load_story

    if args.method:
        get_method(args.method)  # an unknown --method: did-you-mean, before any file is read
    failed = 0
    for path in _files(args.stories):
        try:
            story = load_story(path, language=args.lang)
            # What the planner refuses before any model loads: methods and their settings (no torch imported).
            check_method_names(story)
            if args.method:
                _check_for_method(story, args.method)
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

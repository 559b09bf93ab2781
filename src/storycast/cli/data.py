"""``storycast data``: build StoryDB-style character sets from images and videos, and look at them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "build a training data set of character sets from images and videos (build), or describe one (info)"
EPILOG = """\
examples:
  storycast data build photos/ --out data/mine                    # a sub-folder per character, sidecar .txt captions
  storycast data build film_frames/ --out data/film --set min_images=6
  storycast data build tests_src/ --out data/tiny --preset tiny   # offline: no models, template captions
  storycast data info data/mine

source folder layout:
  SRC/characters.yaml      optional: {characters: {mara: {class_word: woman}}, images: {scenes/tea.png: [mara, tom]}}
  SRC/mara/001.jpg         a sub-folder per character (known identity); other images are clustered
  SRC/mara/001.txt         optional caption; SRC/mara/001.mask.png optional mask (white = character)
  SRC/clip.mp4             videos: a frame every second (video_every_seconds)

`storycast data build --set NAME=VALUE` takes these settings (`--list-settings` prints their help):
  min_images, max_images, class_word, max_side, masks, captions, caption_template, identities,
  near_duplicate_bits, background_bits, video_every_seconds, video_max_frames, ..."""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build a data set from a folder of images and videos")
    build.add_argument("source", type=Path, help="folder of images and/or videos")
    build.add_argument("--out", "-o", type=Path, required=True, help="data set folder to write")
    build.add_argument("--preset", choices=("tiny", "full"), default="full", help="tiny: no models, offline")
    build.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE", help="a build setting")
    build.add_argument("--device", default="cpu", help="device of the models (captions, masks, embeddings)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
    build.add_argument("--local-files-only", action="store_true", help="never contact the Hub")
    build.add_argument("--list-settings", action="store_true", help="print every build setting with its help")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(handler=run_build)
    info = actions.add_parser("info", help="what a data set holds")
    info.add_argument("folder", type=Path)
    info.set_defaults(handler=run_info)


def run_build(args: argparse.Namespace) -> int:
    from storycast.cli.common import parse_assignments
    from storycast.data.build import BuildSettings, build_dataset

    if args.list_settings:
        from storycast.cli.methods import print_settings

        print("build settings (--set NAME=VALUE):")
        print_settings(BuildSettings)
        return 0
    settings = BuildSettings.from_mapping(parse_assignments(args.settings), where="--set")
    bar = _Bar(not args.no_progress)
    try:
        info = build_dataset(
            args.source,
            args.out,
            settings,
            tiny=args.preset == "tiny",
            device=args.device,
            overwrite=args.overwrite,
            local_files_only=args.local_files_only,
            progress=bar,
        )
    finally:
        bar.close()
    print(f"wrote {info.sets} character set(s), {info.images} images of {info.characters} character(s) -> {args.out}")
    if info.dropped:
        print("left out: " + ", ".join(f"{reason} {count}" for reason, count in sorted(info.dropped.items())))
    print(f"check the contact sheets: {args.out / 'contact_sheets'}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json

    from storycast.data.format import MANIFEST_FILE, open_dataset

    open_dataset(args.folder)  # checks the folder is a readable data set
    data = json.loads((args.folder / MANIFEST_FILE).read_text())
    print(f"{args.folder}: {data['sets']} set(s), {data['images']} images, {data['characters']} character(s)")
    print(f"built from {data['source']}")
    return 0


class _Bar:
    """A tqdm bar over the images analysed."""

    def __init__(self, enabled: bool):
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="analysing images", dynamic_ncols=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""``storycast identities``: the identity library (identities discovered once and reused)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "list, show or remove identities in the identity library"
EPILOG = """\
examples:
  storycast identities                 # every stored identity
  storycast identities show 3f2a9c     # one identity (a key prefix is enough): settings and preview
  storycast identities remove 3f2a9c   # forget it; the next run discovers it again"""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", nargs="?", choices=("list", "show", "remove"), default="list")
    parser.add_argument("key", nargs="?", help="identity key, or an unambiguous prefix of it")
    parser.add_argument(
        "--cache-dir", type=Path, help="storycast cache (default: $STORYCAST_CACHE or ~/.cache/storycast)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import shutil

    from storycast.errors import StorycastError
    from storycast.identity.library import IdentityLibrary
    from storycast.runs.runner import default_cache_dir

    library = IdentityLibrary((args.cache_dir or default_cache_dir()) / "identities")
    keys = library.keys()
    if args.action == "list":
        if not keys:
            print(f"no identities in {library.root}")
            return 0
        for key in keys:
            info = library.info(key)
            if info is None:
                continue
            what = info.get("prompt") or ", ".join(info.get("photos", []))
            print(f"{key}  {info.get('character', '?'):<12} {info.get('source', '?'):<10} {what}")
        return 0
    if not args.key:
        raise StorycastError(
            f"'{args.action}' needs a key. Fix: storycast identities {args.action} KEY (see the list)."
        )
    matches = [key for key in keys if key.startswith(args.key)]
    if len(matches) != 1:
        found = "no identity" if not matches else f"{len(matches)} identities"
        raise StorycastError(f"{found} in {library.root} start with '{args.key}'. Fix: give more of the key.")
    key = matches[0]
    if args.action == "remove":
        shutil.rmtree(library.path(key))
        print(f"removed {key}")
        return 0
    record = library.get(key)
    assert record is not None
    print(json.dumps(record.info, indent=2, default=str))
    print(f"embedding: {tuple(record.embedding.shape)}, norm {float(record.embedding.norm()):.3f}")
    if record.preview_path:
        print(f"preview: {record.preview_path}")
    return 0

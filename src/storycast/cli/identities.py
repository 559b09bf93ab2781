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

    from storycast.errors import StorycastError
    from storycast.identity.library import IdentityLibrary
    from storycast.utils.environment import default_cache_dir

    library = IdentityLibrary((args.cache_dir or default_cache_dir()) / "identities")
    if args.action == "list":
        contents = library.scan()
        if not contents.infos and not contents.damaged:
            print(f"no identities in {library.root}")
            return 0
        for key, info in contents.infos.items():
            what = info.get("prompt") or ", ".join(str(p) for p in info.get("photos", []))
            print(f"{key}  {info.get('character', '?')!s:<12} {info.get('source', '?')!s:<10} {what}")
        for damage in contents.damaged:
            print(f"{damage.key}  damaged: {damage.describe()}")
        return 0
    if not args.key:
        raise StorycastError(
            f"'{args.action}' needs a key. Fix: storycast identities {args.action} KEY (see the list)."
        )
    stored = library.keys()
    matches = [key for key in stored if key.startswith(args.key)]
    if len(matches) != 1:
        found = "no identity" if not matches else f"{len(matches)} identities"
        raise StorycastError(f"{found} in {library.root} start with '{args.key}'. Fix: give more of the key.")
    key = matches[0]
    if args.action == "remove":
        library.remove(key)
        print(f"removed {key}")
        return 0
    record = library.get(key)
    if record is None:
        raise StorycastError(
            f"identity {key} in {library.root} is damaged or was removed meanwhile (see the warning above); it is no "
            f"longer in the library. Fix: nothing to do, the next run that needs it discovers it again."
        )
    print(json.dumps(record.info, indent=2, default=str))
    print(f"embedding: {tuple(record.embedding.shape)}, norm {float(record.embedding.norm()):.3f}")
    print(f"sha256: {record.checksum} (verified)" if record.checksum else "sha256: none (stored before checksums)")
    if record.preview_path:
        print(f"preview: {record.preview_path}")
    return 0

"""``storycast app``: the web app (Gradio), a page over the same library functions as the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "the web app: write a story, draw it with live progress, redraw frames, download (needs storycast[ui])"
EPILOG = """\
examples:
  storycast app --preset tiny                # offline, random-weight models: try the page in seconds
  storycast app --preset sdxl --port 7861
  storycast app --host 0.0.0.0               # reachable from your network (anyone there can draw)

The app listens on 127.0.0.1 (this machine only) unless --host or --share says otherwise. Each drawing is a run
folder under ROOT/runs/ (as `storycast generate --out` writes: it resumes, and `storycast evaluate` and
`storycast export` read it); uploaded photos and story files are kept under ROOT/uploads/."""


def add_parser(subparsers: Any, name: str) -> None:
    from storycast.app.config import (
        DEFAULT_MAX_FRAMES,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_QUEUE_SIZE,
        LOCAL_HOST,
        field_help,
    )
    from storycast.models.presets import BASE_PRESETS

    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=sorted(BASE_PRESETS), default="sdxl", help="model preset selected at start (default sdxl)"
    )
    parser.add_argument(
        "--host", default=LOCAL_HOST, help=f"address to listen on (default {LOCAL_HOST}: this machine)"
    )
    parser.add_argument("--port", type=int, help="port (default 7860, or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument(
        "--root", type=Path, default=Path("storycast-app"), help="the app's folder: uploads, runs, downloads"
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="storycast cache, with the identity library (default: $STORYCAST_CACHE)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"requests that may wait while one drawing runs; more are told the app is busy (default {DEFAULT_QUEUE_SIZE})",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest uploaded photo or story file in MiB (default {DEFAULT_MAX_UPLOAD_MB:g}; story files at most 1)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help=f"{field_help('max_frames')} (default {DEFAULT_MAX_FRAMES})",
    )
    parser.add_argument("--examples", type=Path, help=field_help("examples"))
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> Any:
    from storycast.app.config import AppConfig

    return AppConfig(
        root=args.root,
        preset=args.preset,
        host=args.host,
        port=args.port,
        share=args.share,
        cache_dir=args.cache_dir,
        device=args.device,
        queue_size=args.queue_size,
        max_upload_mb=args.max_upload_mb,
        max_frames=args.max_frames,
        examples=args.examples,
    )


def import_ui() -> Any:
    """:mod:`storycast.app.ui`, or an error naming the extra that brings gradio."""
    from storycast.errors import ExtraNotInstalledError

    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ExtraNotInstalledError(
            f"the app needs gradio, which is not installed ({err}). Fix: pip install 'storycast[ui]'."
        ) from None
    from storycast.app import ui

    return ui


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ui = import_ui()
    ui.launch(config)
    return 0

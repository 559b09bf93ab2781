"""``storycast export``: a run folder as storyboard sheets, comic pages or a picture book, in PDF, CBZ, HTML or PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "export a run as a storyboard grid, comic pages or a picture book (PDF, CBZ, HTML or PNG pages)"
EPILOG = """\
examples:
  storycast export runs/demo                                   # comic pages -> runs/demo/exports/comic.pdf
  storycast export runs/demo --layout book -o lighthouse.pdf   # title page, one frame and its text a page
  storycast export runs/demo --format cbz --comic-style four-panel
  storycast export runs/demo --format html --layout grid       # one self-contained file
  storycast export runs/demo --format png --page Letter --landscape --dpi 300

layouts:
  grid   the storyboard sheet, paginated: --columns frames a row, --rows rows a page (default: what fits).
  comic  panels of varied sizes with the frames' captions in narration boxes and their quoted text
         ("...") in speech boxes: --comic-style classic (StoryDiffusion's rows of big panels and stacked
         pairs) or four-panel (four equal panels a page).
  book   a title page, then one frame a page with its caption set below it.

The captions are the story's (a frame's 'caption', else its text with characters called by name). Without -o,
the export goes to RUN/exports/<layout>.<format> (a folder RUN/exports/<layout>-png for png). See docs/export.md."""


def add_parser(subparsers: Any, name: str) -> None:
    from storycast.export.api import FORMATS
    from storycast.export.layouts import LAYOUTS
    from storycast.export.settings import COMIC_STYLES, ExportSettings

    defaults = ExportSettings()
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder (the --out of `storycast generate`)")
    parser.add_argument("--format", choices=FORMATS, help="pdf, cbz, html or png (default: from -o's name, else pdf)")
    parser.add_argument("--layout", choices=LAYOUTS, default="comic", help="grid, comic or book (default: comic)")
    parser.add_argument(
        "-o", "--out", type=Path, help="output file (a folder for png); default: RUN/exports/<layout>.<format>"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    page = parser.add_argument_group("page")
    page.add_argument(
        "--page",
        default=defaults.page,
        help="A3, A4, A5, Letter, Legal, square, or WxH with a unit: 6x9in, 148x210mm (default: A4)",
    )
    page.add_argument("--landscape", action="store_true", help="turn the page sideways")
    page.add_argument(
        "--dpi", type=int, default=defaults.dpi, help=f"page resolution (default {defaults.dpi}; 300 for print)"
    )
    page.add_argument(
        "--margin", type=float, default=defaults.margin_mm, help=f"page margin in mm (default {defaults.margin_mm:g})"
    )
    page.add_argument(
        "--gutter",
        type=float,
        default=defaults.gutter_mm,
        help=f"space between panels in mm (default {defaults.gutter_mm:g})",
    )
    page.add_argument(
        "--text-size",
        type=float,
        default=defaults.text_pt,
        help=f"captions, speech and book text in points (default {defaults.text_pt:g})",
    )
    page.add_argument("--columns", type=int, help="grid: frames a row (default 3)")
    page.add_argument("--rows", type=int, help="grid: rows a page (default: as many as fit)")
    page.add_argument(
        "--comic-style", choices=COMIC_STYLES, default=defaults.comic_style, help="comic: classic or four-panel"
    )
    page.add_argument("--no-title-page", action="store_true", help="book: start with the first frame")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from storycast.export.api import export_run, format_of
    from storycast.export.settings import ExportSettings

    settings = ExportSettings(
        page=args.page,
        landscape=args.landscape,
        dpi=args.dpi,
        margin_mm=args.margin,
        gutter_mm=args.gutter,
        columns=args.columns,
        rows=args.rows,
        comic_style=args.comic_style,
        text_pt=args.text_size,
        title_page=not args.no_title_page,
    )
    format = args.format or (format_of(args.out) if args.out is not None else None) or "pdf"
    written = export_run(args.run, format, args.layout, args.out, settings, overwrite=args.overwrite)
    if format == "png":
        print(f"{args.layout}: {len(written)} page(s) -> {written[0].parent}")
    else:
        print(f"{args.layout}: {written[0]}")
    return 0

"""``export_run``: a run folder's frames and captions as a grid, comic or book, in PDF, CBZ, HTML or PNG pages."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from storycast.errors import ExportError
from storycast.export.layouts import LAYOUTS, Page, PageGeometry, plan_pages
from storycast.export.settings import ExportSettings
from storycast.export.source import RunContent, read_run

logger = logging.getLogger(__name__)

FORMATS = ("pdf", "cbz", "html", "png")
SUFFIXES = {"pdf": (".pdf",), "cbz": (".cbz",), "html": (".html", ".htm")}
"""File name endings of the formats written as one file (png writes a folder of pages)."""
EXPORTS_DIR = "exports"
"""Where exports go inside the run folder when no output is named: ``RUN/exports/<layout>.<format>``."""


def default_output(run_dir: str | Path, format: str, layout: str) -> Path:
    """``RUN/exports/<layout>.<format>``, or the folder ``RUN/exports/<layout>-png`` for PNG pages."""
    folder = Path(run_dir) / EXPORTS_DIR
    return folder / (f"{layout}-png" if format == "png" else f"{layout}{SUFFIXES[format][0]}")


def format_of(path: str | Path) -> str | None:
    """The format a file name asks for by its ending (``book.pdf`` -> "pdf"), or None."""
    suffix = Path(path).suffix.lower()
    return next((name for name, endings in SUFFIXES.items() if suffix in endings), None)


def plan_export(content: RunContent, layout: str, settings: ExportSettings) -> list[Page]:
    """The pages ``layout`` makes of the run's frames with ``settings`` (geometry only, nothing drawn)."""
    width, height = settings.page_mm
    geometry = PageGeometry(
        width=settings.pixels(width),
        height=settings.pixels(height),
        margin=settings.pixels(settings.margin_mm),
        gutter=settings.pixels(settings.gutter_mm),
    )
    return plan_pages(
        layout,
        len(content),
        geometry,
        content.aspect,
        columns=settings.columns,
        rows=settings.rows,
        comic_style=settings.comic_style,
        title_page=settings.title_page,
    )


def export_run(
    run_dir: str | Path,
    format: str = "pdf",
    layout: str = "comic",
    out: str | Path | None = None,
    settings: ExportSettings | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export the run in ``run_dir`` as ``layout`` pages in ``format``; return the files written.

    Args:
        run_dir: A run folder (the ``--out`` of ``storycast generate``) whose frames are all drawn.
        format: "pdf" (one file), "cbz" (a comic book archive of PNG pages and ComicInfo.xml), "html" (one
            self-contained file) or "png" (a folder of ``page_001.png``...).
        layout: "grid" (storyboard sheets), "comic" (panels with captions and speech boxes) or "book" (a title
            page, then a frame and its text a page).
        out: The file (or, for png, the folder) to write; default :func:`default_output`. Its folder must exist;
            a file's name must end as its format does (``.pdf``, ``.cbz``, ``.html``).
        settings: Page size, resolution, margins, grid and comic choices (default: A4 at 150 DPI).
        overwrite: Replace an existing ``out`` (the default output, the run's own ``exports/``, is replaced
            without it: every file there is an export's).

    Raises:
        ExportError: An unknown format or layout, a folder that is not a finished run, missing frames, or an
            output that cannot be written; each message names the fix.
        SettingsError: Bad settings (raised when ``ExportSettings`` is built).
        StoryError: The run's ``story.yaml`` does not parse.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}'. Fix: use one of {', '.join(FORMATS)}.")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout '{layout}'. Fix: use one of {', '.join(LAYOUTS)}.")
    settings = settings or ExportSettings()
    content = read_run(run_dir)
    target = Path(out) if out is not None else default_output(run_dir, format, layout)
    if out is None:
        _check_exports_folder(target.parent, Path(run_dir))
    check_output(target, format, create_parent=out is None)
    if out is not None and format != "png" and os.path.lexists(target) and not overwrite:
        raise ExportError(
            f"output '{target}' already exists. Fix: pass --overwrite (overwrite=True in Python) to replace it, or "
            f"name another -o."
        )
    pages = plan_export(content, layout, settings)
    logger.info(
        "exporting %d frames of %s as %d %s page(s) -> %s", len(content), content.path, len(pages), layout, target
    )
    written = _write(target, format, layout, pages, content, settings)
    logger.debug("wrote %s", target)
    return written


def check_output(target: Path, format: str, *, create_parent: bool = False) -> None:
    """Refuse an output that cannot be written or would replace something an export did not write.

    Raises:
        ExportError: The output's folder is missing (and not ours to create), a file's name does not end as its
            format does, a file output is a folder, or a png folder is a file or holds other files.
    """
    from storycast.export.writers import PAGE_FILE

    if format == "png":
        if format_of(target) is not None or target.suffix.lower() == ".png":
            raise ExportError(
                f"'{target}' names a file, but png writes a folder of pages (page_001.png, ...). Fix: name a folder, "
                f"e.g. -o {target.with_suffix('')}-pages."
            )
    else:
        endings = SUFFIXES[format]
        if target.suffix.lower() not in endings:
            asked = format_of(target)
            why = f"asks for {asked}" if asked else f"does not end in {endings[0]}"
            raise ExportError(
                f"output '{target}' {why}, but the format is {format}. Fix: name it "
                f"'{target.with_suffix(endings[0]).name}', or pass the --format its name asks for."
            )
    parent = target.parent
    if not parent.is_dir():
        if create_parent and not parent.exists():
            parent.mkdir(parents=True)
        else:
            what = "is not a folder" if parent.exists() else "does not exist"
            raise ExportError(
                f"the folder of output '{target}' ({parent}) {what}. Fix: create it first, or choose another -o."
            )
    if format != "png" and target.is_dir():
        raise ExportError(
            f"output '{target}' is a folder. Fix: name a file, e.g. {target / ('export' + SUFFIXES[format][0])}."
        )
    if format == "png" and target.is_symlink():
        raise ExportError(
            f"output '{target}' is a symbolic link; a png export replaces the folder it names, so it does not write "
            f"through links. Fix: name the folder itself ({target.resolve()}), or a new folder."
        )
    if format == "png" and target.exists():
        if not target.is_dir():
            raise ExportError(
                f"output '{target}' is a file, but png writes a folder of pages. Fix: name a new folder."
            )
        others = sorted(p.name for p in target.iterdir() if not (p.is_file() and PAGE_FILE.match(p.name)))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ExportError(
                f"output folder '{target}' holds files that are not exported pages ({shown}); a png export replaces "
                "the whole folder. Fix: name a new folder, or an earlier png export's."
            )


def _check_exports_folder(folder: Path, run: Path) -> None:
    """The run's ``exports/`` must be a folder inside the run: a link would send default exports (which replace
    what is there) elsewhere."""
    if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(run.resolve())):
        raise ExportError(
            f"'{folder}' is a symbolic link out of the run; default exports replace files there, so they are not "
            f"written through it. Fix: name the output with -o, or replace the link with a folder."
        )


def _write(
    target: Path, format: str, layout: str, pages: list[Page], content: RunContent, settings: ExportSettings
) -> list[Path]:
    from storycast.export import writers
    from storycast.export.render import render_pages

    if format == "html":
        from storycast.export.html import write_html

        return [write_html(target, layout, pages, content, settings)]
    drawn = render_pages(pages, content, settings)
    if format == "png":
        return writers.write_png_pages(target, drawn, dpi=settings.dpi)
    subject = f"{layout} of {len(content)} frames drawn with {content.method}"
    if format == "pdf":
        return [writers.write_pdf(target, drawn, dpi=settings.dpi, title=content.title, subject=subject)]
    cover = bool(pages) and pages[0].kind == "title"
    return [
        writers.write_cbz(
            target, drawn, dpi=settings.dpi, title=content.title, notes=f"storycast: {subject}", cover=cover
        )
    ]

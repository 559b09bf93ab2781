"""Write drawn pages as a PDF, a CBZ comic archive or a folder of PNG pages; every file is written atomically."""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

from storycast.utils.io import atomic_directory, atomic_write_bytes
from storycast.version import __version__

if TYPE_CHECKING:
    from PIL import Image

PAGE_FILE = re.compile(r"^page_\d{3,}\.png$")
"""Names of the page files a PNG export writes (and the only files it replaces)."""
COMIC_INFO = "ComicInfo.xml"
PDF_QUALITY = 92
"""JPEG quality of the page images in a PDF (Pillow stores RGB pages as JPEG); text stays sharp at 92."""


def page_file(number: int) -> str:
    """The file name of page ``number`` (from 1) in a CBZ or a PNG folder; names sort in page order."""
    return f"page_{number:03d}.png"


def png_bytes(page: Image.Image, dpi: int) -> bytes:
    buffer = io.BytesIO()
    page.save(buffer, format="PNG", dpi=(dpi, dpi), optimize=False)
    return buffer.getvalue()


def write_pdf(path: str | Path, pages: Iterable[Image.Image], *, dpi: int, title: str, subject: str = "") -> Path:
    """A PDF with one page per image, each page the image's size at ``dpi``, written one page at a time (a
    1,000-page book holds one page in memory, not all of them)."""
    from storycast.export.pdf import write_pdf_stream

    return write_pdf_stream(
        path, pages, dpi=dpi, title=title, subject=subject, creator=f"storycast {__version__}", quality=PDF_QUALITY
    )


def write_cbz(
    path: str | Path, pages: Iterable[Image.Image], *, dpi: int, title: str, notes: str = "", cover: bool = False
) -> Path:
    """A comic book archive: the pages as ``page_001.png``... in order, and a ``ComicInfo.xml`` (the
    ComicRack/Kavita/Komga metadata) naming the title and each page; ``cover`` marks the first page as the cover."""
    buffer = io.BytesIO()
    sizes: list[tuple[int, int]] = []
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, page in enumerate(pages, start=1):
            # PNG is compressed already: stored, so that readers open pages without inflating them.
            archive.writestr(zipfile.ZipInfo(page_file(number), (1980, 1, 1, 0, 0, 0)), png_bytes(page, dpi))
            sizes.append(page.size)
        info = zipfile.ZipInfo(COMIC_INFO, (1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, comic_info(title, sizes, notes=notes, cover=cover))
    if not sizes:
        raise ValueError("a CBZ needs at least one page")
    return atomic_write_bytes(path, buffer.getvalue())


def comic_info(title: str, sizes: Sequence[tuple[int, int]], *, notes: str = "", cover: bool = False) -> str:
    """``ComicInfo.xml`` (schema v2.0) for pages of the given pixel sizes."""
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<ComicInfo xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
        f"  <Title>{escape(title)}</Title>",
    ]
    if notes:
        lines.append(f"  <Notes>{escape(notes)}</Notes>")
    lines += [f"  <PageCount>{len(sizes)}</PageCount>", "  <Pages>"]
    for index, (width, height) in enumerate(sizes):
        kind = "FrontCover" if cover and index == 0 else "Story"
        lines.append(
            f"    <Page Image={quoteattr(str(index))} Type={quoteattr(kind)} "
            f"ImageWidth={quoteattr(str(width))} ImageHeight={quoteattr(str(height))} />"
        )
    lines += ["  </Pages>", "</ComicInfo>", ""]
    return "\n".join(lines)


def write_png_pages(folder: str | Path, pages: Iterable[Image.Image], *, dpi: int) -> list[Path]:
    """The pages as ``folder/page_001.png``...; the folder is filled beside itself and then swapped in whole, so
    that it holds one complete export at any time."""
    folder = Path(folder)
    names = []
    with atomic_directory(folder) as staging:
        # The staging folder is made private (mkdtemp); the export gets the permissions a plain mkdir would.
        mask = os.umask(0)
        os.umask(mask)
        staging.chmod(0o777 & ~mask)
        for number, page in enumerate(pages, start=1):
            name = page_file(number)
            (staging / name).write_bytes(png_bytes(page, dpi))
            names.append(name)
    return [folder / name for name in names]

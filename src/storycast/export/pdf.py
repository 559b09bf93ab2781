"""A PDF written page by page: each page one JPEG image filling it, so a book of any length holds one page in
memory at a time (Pillow's PDF writer takes every page at once).

The file is PDF 1.4: a catalogue, a page tree written last, and per page an image XObject (``DCTDecode``: the
page's JPEG bytes as they are), a content stream that paints it over the whole page, and the page; the document
information (title, subject, creator) as UTF-16 text strings, so any title is stored exactly.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from storycast.utils.io import atomic_writer

if TYPE_CHECKING:
    from PIL import Image

CATALOG, PAGES = 1, 2
"""Object numbers fixed in advance: the catalogue points at the page tree, which is written last."""


def text_string(text: str) -> bytes:
    """A PDF text string of any Unicode text: UTF-16BE with its byte-order mark, in hexadecimal."""
    return b"<" + ("\ufeff" + text).encode("utf-16-be").hex().upper().encode("ascii") + b">"


def page_jpeg(page: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    page.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class _PdfFile:
    """Numbered objects written in order, their offsets kept for the cross-reference table."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.offsets: dict[int, int] = {}
        self.next_number = PAGES + 1
        handle.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")

    def number(self) -> int:
        number, self.next_number = self.next_number, self.next_number + 1
        return number

    def write(self, number: int, body: bytes, stream: bytes | None = None) -> None:
        self.offsets[number] = self.handle.tell()
        self.handle.write(b"%d 0 obj\n" % number + body)
        if stream is not None:
            self.handle.write(b"\nstream\n" + stream + b"\nendstream")
        self.handle.write(b"\nendobj\n")

    def close(self, info: int) -> None:
        start = self.handle.tell()
        count = max(self.offsets) + 1
        self.handle.write(b"xref\n0 %d\n0000000000 65535 f \n" % count)
        for number in range(1, count):
            self.handle.write(b"%010d 00000 n \n" % self.offsets[number])
        self.handle.write(
            b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (count, CATALOG, info, start)
        )


def write_pdf_stream(
    path: str | Path,
    pages: Iterable[Image.Image],
    *,
    dpi: int,
    title: str,
    subject: str = "",
    creator: str = "",
    quality: int = 92,
) -> Path:
    """Write ``pages`` (each the size of its page at ``dpi``) as a PDF at ``path``, atomically, one page at a time.

    Raises:
        ValueError: There are no pages.
    """
    kids: list[int] = []
    with atomic_writer(path) as handle:
        pdf = _PdfFile(handle)
        for page in pages:
            width, height = page.size
            points = (width * 72 / dpi, height * 72 / dpi)
            image, content, leaf = pdf.number(), pdf.number(), pdf.number()
            data = page_jpeg(page, quality)
            pdf.write(
                image,
                b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
                b"/Filter /DCTDecode /Length %d >>" % (width, height, len(data)),
                data,
            )
            paint = b"q %.4f 0 0 %.4f 0 0 cm /Im0 Do Q" % points
            pdf.write(content, b"<< /Length %d >>" % len(paint), paint)
            pdf.write(
                leaf,
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.4f %.4f] /Resources << /XObject << /Im0 %d 0 R >> >> "
                b"/Contents %d 0 R >>" % (PAGES, *points, image, content),
            )
            kids.append(leaf)
        if not kids:
            raise ValueError("a PDF needs at least one page")
        pdf.write(CATALOG, b"<< /Type /Catalog /Pages %d 0 R >>" % PAGES)
        pdf.write(
            PAGES, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
        )
        info = pdf.number()
        fields = {"Title": title, "Subject": subject, "Creator": creator, "Producer": creator}
        pdf.write(
            info, b"<< " + b" ".join(b"/%s %s" % (k.encode(), text_string(v)) for k, v in fields.items() if v) + b" >>"
        )
        pdf.close(info)
    return Path(path)

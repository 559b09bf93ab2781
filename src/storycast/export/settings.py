"""How exported pages are sized and set: page size, resolution, margins, grid and comic choices, type sizes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from storycast.errors import SettingsError

MM_PER_INCH = 25.4
POINTS_PER_INCH = 72.0

PAGE_SIZES_MM = {
    "a3": (297.0, 420.0),
    "a4": (210.0, 297.0),
    "a5": (148.0, 210.0),
    "letter": (215.9, 279.4),
    "legal": (215.9, 355.6),
    "square": (210.0, 210.0),
}
"""Named page sizes, portrait, in millimetres (ISO 216 and US sizes; "square" is a 21 cm photo-book page)."""

UNITS_MM = {"mm": 1.0, "cm": 10.0, "in": MM_PER_INCH}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x×]\s*(\d+(?:\.\d+)?)\s*(mm|cm|in)\s*$", re.IGNORECASE)

COMIC_STYLES = ("classic", "four-panel")
MIN_SIDE_MM, MAX_SIDE_MM = 50.0, 1000.0
MIN_DPI, MAX_DPI = 36, 1200
MAX_PAGE_PIXELS = 64_000_000
"""Largest page image drawn (A4 at 600 DPI is 35 million pixels), below PIL's decompression-bomb limit."""


def parse_page_size(text: str) -> tuple[float, float]:
    """Width and height in millimetres of a page named ``text``: A3, A4, A5, Letter, Legal, square, or
    ``WxH`` with a unit (``6x9in``, ``148x210mm``, ``20x20cm``).

    Raises:
        SettingsError: Neither a known name nor a size with a unit, or a side outside 50 mm .. 1 m.
    """
    named = PAGE_SIZES_MM.get(text.strip().lower())
    if named is not None:
        return named
    match = _SIZE.match(text)
    if match is None:
        names = ", ".join(name if name == "square" else name.upper() for name in PAGE_SIZES_MM)
        raise SettingsError(
            f"page size '{text}' is neither a known name nor WIDTHxHEIGHT with a unit. Fix: use one of {names} "
            "(Letter and Legal too), or a size such as 6x9in, 148x210mm or 20x20cm."
        )
    scale = UNITS_MM[match[3].lower()]
    width, height = float(match[1]) * scale, float(match[2]) * scale
    for side in (width, height):
        if not MIN_SIDE_MM <= side <= MAX_SIDE_MM:
            raise SettingsError(
                f"page size '{text}' has a side of {side:g} mm. Fix: give sides between {MIN_SIDE_MM:g} mm and "
                f"{MAX_SIDE_MM:g} mm."
            )
    return width, height


@dataclass(frozen=True)
class ExportSettings:
    """Page size, resolution and typesetting of an export. Checked when built.

    Attributes:
        page: Page size: A3, A4 (default), A5, Letter, Legal, square (21 cm), or ``WxH`` with a unit (``6x9in``).
        landscape: Turn the page sideways (width and height swapped).
        dpi: Pixels per inch of the page images (PDF, CBZ, PNG): 150 (default) for screens, 300 for print.
            HTML pages scale with the window and ignore it.
        margin_mm: Blank border around each page's content, in millimetres.
        gutter_mm: Space between panels (and between a book page's picture and its text), in millimetres.
        columns: Grid layout: frames per row (default 3, or fewer for a shorter story).
        rows: Grid layout: rows per page (default: as many as fit the page).
        comic_style: Comic layout: "classic" (StoryDiffusion's "Classic Comic Style": rows mixing panels of the
            row's height with pairs of half-height panels stacked in one slot) or "four-panel" (its
            "Four Pannel": four equal panels a page, two by two).
        text_pt: Size of captions, speech and book text, in points (1/72 inch).
        title_pt: Size of the book's title, in points.
        title_page: Book layout: start with a title page.
    """

    page: str = "A4"
    landscape: bool = False
    dpi: int = 150
    margin_mm: float = 12.0
    gutter_mm: float = 4.0
    columns: int | None = None
    rows: int | None = None
    comic_style: str = "classic"
    text_pt: float = 10.0
    title_pt: float = 30.0
    title_page: bool = True

    def __post_init__(self) -> None:
        width, height = self.page_mm
        if isinstance(self.dpi, bool) or not isinstance(self.dpi, int) or not MIN_DPI <= self.dpi <= MAX_DPI:
            raise SettingsError(
                f"dpi {self.dpi!r} is out of range. Fix: give a whole number from {MIN_DPI} to {MAX_DPI}."
            )
        pixels = self.pixels(width) * self.pixels(height)
        if pixels > MAX_PAGE_PIXELS:
            most = math.floor(math.sqrt(MAX_PAGE_PIXELS / (width * height)) * MM_PER_INCH)
            raise SettingsError(
                f"a {self.page} page at {self.dpi} DPI is {pixels:,} pixels, more than {MAX_PAGE_PIXELS:,}. "
                f"Fix: use at most {most} DPI for this page size."
            )
        _check_range(
            "margin_mm", self.margin_mm, 0.0, min(width, height) / 4, "millimetres, at most a quarter of the page"
        )
        _check_range("gutter_mm", self.gutter_mm, 0.0, 20.0, "millimetres")
        _check_range("text_pt", self.text_pt, 4.0, 48.0, "points")
        _check_range("title_pt", self.title_pt, 8.0, 144.0, "points")
        for name in ("columns", "rows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12):
                raise SettingsError(f"{name} {value!r} is out of range. Fix: give a whole number from 1 to 12.")
        if self.comic_style not in COMIC_STYLES:
            raise SettingsError(
                f"comic style '{self.comic_style}' is not known. Fix: use one of {', '.join(COMIC_STYLES)}."
            )

    @property
    def page_mm(self) -> tuple[float, float]:
        """Width and height of the page in millimetres, turned when ``landscape``."""
        width, height = parse_page_size(self.page)
        short, long = sorted((width, height))
        return (long, short) if self.landscape else (width, height)

    def pixels(self, millimetres: float) -> int:
        """A length in millimetres as whole pixels at this resolution."""
        return round(millimetres / MM_PER_INCH * self.dpi)

    def points(self, points: float) -> int:
        """A length in points as whole pixels at this resolution (at least one)."""
        return max(1, round(points / POINTS_PER_INCH * self.dpi))


def _check_range(name: str, value: float, low: float, high: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SettingsError(f"{name} {value!r} is out of range. Fix: give {low:g} to {high:g} ({unit}).")

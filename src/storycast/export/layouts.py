"""Page geometry of the export layouts: where every frame goes, in page pixels. Pure functions, no drawing.

* grid: pages of storyboard sheets (:func:`storycast.runs.storyboard.render_storyboard`), ``columns x rows``
  frames a page.
* comic, classic: StoryDiffusion's "Classic Comic Style" (HVision-NKU/StoryDiffusion ``utils/utils.py``) on
  pages. Frames go into rows; each row is a sequence of slots, and a slot holds one panel the row's height or
  two half-height panels stacked, so a row mixes big panels and small ones. StoryDiffusion makes one long image
  of rows of 4 frames (slots ``[1, 1, 2]``) for stories of up to 8 frames, else of 4 and 6 (``[1, 1, 2, 2]``)
  in turn, each row's slots in a random order, the last row padded with blank images. Here a row's width is
  the page's and its height follows from the frames' aspect ratio; a page's rows are stretched (by at most
  :data:`MAX_STRETCH`) or squeezed (by at most :data:`MAX_SQUEEZE`) to fill its height, pictures cropped to
  their panels. Rows may also hold 1, 2, 3 or 5 frames (:data:`ROW_SLOTS`), and :func:`page_rows` chooses the
  rows of every page together: the fewest pages, then the least stretch and blank space, then rows of 4 and 6
  (:func:`page_cost`), so a short story fills its page and no row is padded with blanks. The slot orders cycle
  through their permutations row by row, so the same run always gives the same pages.
* comic, four-panel: StoryDiffusion's "Four Pannel": four panels of the frames' shape a page, two by two.
* book: a title page, then one frame a page, its picture above its text.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LAYOUTS = ("grid", "comic", "book")

ROW_SLOTS = {1: (1,), 2: (1, 1), 3: (1, 2), 4: (1, 1, 2), 5: (1, 2, 2), 6: (1, 1, 2, 2)}
"""Frames in a classic comic row -> its slots (1: a panel the row's height; 2: two stacked half-height panels).
4 and 6 are StoryDiffusion's; the others fill pages that rows of 4 and 6 would not."""
ROW_COST = {1: 0.6, 2: 0.3, 3: 0.1, 4: 0.0, 5: 0.1, 6: 0.0}
"""What a row of so many frames adds to its page's cost: StoryDiffusion's rows of 4 and 6 cost nothing, rows of
equal panels (1, 2) the most."""
PAGE_COST = 10.0
"""The cost of a page, above any page's cost of stretching or blank space: the fewest pages win."""
MAX_ROWS = 8
"""Most rows on a classic comic page."""
MAX_STRETCH = 1.3
"""Rows may grow taller by this factor to fill a page (pictures are cropped at the sides to fit)."""
MAX_SQUEEZE = 0.9
"""Rows may shrink to this share of their height so that one more row fits on a page."""
BOOK_PICTURE_SHARE = 0.72
"""Share of a book page's content height that its picture may take; the text gets the rest."""
GRID_CAPTION_SHARE = 0.35
"""Height of a storyboard cell's caption (and the gap) as a share of the cell's width, for fitting rows."""
DEFAULT_COLUMNS = 3


@dataclass(frozen=True)
class Box:
    """A rectangle in page pixels: ``left <= x < right``, ``top <= y < bottom``."""

    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def span(cls, x: float, y: float, width: float, height: float) -> Box:
        """The box from ``(x, y)`` of the given size, edges rounded (neighbours share their rounded edges)."""
        return cls(round(x), round(y), round(x + width), round(y + height))

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def area(self) -> int:
        return self.width * self.height

    def overlaps(self, other: Box) -> bool:
        return (
            self.left < other.right and other.left < self.right and self.top < other.bottom and other.top < self.bottom
        )

    def contains(self, other: Box) -> bool:
        return (
            self.left <= other.left
            and self.top <= other.top
            and other.right <= self.right
            and other.bottom <= self.bottom
        )


@dataclass(frozen=True)
class Panel:
    """One frame on a page.

    Attributes:
        frame: Index of the frame in the story.
        box: Where its picture goes (cropped to fill it).
        text: Where its text is set (book pages); ``None``: captions and speech go over the picture (comics).
    """

    frame: int
    box: Box
    text: Box | None = None


@dataclass(frozen=True)
class Page:
    """One page of an export.

    Attributes:
        kind: "title" (the book's title page), "panels" (frames in their own boxes) or "sheet" (a storyboard
            sheet of ``sheet`` frames, fitted into ``area``).
        width: Page width in pixels.
        height: Page height in pixels.
        area: The page inside its margins.
        panels: The frames of a "panels" page, in reading order.
        sheet: The frames of a "sheet" page, in reading order.
        columns: Frames a row of a "sheet" page.
    """

    kind: str
    width: int
    height: int
    area: Box
    panels: tuple[Panel, ...] = ()
    sheet: tuple[int, ...] = ()
    columns: int = 0

    @property
    def frames(self) -> tuple[int, ...]:
        """The frames on this page, in reading order."""
        return self.sheet if self.kind == "sheet" else tuple(panel.frame for panel in self.panels)


@dataclass(frozen=True)
class PageGeometry:
    """A page in pixels: its size, the margin around its content and the gutter between panels."""

    width: int
    height: int
    margin: int
    gutter: int

    @property
    def area(self) -> Box:
        return Box(self.margin, self.margin, self.width - self.margin, self.height - self.margin)

    def page(self, kind: str, panels: Sequence[Panel] = (), sheet: Sequence[int] = (), columns: int = 0) -> Page:
        return Page(kind, self.width, self.height, self.area, tuple(panels), tuple(sheet), columns)


def grid_pages(
    count: int, geometry: PageGeometry, aspect: float, columns: int | None = None, rows: int | None = None
) -> list[Page]:
    """Storyboard sheets of ``columns x rows`` frames a page.

    Args:
        count: Frames in the story.
        geometry: The page.
        aspect: The frames' width / height.
        columns: Frames a row (default :data:`DEFAULT_COLUMNS`, fewer for a shorter story).
        rows: Rows a page (default: as many storyboard cells, picture and caption, as fit the page's height).
    """
    _check(count, aspect)
    columns = columns or min(DEFAULT_COLUMNS, count)
    if rows is None:
        area = geometry.area
        cell_width = area.width / columns
        cell_height = cell_width / aspect + cell_width * GRID_CAPTION_SHARE
        rows = max(1, math.floor(area.height / cell_height))
    rows = min(rows, math.ceil(count / columns))
    per_page = columns * rows
    return [
        geometry.page("sheet", sheet=range(start, min(count, start + per_page)), columns=columns)
        for start in range(0, count, per_page)
    ]


def row_slots(frames: int, row: int) -> tuple[int, ...]:
    """The slots of the ``row``-th classic row holding ``frames`` frames: its pattern's permutations in turn."""
    orders = sorted(set(itertools.permutations(ROW_SLOTS[frames])))
    return orders[row % len(orders)]


def natural_row_height(slots: Sequence[int], width: float, gutter: float, aspect: float) -> float:
    """Height at which a row of ``slots`` fills ``width`` with uncropped pictures.

    A single slot is ``h * aspect`` wide, a stacked one ``(h - gutter) / 2 * aspect``; with ``gutter`` between
    slots: ``width - (s - 1) g = aspect (n1 h + n2 (h - g) / 2)``, solved for ``h``.
    """
    singles = sum(1 for slot in slots if slot == 1)
    stacked = len(slots) - singles
    return ((width - (len(slots) - 1) * gutter) / aspect + stacked * gutter / 2) / (singles + stacked / 2)


def classic_pages(count: int, geometry: PageGeometry, aspect: float) -> list[Page]:
    """StoryDiffusion's classic comic rows, set on pages (see the module's docstring)."""
    _check(count, aspect)
    area, gutter = geometry.area, geometry.gutter
    heights = {size: natural_row_height(ROW_SLOTS[size], area.width, gutter, aspect) for size in ROW_SLOTS}
    pages = []
    row = first = 0
    for sizes in page_rows(count, heights, gutter, area.height):
        rows = []
        for size in sizes:
            slots = row_slots(size, row)
            rows.append((slots, heights[size], first))
            row, first = row + 1, first + size
        pages.append(geometry.page("panels", _classic_panels(rows, area, gutter, aspect)))
    return pages


def page_rows(count: int, heights: Mapping[int, float], gutter: float, room: float) -> list[tuple[int, ...]]:
    """The frames of each row of each page (top down) that lay ``count`` frames out at the least
    :func:`page_cost`: rows of ``heights[size]`` pixels (a row of ``size`` frames) on pages ``room`` high.

    Every page's rows are one of the multisets of row sizes that fit a page (squeezed by at most
    :data:`MAX_SQUEEZE`; a single row always fits), and a dynamic program over the frames picks the pages.
    """
    patterns = []
    for rows in range(1, MAX_ROWS + 1):
        for sizes in itertools.combinations_with_replacement(sorted(heights), rows):
            natural = sum(heights[size] for size in sizes)
            if rows > 1 and (natural + gutter * (rows - 1)) * MAX_SQUEEZE > room:
                continue
            patterns.append((sum(sizes), page_cost(sizes, natural, room - gutter * (rows - 1)), _row_order(sizes)))
    best = [math.inf] * (count + 1)
    best[0] = 0.0
    step: list[tuple[int, float, tuple[int, ...]] | None] = [None] * (count + 1)
    for start in range(count):
        if best[start] == math.inf:
            continue
        for frames, cost, sizes in patterns:
            end = start + frames
            if end <= count and best[start] + cost < best[end]:
                best[end], step[end] = best[start] + cost, (start, cost, sizes)
    pages = []
    end = count
    while end > 0:
        start, cost, sizes = step[end]  # type: ignore[misc]
        pages.append((cost, sizes))
        end = start
    # Any order of these pages costs the same: the fullest first, so that blank space ends the story.
    return [sizes for _, sizes in sorted(pages, key=lambda page: page[0])]


def page_cost(sizes: Sequence[int], natural: float, free: float) -> float:
    """The cost of a page of rows of ``sizes`` frames, ``natural`` pixels high in all, on ``free`` pixels (the
    page's height less its gutters): :data:`PAGE_COST`, the rows' :data:`ROW_COST`, and the stretch or squeeze
    the rows need to fill the page, or the share of it they leave blank when even :data:`MAX_STRETCH` cannot."""
    scale = free / natural
    cost = PAGE_COST + sum(ROW_COST[size] for size in sizes)
    if scale < 1:
        return cost + 3 * (1 / scale - 1)
    if scale <= MAX_STRETCH:
        return cost + (scale - 1)
    return cost + (MAX_STRETCH - 1) + 4 * (1 - natural * MAX_STRETCH / free)


def _row_order(sizes: Sequence[int]) -> tuple[int, ...]:
    """Rows of a page top down: the fullest first, then the emptiest, the next fullest... (6, 4, 6, 4)."""
    ordered = sorted(sizes, reverse=True)
    return tuple(ordered[i // 2] if i % 2 == 0 else ordered[-1 - i // 2] for i in range(len(ordered)))


def _classic_panels(
    rows: Sequence[tuple[tuple[int, ...], float, int]], area: Box, gutter: int, aspect: float
) -> list[Panel]:
    free = area.height - gutter * (len(rows) - 1)
    scale = min(MAX_STRETCH, free / sum(height for _, height, _ in rows))
    panels: list[Panel] = []
    y = float(area.top)
    for slots, natural, frame in rows:
        height = natural * scale
        x = float(area.left)
        for slot in slots:
            if slot == 1:
                width = natural * aspect
                panels.append(Panel(frame, Box.span(x, y, width, height)))
            else:
                width = (natural - gutter) / 2 * aspect
                half = (height - gutter) / 2
                panels.append(Panel(frame, Box.span(x, y, width, half)))
                panels.append(Panel(frame + 1, Box.span(x, y + half + gutter, width, half)))
            frame += slot
            x += width + gutter
        y += height + gutter
    return panels


def four_panel_pages(count: int, geometry: PageGeometry, aspect: float) -> list[Page]:
    """Four panels of the frames' shape a page, two by two, centred on the page."""
    _check(count, aspect)
    area, gutter = geometry.area, geometry.gutter
    width = (area.width - gutter) / 2
    height = width / aspect
    if 2 * height + gutter > area.height:
        height = (area.height - gutter) / 2
        width = height * aspect
    left = area.left + (area.width - 2 * width - gutter) / 2
    top = area.top + (area.height - 2 * height - gutter) / 2
    pages = []
    for start in range(0, count, 4):
        panels = []
        for slot, frame in enumerate(range(start, min(count, start + 4))):
            row, column = divmod(slot, 2)
            panels.append(
                Panel(frame, Box.span(left + column * (width + gutter), top + row * (height + gutter), width, height))
            )
        pages.append(geometry.page("panels", panels))
    return pages


def book_pages(count: int, geometry: PageGeometry, aspect: float, title_page: bool = True) -> list[Page]:
    """A title page (unless ``title_page`` is false), then one frame a page: the picture at the top, as wide as
    the content (or as tall as :data:`BOOK_PICTURE_SHARE` of it allows), its text below."""
    _check(count, aspect)
    area, gutter = geometry.area, geometry.gutter
    width = area.width
    height = width / aspect
    if height > area.height * BOOK_PICTURE_SHARE:
        height = area.height * BOOK_PICTURE_SHARE
        width = height * aspect
    picture = Box.span(area.left + (area.width - width) / 2, area.top, width, height)
    text = Box(area.left, picture.bottom + 2 * gutter, area.right, area.bottom)
    pages = [geometry.page("title")] if title_page else []
    pages.extend(geometry.page("panels", [Panel(frame, picture, text)]) for frame in range(count))
    return pages


def plan_pages(
    layout: str,
    count: int,
    geometry: PageGeometry,
    aspect: float,
    *,
    columns: int | None = None,
    rows: int | None = None,
    comic_style: str = "classic",
    title_page: bool = True,
) -> list[Page]:
    """The pages of ``layout`` ("grid", "comic" or "book") for ``count`` frames of ``aspect`` (width / height)."""
    if layout == "grid":
        return grid_pages(count, geometry, aspect, columns, rows)
    if layout == "comic":
        return (
            four_panel_pages(count, geometry, aspect)
            if comic_style == "four-panel"
            else classic_pages(count, geometry, aspect)
        )
    if layout == "book":
        return book_pages(count, geometry, aspect, title_page)
    raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")


def _check(count: int, aspect: float) -> None:
    if count < 1:
        raise ValueError("a layout needs at least one frame")
    if not aspect > 0 or math.isinf(aspect):
        raise ValueError(f"frame aspect ratio must be positive, got {aspect}")

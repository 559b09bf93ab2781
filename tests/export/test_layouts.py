"""Page geometry: every frame once and in order, panels inside the margins and apart, the page counts each layout
promises, and the classic comic's mixed panel sizes."""

from __future__ import annotations

import itertools
import math

import pytest

from storycast.export.layouts import (
    MAX_SQUEEZE,
    MAX_STRETCH,
    ROW_SLOTS,
    Box,
    PageGeometry,
    book_pages,
    classic_pages,
    four_panel_pages,
    grid_pages,
    natural_row_height,
    plan_pages,
)

A4 = PageGeometry(width=1240, height=1754, margin=71, gutter=24)  # A4 at 150 DPI, 12 mm margins, 4 mm gutters
A4_LANDSCAPE = PageGeometry(width=1754, height=1240, margin=71, gutter=24)
SQUARE = PageGeometry(width=600, height=600, margin=20, gutter=8)
PAGES = [A4, A4_LANDSCAPE, SQUARE]
ASPECTS = [1.0, 1.5, 2 / 3, 16 / 9]


def check_pages(pages, count):
    """Every frame once, in reading order; panels inside the margins, none overlapping another."""
    assert [frame for page in pages for frame in page.frames] == list(range(count))
    for page in pages:
        for panel in page.panels:
            assert page.area.contains(panel.box), (panel, page.area)
            assert panel.box.width > 0 and panel.box.height > 0
        for a, b in itertools.combinations(page.panels, 2):
            assert not a.box.overlaps(b.box), (a, b)


@pytest.mark.parametrize("geometry", PAGES, ids=["a4", "a4-landscape", "square"])
@pytest.mark.parametrize("aspect", ASPECTS, ids=["1:1", "3:2", "2:3", "16:9"])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 9, 13, 24, 41])
def test_every_layout_places_every_frame_once_in_order_inside_the_margins(geometry, aspect, count):
    for layout, style in [("grid", "classic"), ("comic", "classic"), ("comic", "four-panel"), ("book", "classic")]:
        pages = plan_pages(layout, count, geometry, aspect, comic_style=style)
        check_pages(pages, count)


@pytest.mark.parametrize("count", [1, 3, 4, 5, 8, 9])
def test_book_is_a_title_page_then_one_frame_a_page_with_text_below_its_picture(count):
    pages = book_pages(count, A4, 1.0)
    assert len(pages) == count + 1
    assert pages[0].kind == "title" and pages[0].frames == ()
    for index, page in enumerate(pages[1:]):
        (panel,) = page.panels
        assert panel.frame == index
        assert panel.text is not None and panel.text.top >= panel.box.bottom and page.area.contains(panel.text)
    assert len(book_pages(count, A4, 1.0, title_page=False)) == count


@pytest.mark.parametrize("count", [1, 4, 5, 8, 11])
def test_four_panel_puts_four_equal_panels_of_the_frames_shape_on_a_page(count):
    pages = four_panel_pages(count, A4, 1.5)
    assert len(pages) == math.ceil(count / 4)
    assert [len(page.panels) for page in pages[:-1]] == [4] * (len(pages) - 1)
    sizes = {panel.box.size for page in pages for panel in page.panels}
    assert all(abs(w / h - 1.5) < 0.01 for w, h in sizes)
    assert max(w for w, _ in sizes) - min(w for w, _ in sizes) <= 1
    first = pages[0].panels
    if len(first) == 4:  # two by two, read across then down
        assert first[0].box.top == first[1].box.top < first[2].box.top == first[3].box.top
        assert first[0].box.left == first[2].box.left < first[1].box.left == first[3].box.left


@pytest.mark.parametrize(("columns", "rows", "count"), [(2, 2, 7), (3, 1, 7), (1, 5, 3), (4, 3, 12)])
def test_grid_pages_hold_columns_times_rows_frames(columns, rows, count):
    pages = grid_pages(count, A4, 1.0, columns=columns, rows=rows)
    assert len(pages) == math.ceil(count / (columns * min(rows, math.ceil(count / columns))))
    assert all(page.kind == "sheet" and page.columns == columns for page in pages)
    assert [len(page.frames) for page in pages[:-1]] == [columns * rows] * (len(pages) - 1)


def test_grid_rows_default_to_what_fits_the_page():
    portrait = grid_pages(40, A4, 1.0, columns=3)
    landscape = grid_pages(40, A4_LANDSCAPE, 1.0, columns=3)
    # A portrait page is taller than it is wide, so it holds more rows of the same columns than a landscape one.
    assert len(portrait[0].frames) > len(landscape[0].frames) >= 3
    assert grid_pages(2, A4, 1.0)[0].columns == 2  # a story shorter than a row gets a shorter row


def test_a_classic_row_at_its_natural_height_fills_the_page_width_with_uncropped_pictures():
    width, gutter, aspect = 1098.0, 24.0, 1.5
    for slots in ROW_SLOTS.values():
        height = natural_row_height(slots, width, gutter, aspect)
        widths = [height * aspect if slot == 1 else (height - gutter) / 2 * aspect for slot in slots]
        assert sum(widths) + gutter * (len(slots) - 1) == pytest.approx(width)


@pytest.mark.parametrize("geometry", PAGES, ids=["a4", "a4-landscape", "square"])
@pytest.mark.parametrize("count", [5, 6, 7, 9, 12, 16, 25, 40])
def test_classic_comic_pages_mix_big_panels_and_stacked_pairs(geometry, count):
    pages = classic_pages(count, geometry, 1.0)
    check_pages(pages, count)
    for page in pages:
        areas = [panel.box.area for panel in page.panels]
        if len(areas) > 4:
            assert max(areas) > 1.8 * min(areas), [panel.box for panel in page.panels]
        # Rows fill the width: the rightmost panels end at the right margin.
        assert max(panel.box.right for panel in page.panels) >= page.area.right - 1


@pytest.mark.parametrize("geometry", PAGES, ids=["a4", "a4-landscape", "square"])
@pytest.mark.parametrize("aspect", ASPECTS, ids=["1:1", "3:2", "2:3", "16:9"])
def test_classic_comic_pages_are_filled_top_to_bottom_and_blank_space_ends_the_story(geometry, aspect):
    for count in range(1, 41):
        pages = classic_pages(count, geometry, aspect)
        for number, page in enumerate(pages[:-1]):
            assert min(panel.box.top for panel in page.panels) == page.area.top
            filled = (max(panel.box.bottom for panel in page.panels) - page.area.top) / page.area.height
            assert filled >= 0.9, (count, number, filled)


def test_a_short_story_fills_its_a4_comic_page():
    # StoryDiffusion pads the last row with blank images; here rows of 1 to 6 frames fill the page instead.
    for count in range(3, 41):
        last = classic_pages(count, A4, 1.0)[-1]
        filled = (max(panel.box.bottom for panel in last.panels) - last.area.top) / last.area.height
        assert filled >= 0.85, (count, filled)


def test_classic_pictures_are_stretched_or_squeezed_within_the_limits():
    for count in range(1, 30):
        for page in classic_pages(count, A4, 1.0):
            for panel in page.panels:
                # The natural panel has the frame's shape (1:1); the page stretches or squeezes its height only.
                ratio = panel.box.height / panel.box.width
                stacked_gutter = A4.gutter / panel.box.width  # a stacked pair gives up one gutter of height
                if len(page.panels) > 1:
                    assert MAX_SQUEEZE * (1 - stacked_gutter) - 0.02 <= ratio <= MAX_STRETCH + 0.02, (count, panel)


def test_a_seven_frame_story_fits_one_a4_comic_page():
    # At 150 DPI with square frames, 1098 x 1612 px inside the margins and 24 px gutters, a row of 4 ([1, 1, 2]) is
    # (1098 - 2 * 24 + 24 / 2) / 2.5 = 424.8 px high and a row of 3 ([1, 2]) (1098 - 24 + 12) / 1.5 = 724 px: with a
    # gutter, 1173 px of the 1612 (stretched by 1.3: 1525 px, 95 % of the page).
    assert natural_row_height(ROW_SLOTS[4], 1098, 24, 1.0) == pytest.approx(424.8)
    assert natural_row_height(ROW_SLOTS[3], 1098, 24, 1.0) == pytest.approx(724.0)
    (page,) = classic_pages(7, A4, 1.0)
    assert len(page.panels) == 7


def test_box_rounding_keeps_neighbours_apart():
    left = Box.span(10.4, 0, 100.3, 10)
    right = Box.span(10.4 + 100.3 + 4, 0, 100.3, 10)
    assert left.right <= right.left and not left.overlaps(right)


def test_layouts_refuse_what_they_cannot_lay_out():
    with pytest.raises(ValueError, match="unknown layout 'strip'"):
        plan_pages("strip", 3, A4, 1.0)
    with pytest.raises(ValueError, match="at least one frame"):
        classic_pages(0, A4, 1.0)
    with pytest.raises(ValueError, match="aspect"):
        book_pages(2, A4, 0.0)

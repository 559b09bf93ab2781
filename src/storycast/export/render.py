"""Draw the pages of a layout with Pillow: pictures cropped to their panels, comic lettering, book text, sheets."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storycast.export.layouts import Box, Page, Panel
from storycast.export.settings import ExportSettings
from storycast.export.source import RunContent, damaged_frame
from storycast.export.typeset import TextBlock, fit_text, split_caption

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

PAPER = (255, 255, 255)
INK = (20, 20, 20)
NARRATION_FILL = (255, 250, 222, 235)
"""Narration boxes: pale yellow, nearly opaque over the picture (StoryDiffusion's are half-transparent white)."""
SPEECH_FILL = (255, 255, 255)
NARRATION_SHARE = 0.4
"""Most of a panel's height that its narration box may take."""
SPEECH_SHARE = 0.5
"""Speech boxes stay in this top share of a panel."""
SPEECH_WIDTH_SHARE = 0.64
"""Widest a speech box may be, as a share of its panel's width."""
BOOK_TEXT_SCALE = 1.25
"""Book text is set this much larger than comic lettering (``text_pt``)."""


@dataclass(frozen=True)
class Pen:
    """Pixel sizes of one export's lines and lettering, from its settings."""

    text: int
    title: int
    border: int
    stroke: int
    pad: int
    tail: int

    @classmethod
    def of(cls, settings: ExportSettings) -> Pen:
        return cls(
            text=settings.points(settings.text_pt),
            title=settings.points(settings.title_pt),
            border=settings.points(1.5),
            stroke=settings.points(0.75),
            pad=settings.points(3.0),
            tail=settings.points(7.0),
        )


def render_pages(pages: Sequence[Page], content: RunContent, settings: ExportSettings) -> Iterator[Image.Image]:
    """Each page of ``pages`` drawn as an RGB image, one at a time (frames are read as their page needs them)."""
    pen = Pen.of(settings)
    for number, page in enumerate(pages):
        yield render_page(page, content, pen, first=number == 0)


def render_page(page: Page, content: RunContent, pen: Pen, *, first: bool = True) -> Image.Image:
    """One page: a title page, a page of comic or book panels, or a storyboard sheet fitted into the margins
    (the ``first`` sheet under the story's title)."""
    from PIL import Image

    if page.kind == "sheet":
        return _sheet_page(page, content, with_title=first)
    canvas = Image.new("RGB", (page.width, page.height), PAPER)
    if page.kind == "title":
        _title_page(canvas, page, content, pen)
        return canvas
    for panel in page.panels:
        picture = load_frame(content, panel.frame)
        if panel.text is None:
            _comic_panel(canvas, panel, picture, content.captions[panel.frame], pen)
        else:
            _book_panel(canvas, page, panel, picture, content.captions[panel.frame], pen)
    return canvas


def load_frame(content: RunContent, index: int) -> Image.Image:
    """Frame ``index`` of the run as RGB."""
    from PIL import Image

    path = content.frames[index]
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises many types on damaged files
        raise damaged_frame(path, err, content.redraw) from err


def _paste_cropped(canvas: Image.Image, picture: Image.Image, box: Box) -> None:
    from PIL import Image, ImageOps

    canvas.paste(ImageOps.fit(picture, box.size, Image.Resampling.LANCZOS), (box.left, box.top))


def _comic_panel(canvas: Image.Image, panel: Panel, picture: Image.Image, caption: str, pen: Pen) -> None:
    """The picture cropped to the panel, a narration box along its bottom, speech boxes at its top, a frame."""
    from PIL import ImageDraw

    box = panel.box
    _paste_cropped(canvas, picture, box)
    draw = ImageDraw.Draw(canvas, "RGBA")
    lettering = split_caption(caption)
    inset = pen.border + pen.pad
    floor = box.bottom - inset
    if lettering.narration:
        width = box.width - 2 * inset
        block = fit_text(
            lettering.narration,
            "comic",
            pen.text,
            width - 2 * pen.pad,
            round(box.height * NARRATION_SHARE) - 2 * pen.pad,
        )
        _note_cut(block, panel.frame, "caption")
        top = floor - block.height - 2 * pen.pad
        draw.rectangle(
            (box.left + inset, top, box.right - inset - 1, floor - 1),
            fill=NARRATION_FILL,
            outline=INK,
            width=pen.stroke,
        )
        _draw_block(draw, block, box.left + inset + pen.pad, top + pen.pad, width - 2 * pen.pad, center=False)
        floor = top - pen.pad
    _speech(draw, panel, lettering.speech, min(floor, box.top + round(box.height * SPEECH_SHARE)), pen)
    draw.rectangle((box.left, box.top, box.right - 1, box.bottom - 1), outline=INK, width=pen.border)


def _speech(draw: ImageDraw.ImageDraw, panel: Panel, speech: Sequence[str], floor: int, pen: Pen) -> None:
    """Speech boxes down the panel's top-left and top-right corners in turn, each with a tail towards the middle."""
    box = panel.box
    inset = pen.border + pen.pad
    widest = round(box.width * SPEECH_WIDTH_SHARE) - 2 * pen.pad
    tops = [box.top + inset, box.top + inset]
    for number, text in enumerate(speech):
        side = number % 2
        room = floor - tops[side] - pen.tail - 2 * pen.pad
        block = fit_text(text, "comic", pen.text, widest, room) if room > 0 else None
        if block is None or block.height > room:
            logger.warning("frame %d: speech %r does not fit on its panel and is left out", panel.frame, text)
            continue
        _note_cut(block, panel.frame, "speech")
        width, height = block.width + 2 * pen.pad, block.height + 2 * pen.pad
        left = box.left + inset if side == 0 else box.right - inset - width
        top = tops[side]
        bottom = top + height
        middle = left + width // 2
        toward = pen.tail if side == 0 else -pen.tail
        tail = [
            (middle - pen.tail // 2, bottom - pen.stroke),
            (middle + pen.tail // 2, bottom - pen.stroke),
            (middle + toward, bottom + pen.tail),
        ]
        radius = min(2 * pen.pad, height // 2)
        draw.polygon(tail, fill=SPEECH_FILL, outline=INK, width=pen.stroke)
        draw.rounded_rectangle(
            (left, top, left + width - 1, bottom - 1), radius, fill=SPEECH_FILL, outline=INK, width=pen.stroke
        )
        # Open the box's outline where the tail leaves it.
        seam = bottom - 1 - pen.stroke // 2
        draw.line(
            [(middle - pen.tail // 2 + pen.stroke, seam), (middle + pen.tail // 2 - pen.stroke, seam)],
            fill=SPEECH_FILL,
            width=pen.stroke + 1,
        )
        _draw_block(draw, block, left + pen.pad, top + pen.pad, block.width, center=True)
        tops[side] = bottom + pen.tail + pen.pad


def _book_panel(canvas: Image.Image, page: Page, panel: Panel, picture: Image.Image, caption: str, pen: Pen) -> None:
    """The picture, its text centred below it, the frame's number in the bottom margin."""
    from PIL import ImageDraw

    from storycast.export.typeset import font

    _paste_cropped(canvas, picture, panel.box)
    draw = ImageDraw.Draw(canvas)
    text = panel.text
    assert text is not None
    size = round(pen.text * BOOK_TEXT_SCALE)
    block = fit_text(caption, "serif", size, text.width, text.height)
    _note_cut(block, panel.frame, "text")
    _draw_block(draw, block, text.left, text.top, text.width, center=True)
    folio = str(panel.frame + 1)
    typeface = font("serif", pen.text)
    margin = page.height - page.area.bottom
    draw.text((page.width // 2, page.height - margin // 2), folio, font=typeface, fill=INK, anchor="mm")


def _title_page(canvas: Image.Image, page: Page, content: RunContent, pen: Pen) -> None:
    from PIL import ImageDraw

    area = page.area
    draw = ImageDraw.Draw(canvas)
    width = round(area.width * 0.8)
    title = fit_text(content.title, "serif-bold", pen.title, width, round(area.height * 0.4))
    top = area.top + round(area.height * 0.38) - title.height // 2
    _draw_block(draw, title, area.left + (area.width - width) // 2, top, width, center=True)
    rule = top + title.height + pen.text
    draw.line([(page.width // 2 - width // 6, rule), (page.width // 2 + width // 6, rule)], fill=INK, width=pen.stroke)
    credit = fit_text(f"Illustrated with storycast · {content.method}", "serif", pen.text, width, pen.text * 4)
    _draw_block(draw, credit, area.left + (area.width - width) // 2, rule + pen.text, width, center=True)


def _sheet_page(page: Page, content: RunContent, *, with_title: bool) -> Image.Image:
    """A storyboard sheet of the page's frames (numbered as in the story), fitted into the margins."""
    from PIL import Image, ImageOps

    from storycast.runs.storyboard import BACKGROUND, render_storyboard

    area = page.area
    columns = page.columns or len(page.sheet)
    # The sheet's margins and gaps are its font size, cell_width // 22 (render_storyboard): fill the area's width.
    cell_width = max(16, round(area.width / (columns + (columns + 1) / 22)))
    sheet = render_storyboard(
        [load_frame(content, i) for i in page.sheet],
        [content.captions[i] for i in page.sheet],
        title=content.title if with_title else "",
        columns=columns,
        cell_width=cell_width,
        start=page.sheet[0] + 1,
    )
    sheet = ImageOps.contain(sheet, area.size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (page.width, page.height), BACKGROUND)
    canvas.paste(sheet, (area.left + (area.width - sheet.width) // 2, area.top))
    return canvas


def _draw_block(draw: ImageDraw.ImageDraw, block: TextBlock, left: int, top: int, width: int, *, center: bool) -> None:
    typeface = block.font
    for number, line in enumerate(block.lines):
        x = left + (width - typeface.getlength(line)) / 2 if center else left
        draw.text((x, top + number * block.line_height), line, font=typeface, fill=INK)


def _note_cut(block: TextBlock, frame: int, what: str) -> None:
    if block.cut:
        where = "its page" if what == "text" else "its panel (the book layout has room for more)"
        logger.info("frame %d: %s cut to fit %s", frame, what, where)

"""The storyboard sheet: frames in a grid with their captions under them (pure PIL)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (250, 249, 246)
TEXT = (30, 30, 30)
MUTED = (120, 120, 120)


def default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` px (its fixed-size bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word wider than a line is broken where the line ends; the last line
    ends with an ellipsis if text remains."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fits(line: str) -> bool:
        return draw.textlength(line, font=font) <= width

    lines: list[str] = []
    current = ""
    for piece in _pieces(text.split(), fits, width):
        candidate = f"{current} {piece}".strip()
        if fits(candidate) or not current:
            current = candidate
            continue
        lines.append(current)
        current = piece
        if len(lines) == max_lines:  # ``piece`` and what follows it do not fit
            last = lines[-1]
            while last and not fits(last + " …"):
                last = last[:-1]
            lines[-1] = last.rstrip() + " …"
            current = ""
            break
    if current:
        lines.append(current)
    return lines[:max_lines]


def _pieces(words: Sequence[str], fits: Callable[[str], bool], width: int) -> Iterator[str]:
    """The words, each wider than a line broken into the longest prefixes that fit (lazily: a 200,000-character
    "word" is measured only as far as the lines drawn from it)."""
    for word in words:
        # Glyphs are at least a pixel wide, so a line holds at most ``width`` characters: longer words are not
        # measured whole.
        while len(word) > width or not fits(word):
            low, high = 1, min(len(word) - 1, max(1, width))
            while low < high:  # the longest prefix that fits (at least one character)
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits(word[:middle]) else (low, middle - 1)
            yield word[:low]
            word = word[low:]
        if word:
            yield word


def render_storyboard(
    images: Sequence[Image.Image | None],
    captions: Sequence[str],
    *,
    title: str = "",
    columns: int | None = None,
    cell_width: int | None = None,
    caption_lines: int = 4,
    start: int = 1,
) -> Image.Image:
    """Lay frames out in a grid with numbered captions; a missing frame (``None``) leaves a grey box.

    Args:
        images: The frames in reading order.
        captions: One caption per frame.
        title: Printed above the grid.
        columns: Frames per row (default: about square, at most 5).
        cell_width: Width of a frame on the sheet (default: the frame width, clamped to 256..512).
        caption_lines: Lines of caption text kept under each frame.
        start: Number of the first frame (a sheet that goes on from another starts past 1).
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("a storyboard needs at least one frame")
    first = next((im for im in images if im is not None), None)
    aspect = first.height / first.width if first is not None else 1.0
    if cell_width is None:
        cell_width = min(max(first.width if first is not None else 256, 256), 512)
    cell_height = round(cell_width * aspect)
    columns = columns or min(5, max(1, math.ceil(math.sqrt(len(images)))))
    rows = math.ceil(len(images) / columns)

    font_size = max(12, cell_width // 22)
    font = default_font(font_size)
    title_font = default_font(font_size * 2)
    line_height = round(font_size * 1.3)
    margin, gap = font_size, font_size
    caption_height = line_height * (caption_lines + 1)
    title_height = round(font_size * 3) if title else 0

    width = margin * 2 + columns * cell_width + (columns - 1) * gap
    height = margin * 2 + title_height + rows * (cell_height + caption_height) + (rows - 1) * gap
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((margin, margin), title, fill=TEXT, font=title_font)

    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        row, column = divmod(index, columns)
        x = margin + column * (cell_width + gap)
        y = margin + title_height + row * (cell_height + caption_height + gap)
        if image is None:
            draw.rectangle((x, y, x + cell_width - 1, y + cell_height - 1), fill=(220, 220, 220))
            draw.text((x + 8, y + 8), "not drawn yet", fill=MUTED, font=font)
        else:
            resample = Image.Resampling.NEAREST if image.width * 2 <= cell_width else Image.Resampling.LANCZOS
            sheet.paste(image.convert("RGB").resize((cell_width, cell_height), resample), (x, y))
        label = f"{start + index}. {caption}"
        for line_number, line in enumerate(wrap_text(label, font, cell_width, caption_lines)):
            draw.text((x, y + cell_height + 4 + line_number * line_height), line, fill=TEXT, font=font)
    return sheet

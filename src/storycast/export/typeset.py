"""Lettering: the fonts that ship with storycast, captions split into narration and speech, text fitted to boxes.

Speech boxes come from the frames' captions, as StoryDiffusion's comic captions come from the text after a
frame's ``#``: text in double quotes (``"..."`` or ``“...”``) is speech, one box a quote, and the rest is the
narration box. A name and colon just before a quote (``Mara: "Look!"``) says who speaks and is left out.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

FONTS_PACKAGE = "storycast.export"
FONTS_FOLDER = "fonts"
FONTS = {
    "comic": "ComicNeue-Regular.otf",
    "comic-bold": "ComicNeue-Bold.otf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
}
"""Faces by role -> their files in ``storycast/export/fonts``: Comic Neue 2.51 (SIL Open Font License 1.1) for
comics, DejaVu Serif 2.37 (Bitstream Vera licence, DejaVu changes public domain) for books. Licences beside them."""
FONT_FAMILIES = {
    "comic": "Comic Neue",
    "comic-bold": "Comic Neue",
    "serif": "DejaVu Serif",
    "serif-bold": "DejaVu Serif",
}
LINE_SPACING = 1.22
"""Line height as a multiple of the font size."""
SHRINK_STEPS = (1.0, 0.9, 0.8, 0.7)
"""Font size factors tried, largest first, before text that still does not fit is cut with an ellipsis."""

_QUOTE = re.compile(r'"([^"]*)"|“([^”]*)”')
_SPEAKER = re.compile(r"(?:^|(?<=\s))[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*){0,2}\s*:\s*$")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")


@dataclass(frozen=True)
class Lettering:
    """What a frame's caption puts on a comic panel: one narration box (may be empty) and its speech boxes."""

    narration: str
    speech: tuple[str, ...] = ()


def split_caption(caption: str) -> Lettering:
    """Split a caption into narration and speech (see the module's docstring)."""
    narration: list[str] = []
    speech: list[str] = []
    position = 0
    for match in _QUOTE.finditer(caption):
        narration.append(_SPEAKER.sub("", caption[position : match.start()]))
        # '"Tomorrow," she says': the comma belongs to the sentence around the quote, not to the speech.
        spoken = " ".join((match[1] if match[1] is not None else match[2]).split()).rstrip(",")
        if spoken:
            speech.append(spoken)
        position = match.end()
    narration.append(caption[position:])
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(" ".join(narration).split()))
    return Lettering(text.strip(" ,;:"), tuple(speech))


def font_bytes(face: str) -> bytes:
    """The font file of ``face`` ("comic", "comic-bold", "serif", "serif-bold"), read from the package."""
    return _font_bytes(face)


@functools.cache
def _font_bytes(face: str) -> bytes:
    if face not in FONTS:
        raise ValueError(f"unknown font face '{face}' (known: {', '.join(FONTS)})")
    return resources.files(FONTS_PACKAGE).joinpath(FONTS_FOLDER).joinpath(FONTS[face]).read_bytes()


@functools.lru_cache(maxsize=128)
def font(face: str, size: int) -> FreeTypeFont:
    """The shipped font of ``face`` at ``size`` pixels."""
    from PIL import ImageFont

    return ImageFont.truetype(io.BytesIO(_font_bytes(face)), size)


@dataclass(frozen=True)
class TextBlock:
    """Lines of text set in one font, ready to draw.

    Attributes:
        lines: The lines; the last ends with "…" when the text was cut.
        face: The font face.
        size: Font size in pixels.
        line_height: Distance between baselines in pixels.
        width: Width of the longest line in pixels.
        cut: Whether text was left out to fit.
    """

    lines: tuple[str, ...]
    face: str
    size: int
    line_height: int
    width: int
    cut: bool = False

    @property
    def height(self) -> int:
        return self.line_height * len(self.lines)

    @property
    def font(self) -> FreeTypeFont:
        return font(self.face, self.size)


def fit_text(text: str, face: str, size: int, width: int, height: int) -> TextBlock:
    """``text`` wrapped into ``width`` x ``height`` pixels: at ``size``, else at the sizes of
    :data:`SHRINK_STEPS`, else at the smallest of them with the lines that fit, the last ending in "…"."""
    words = len(text.split())
    for factor in SHRINK_STEPS:
        block = _set(text, face, max(1, round(size * factor)), width, max(1, words))
        if block.height <= height:
            return block
    return _set(text, face, block.size, width, max(1, height // block.line_height), cut=True)


def _set(text: str, face: str, size: int, width: int, max_lines: int, *, cut: bool = False) -> TextBlock:
    from storycast.runs.storyboard import wrap_text

    typeface = font(face, size)
    lines = tuple(wrap_text(text, typeface, width, max_lines)) if text.strip() else ()
    widest = max((round(typeface.getlength(line)) for line in lines), default=0)
    return TextBlock(lines, face, size, max(1, round(size * LINE_SPACING)), widest, cut=cut)

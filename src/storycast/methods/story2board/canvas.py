"""The storyboards of a story and the two-panel canvas each frame is drawn on, as pure functions.

The authors (DavidDinkevich/Story2Board@92ef110) draw a storyboard of one subject: every canvas holds a reference
panel on top and one frame below, from one sentence, ``"A storyboard of a {subject} {reference} (top) and the exact
same {subject} {panel} (bottom)"`` (``main.py`` lines 145-149), on a 1024 x 1024 canvas (the pipeline's default
size, ``story2board_pipeline.py`` lines 383-384) cut at half its height (``main.py`` lines 15-19). The first canvas
gives two panels, its top (the reference) and its bottom; every other canvas gives its bottom (``main.py`` line 25).

Here a story's frames are split by cast (the characters a frame names): each cast that two or more frames name is
one storyboard, its first frame the reference panel; a frame whose cast no other frame shares, or that names
nobody, has nothing to keep consistent and is drawn plainly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storycast.story.model import Story, join_prompt
from storycast.story.phrases import frame_cast, frame_phrase

_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Storyboard:
    """The frames of one cast, in story order: ``frames[0]`` is the reference panel, drawn on top of the canvas
    whose bottom panel is ``frames[1]`` (the reference row); every later frame is the bottom panel of a canvas of
    its own whose top is anchored to the reference row's.

    Attributes:
        cast: The ids of the characters every one of these frames names.
        subject: The cast in the authors' sentence.
        frames: Story frame indices (two or more).
    """

    cast: tuple[str, ...]
    subject: str
    frames: tuple[int, ...]

    @property
    def name(self) -> str:
        return "+".join(self.cast)

    @property
    def reference_row(self) -> tuple[int, int]:
        return self.frames[0], self.frames[1]


def subject(descriptions: Sequence[str]) -> str:
    """The subject of the authors' sentence: the descriptions without a leading article (the sentence says "a
    {subject}" itself), joined by "and"."""
    return " and ".join(_ARTICLE.sub("", d.strip()) for d in descriptions)


def storyboards(story: Story) -> tuple[list[Storyboard], list[int]]:
    """The story's storyboards, in order of first appearance, and the frames drawn plainly (naming nobody, or a
    cast no other frame names), in story order."""
    by_cast: dict[tuple[str, ...], list[int]] = {}
    for index in range(len(story)):
        by_cast.setdefault(frame_cast(story, index), []).append(index)
    boards, plain = [], []
    for cast, frames in by_cast.items():
        if cast and len(frames) > 1:
            descriptions = [story.character(c).description for c in cast]
            boards.append(Storyboard(cast, subject(descriptions), tuple(frames)))
        else:
            plain.extend(frames)
    return boards, sorted(plain)


def storyboard_prompt(subject: str, reference: str, panel: str, style: str = "", suffix: str = "") -> str:
    """The authors' sentence for a canvas (``main.py`` lines 145-149), inside the story's style: "A watercolor
    illustration of" + "a storyboard of a ..." (an empty style gives the authors' sentence exactly)."""
    opening = "a storyboard" if style.strip() else "A storyboard"
    sentence = f"{opening} of a {subject} {reference} (top) and the exact same {subject} {panel} (bottom)"
    return join_prompt(style, sentence, suffix)


def canvas_prompt(story: Story, board: Storyboard, frame: int) -> str:
    """The prompt of the canvas whose bottom panel is ``frame`` (a frame of ``board`` other than its reference)."""
    reference = frame_phrase(story, board.frames[0])
    return storyboard_prompt(board.subject, reference, frame_phrase(story, frame), story.style, story.style_suffix)


def canvas_height(panel_height: int) -> int:
    """The canvas holds two panels of the frame's size, one above the other."""
    return 2 * panel_height


def split_canvas(image: Any) -> tuple[Any, Any]:
    """(top, bottom) halves of a canvas image (PIL), cut at half its height (``main.py`` lines 15-19)."""
    width, height = image.size
    return image.crop((0, 0, width, height // 2)), image.crop((0, height // 2, width, height))

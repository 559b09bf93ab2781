"""A frame's cast and its phrase: what a frame shows besides its characters, for methods that put the characters'
descriptions in a prompt of their own (1Prompt1Story's identity prompt, Story2Board's storyboard sentence)."""

from __future__ import annotations

import re

from storycast.story.model import PLACEHOLDER, Story

_LEADING_CAST = re.compile(r"\s*\{[^{}]+\}(?:\s*(?:,\s*and|,|and|&)\s*\{[^{}]+\})*(?:[\s,;:]+|$)")
"""Placeholders a frame text starts with ("{mara} and {tom} "), not a possessive ("{mara}'s dog")."""


def frame_cast(story: Story, index: int) -> tuple[str, ...]:
    """The ids of the characters frame ``index`` names, in the story's order of characters."""
    named = set(story.frames[index].characters)
    return tuple(c.id for c in story.characters if c.id in named)


def frame_phrase(story: Story, index: int) -> str:
    """What frame ``index`` shows besides its characters.

    The frame's ``context`` when the story gives one (a benchmark story's setting). Otherwise the frame text
    without the characters it starts with ("{mara} and {tom} having tea" -> "having tea"), any later mention
    written as "the <class word>" ("a cat watching {mara} cook" -> "a cat watching the woman cook"): the
    characters themselves are described by the prompt the phrase goes into.
    """
    frame = story.frames[index]
    if frame.context is not None and frame.context.strip():
        return frame.context.strip()
    text = frame.text
    leading = _LEADING_CAST.match(text)
    if leading is not None:
        text = text[leading.end() :]
    words = {c.id: c.class_word for c in story.characters}
    text = PLACEHOLDER.sub(lambda m: f"the {words[m.group(1)]}" if m.group(1) in words else m.group(0), text)
    return " ".join(text.split())

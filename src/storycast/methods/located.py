"""Characters located by their class words' cross-attention maps, as the methods that need no detector do
(storynizor, consistory): which prompt tokens to record, the warnings when a character cannot be found, and the
masks saved beside each frame."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from storycast.attention.character_masks import CharacterMasks, word_token_positions
from storycast.story.model import Story, contains_word

logger = logging.getLogger(__name__)


def warn_unnamed_class_words(story: Story, method: str) -> None:
    """Warn (before any model loads) about every frame naming a character whose class word is not in its prompt:
    the method cannot locate the character there."""
    where = f"{story.source}: " if story.source else ""
    for index, frame in enumerate(story.frames):
        prompt = story.prompt(index)
        for cid in frame.characters:
            word = story.character(cid).class_word
            if not contains_word(prompt, word):
                logger.warning(
                    "%sframes[%d]: the class word '%s' of '%s' is not in the prompt, so %s cannot locate the "
                    "character there: it shares nothing for it in that frame. Fix: write {%s} in the frame's text.",
                    where, index, word, cid, method, cid,
                )  # fmt: skip


def class_word_positions(tokenizer: Any, story: Story, frames: Sequence[int]) -> list[dict[str, list[int]]]:
    """Per frame, each named character's class-word token positions in the frame's prompt (empty when the word is
    cut off by the text encoder's length, with a warning)."""
    found = []
    for index in frames:
        names = story.frames[index].characters
        prompt = story.prompt(index)
        words = [story.character(c).class_word for c in names]
        positions = dict(zip(names, word_token_positions(tokenizer, prompt, words), strict=True))
        for character, tokens in positions.items():
            if not tokens and contains_word(prompt, story.character(character).class_word):
                logger.warning(
                    "frames[%d]: the class word of '%s' comes after the text encoder's %d tokens, so the character "
                    "cannot be located there. Fix: shorten the frame's text or style.",
                    index, character, tokenizer.model_max_length,
                )  # fmt: skip
        found.append(positions)
    return found


def mask_extras(
    masks: CharacterMasks, number: int, characters: Sequence[str], size: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, float]]:
    """The masks of frame ``number``'s characters at image ``size`` (height, width), as images to save beside the
    frame (``mask-<id>``), and the share of the image each covers."""
    from PIL import Image

    extras, areas = {}, {}
    for character in characters:
        mask = masks.image_mask(number, character, size)
        if mask is not None:
            extras[f"mask-{character}"] = Image.fromarray(mask.numpy().astype("uint8") * 255)
            areas[character] = round(float(mask.float().mean()), 4)
    return extras, areas

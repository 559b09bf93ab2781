"""IdentityStory's prompts, built as the authors build them (``main.py``), and token checks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from storycast.identity.photomaker_prompt import search_prompt
from storycast.story.model import Character, Story, join_prompt


def region_prompt(story: Story, character: Character, characters_in_frame: int) -> str:
    """The prompt of a character's region in stage 2: its search prompt, after the story's style when the
    frame has several characters (the authors prefix the style for multi-character stories)."""
    prompt = search_prompt(character)
    return join_prompt(story.style, prompt) if characters_in_frame > 1 and story.style else prompt


def description_up_to_class_word(character: Character) -> str:
    """ "a <description up to and including its class word>", the authors' short multi-character form."""
    description = character.description.strip()
    if not description.lower().startswith("a "):
        description = "a " + description
    match = re.search(rf"(?<!\w){re.escape(character.class_word)}(?!\w)", description, flags=re.IGNORECASE)
    return description[: match.end()].strip() if match else f"a {character.class_word}"


def authors_multi_prompt(story: Story, index: int) -> str | None:
    """style + "a <desc1> and a <desc2>" + context, the authors' global prompt for several characters;
    None when the frame lacks what it needs (a context and at least two characters)."""
    frame = story.frames[index]
    characters = story.frame_characters(index)
    if len(characters) < 2 or not frame.context:
        return None
    joined = " and ".join(description_up_to_class_word(c) for c in characters)
    return join_prompt(join_prompt(story.style, joined), frame.context)


def global_prompt(story: Story, index: int, style: str) -> str:
    """Stage 1's prompt of frame ``index`` for ``prompt_style`` 'story', 'authors' or 'auto'."""
    if style == "authors" or (style == "auto" and story.source_format == "consistory-human"):
        built = authors_multi_prompt(story, index)
        if built is not None:
            return built
    return story.prompt(index)


def class_word_positions(
    tokenizer: Any, prompt: str, words: Sequence[str], max_length: int | None = None
) -> list[int | None]:
    """Token position of each word in ``prompt`` (the family's tokenizer, within ``max_length`` tokens, default the
    tokenizer's own): the k-th character with a given class word gets that word's k-th occurrence. A word split into
    several tokens is found by its last token, the token PhotoMaker fuses. None where the word does not occur."""
    ids = tokenizer(prompt, truncation=True, max_length=max_length or tokenizer.model_max_length).input_ids
    seen: dict[str, int] = {}
    positions: list[int | None] = []
    for word in words:
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        target = word_ids[-1] if word_ids else None
        occurrences = [i for i, token in enumerate(ids) if token == target]
        nth = seen.get(word, 0)
        positions.append(occurrences[nth] if nth < len(occurrences) else None)
        seen[word] = nth + 1
    return positions

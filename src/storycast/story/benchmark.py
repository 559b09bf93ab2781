"""The ConsiStory-Human benchmark format (IdentityStory's ``bench/`` files), read and written.

A benchmark file holds ``prompts`` (full frame prompts), ``character`` and ``token`` (one string, or
a list for several characters), ``settings`` / ``settings_types`` (each frame's context phrase and
its kind) and ``style`` (the prompt prefix). We read it into a :class:`Story` whose prompts are the
file's prompts verbatim, and write a story back in that layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storycast.errors import Problem, StoryError
from storycast.story.model import Character, Frame, Story, contains_word

BENCHMARK_KEYS = ("prompts", "character", "token")
FORMAT_NAME = "consistory-human"


def is_consistory_human(data: Any) -> bool:
    """True for a document in the benchmark layout (recognised by content, not by file name)."""
    return isinstance(data, Mapping) and all(key in data for key in BENCHMARK_KEYS) and "frames" not in data


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _character_id(token: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", token.strip()).strip("_").lower() or "character"
    if not base[0].isalpha():
        base = f"c_{base}"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}_{number}", number + 1
    taken.add(candidate)
    return candidate


def from_consistory_human(data: Mapping[str, Any], *, source: str | Path | None = None) -> Story:
    """Build a story from a ConsiStory-Human document; prompts expand back to the file's exact text."""
    problems: list[Problem] = []
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        problems.append(Problem("prompts", "must be a non-empty list of texts", "list one prompt per frame"))
        raise StoryError(problems, source)
    descriptions = _as_list(data.get("character"))
    tokens = _as_list(data.get("token"))
    if len(descriptions) != len(tokens) or not all(isinstance(x, str) and x for x in descriptions + tokens):
        problems.append(
            Problem(
                "token",
                "'character' and 'token' must be texts, or lists of texts of the same length",
                "give one token per character",
            )
        )
        raise StoryError(problems, source)
    contexts = data.get("settings")
    context_types = data.get("settings_types")
    for key, values in (("settings", contexts), ("settings_types", context_types)):
        if values is not None and (not isinstance(values, list) or len(values) != len(prompts)):
            problems.append(
                Problem(key, f"must be a list with one entry per prompt ({len(prompts)})", "add or remove entries")
            )
    style = data.get("style") or ""
    if not isinstance(style, str):
        problems.append(Problem("style", "must be text", "write the prompt prefix, e.g. 'A close-up photo of'"))
        style = ""

    taken: set[str] = set()
    characters = [
        Character(id=_character_id(token, taken), description=description, class_word=token)
        for description, token in zip(descriptions, tokens, strict=True)
    ]
    for index, character in enumerate(characters):
        if not contains_word(character.description, character.class_word):
            problems.append(
                Problem(
                    f"token[{index}]" if len(characters) > 1 else "token",
                    f"'{character.class_word}' is not in the character text",
                    "fix the token",
                )
            )

    strip_style = bool(style) and all(p.startswith(style) for p in prompts)
    frames: list[Frame] = []
    for index, prompt in enumerate(prompts):
        text = prompt[len(style) :].lstrip() if strip_style else prompt
        for character in characters:
            if character.description in text:
                text = text.replace(character.description, "{" + character.id + "}", 1)
            elif not contains_word(text, character.class_word):
                problems.append(
                    Problem(
                        f"prompts[{index}]",
                        f"neither the character text nor the word '{character.class_word}' occurs",
                        "fix the prompt",
                    )
                )
        frames.append(
            Frame(
                text=text,
                characters=tuple(c.id for c in characters),
                context=contexts[index] if isinstance(contexts, list) and index < len(contexts) else None,
                context_type=context_types[index]
                if isinstance(context_types, list) and index < len(context_types)
                else None,
            )
        )
    if problems:
        raise StoryError(problems, source)
    title = Path(source).stem if source is not None else "benchmark story"
    return Story(
        title=title,
        frames=tuple(frames),
        characters=tuple(characters),
        style=style if strip_style else "",
        source=Path(source) if source is not None else None,
        source_format=FORMAT_NAME,
    )


def to_consistory_human(story: Story) -> dict[str, Any]:
    """Write a story in the benchmark layout (full prompts; contexts fall back to the frame text)."""
    if not story.characters:
        raise StoryError(
            [Problem("characters", "the benchmark format needs at least one character", "add a character")],
            story.source,
        )
    single = len(story.characters) == 1
    descriptions = [c.description for c in story.characters]
    tokens = [c.class_word for c in story.characters]
    return {
        "prompts": [story.prompt(i) for i in range(len(story))],
        "token": tokens[0] if single else tokens,
        "character": descriptions[0] if single else descriptions,
        "settings_types": [frame.context_type or "" for frame in story.frames],
        "settings": [
            frame.context if frame.context is not None else story.scene_text(i) for i, frame in enumerate(story.frames)
        ],
        "style": story.style,
    }

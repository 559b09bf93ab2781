"""The ConsiStory-Human benchmark format (IdentityStory's ``bench/`` files), read and written.

A benchmark file holds ``prompts`` (full frame prompts), ``character`` and ``token`` (one string, or
a list for several characters), ``settings`` / ``settings_types`` (each frame's context phrase and
its kind) and ``style`` (the prompt prefix). We read it into a :class:`Story` whose prompts are the
file's prompts verbatim, and write a story back in that layout.

The layout is narrower than a story: every prompt shows every character, and it has no place for a title,
generation or method settings, character ids, names or references, nor per-frame seeds, negative prompts,
captions, masks or control images. :func:`to_consistory_human` refuses a story it cannot write faithfully
(or leaves the frames out, when asked to), and :func:`consistory_human_losses` names every field it leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from storycast.errors import Problem, StoryError
from storycast.story.model import Character, Frame, GenerationSettings, Story, contains_word

BENCHMARK_KEYS = ("prompts", "character", "token")
FORMAT_NAME = "consistory-human"


def is_consistory_human(data: Any) -> bool:
    """True for a document in the benchmark layout (recognised by content, not by file name)."""
    return isinstance(data, Mapping) and all(key in data for key in BENCHMARK_KEYS) and "frames" not in data


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def character_id(token: str, taken: set[str]) -> str:
    """An id (letters, digits, underscores, starting with a letter) made from ``token``, not in ``taken``."""
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
        Character(id=character_id(token, taken), description=description, class_word=token)
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


def to_consistory_human(story: Story, *, drop_frames: bool = False) -> dict[str, Any]:
    """Write a story in the benchmark layout; the result always reads back (:func:`from_consistory_human`).

    Written: each frame's full prompt (``prompts``, style prefix and suffix included), each character's
    description and class word (``character`` / ``token``), the style prefix (``style``), and each frame's
    ``context`` and ``context_type`` (``settings`` / ``settings_types``; a frame without a context gets its
    whole text as its setting, a frame without a context type gets ``""``).

    Every prompt of the layout shows every character, so a frame that shows only some of the story's
    characters, or none (a landscape, a close-up of one of two friends), cannot be written. Such frames make
    this function refuse, naming each frame, unless ``drop_frames`` is set: then they are left out (the written
    prompts skip them) and :func:`consistory_human_losses` names them. Refusing is the default because
    leaving frames out changes the story itself (fewer prompts, other indices), which only the caller can
    accept. Everything else the layout has no place for is left out without refusing, since the prompts
    stay whole; :func:`consistory_human_losses` lists it.

    Args:
        story: The story to write.
        drop_frames: Leave out the frames that do not show every character, instead of refusing.

    Raises:
        StoryError: The story has no character; a frame does not show every character (and ``drop_frames``
            is not set); no frame shows every character; or the written document would not read back.
    """
    kept, _ = _frames_to_write(story, drop_frames=drop_frames)
    single = len(story.characters) == 1
    descriptions = [c.description for c in story.characters]
    tokens = [c.class_word for c in story.characters]
    document = {
        "prompts": [story.prompt(i) for i in kept],
        "token": tokens[0] if single else tokens,
        "character": descriptions[0] if single else descriptions,
        "settings_types": [story.frames[i].context_type or "" for i in kept],
        "settings": [
            story.frames[i].context if story.frames[i].context is not None else story.scene_text(i) for i in kept
        ],
        "style": story.style.strip(),
    }
    _check_reads_back(document, kept, story.source)
    return document


def consistory_human_losses(story: Story, *, drop_frames: bool = False) -> list[Problem]:
    """What :func:`to_consistory_human` cannot carry over, one :class:`Problem` per field of the story.

    Each problem's ``field`` is the story field that is lost (``title``, ``settings.seed``,
    ``characters[0].name``, ``frames[4].seed``, ``frames[5].caption``, ``frames[1].characters`` for a frame
    left out by ``drop_frames``...); fields that are already lost with a left-out frame are not listed again.
    Also listed: a style suffix (it stays at the end of every prompt but reads back as part of each frame's
    text), character ids (the reader names characters after their class word), a frame whose characters are
    listed in another order than the story's (one order holds for every prompt) and a frame without a context
    (its setting repeats the whole frame text). A story read from a benchmark file loses nothing.

    Raises:
        StoryError: As :func:`to_consistory_human`, when the story cannot be written at all.
    """
    kept, left_out = _frames_to_write(story, drop_frames=drop_frames)
    lost: list[Problem] = []
    if story.source is None or story.title != story.source.stem:
        lost.append(
            Problem(
                "title",
                f"'{story.title}' is not written: {_NO_PLACE} titles (a read-back story is named after its file)",
            )
        )
    if story.style_suffix:
        lost.append(
            Problem(
                "style.suffix",
                f"{_NO_PLACE} style suffixes: it stays at the end of every prompt, but reads back as part of each "
                "frame's text",
            )
        )
    defaults = GenerationSettings()
    for setting in fields(GenerationSettings):
        if getattr(story.settings, setting.name) != getattr(defaults, setting.name):
            lost.append(Problem(f"settings.{setting.name}", f"is not written: {_NO_PLACE} generation settings"))
    lost.extend(Problem(f"methods.{name}", f"is not written: {_NO_PLACE} method settings") for name in story.methods)
    for index, (character, read_back_id) in enumerate(zip(story.characters, _read_back_ids(story), strict=True)):
        path = f"characters[{index}]"
        if character.id != read_back_id:
            lost.append(
                Problem(
                    f"{path}.id",
                    f"'{character.id}' is not written: {_NO_PLACE} ids (it reads back as '{read_back_id}')",
                )
            )
        if character.name is not None:
            lost.append(Problem(f"{path}.name", f"'{character.name}' is not written: {_NO_PLACE} names"))
        if character.references:
            lost.append(Problem(f"{path}.references", f"are not written: {_NO_PLACE} reference photos"))
    lost.extend(left_out)
    order = tuple(c.id for c in story.characters)
    for position, index in enumerate(kept):
        frame = story.frames[index]
        path = f"frames[{index}]"
        if frame.characters != order:
            lost.append(
                Problem(
                    f"{path}.characters",
                    f"the order {', '.join(frame.characters)} is not written: one order holds for every prompt "
                    f"(it reads back as {', '.join(order)})",
                )
            )
        for key, what in _FRAME_FIELDS_NOT_HELD:
            if getattr(frame, key) is not None:
                lost.append(Problem(f"{path}.{key}", f"is not written: {_NO_PLACE} {what}"))
        if frame.masks:
            lost.append(Problem(f"{path}.masks", f"are not written: {_NO_PLACE} masks"))
        if frame.context is None:
            lost.append(
                Problem(
                    f"{path}.context",
                    f"is not set, so settings[{position}] is the frame's whole text, the characters' descriptions "
                    "included",
                    "write the frame's context phrase (its text without the characters) as 'context'",
                )
            )
    return lost


_NO_PLACE = "the ConsiStory-Human format has no"
_FRAME_FIELDS_NOT_HELD = (
    ("seed", "per-frame seeds"),
    ("negative_prompt", "per-frame negative prompts"),
    ("caption", "captions"),
    ("control_image", "control images"),
)


def _frames_to_write(story: Story, *, drop_frames: bool) -> tuple[list[int], list[Problem]]:
    """The frames that show every character, and a problem for each other frame; raises if they cannot be left out."""
    if not story.characters:
        raise StoryError(
            [
                Problem(
                    "characters",
                    "the ConsiStory-Human format needs at least one character",
                    "add a character, or keep this story in the storycast format",
                )
            ],
            story.source,
        )
    everyone = tuple(c.id for c in story.characters)
    kept: list[int] = []
    partial: list[Problem] = []
    for index, frame in enumerate(story.frames):
        if set(frame.characters) == set(everyone):
            kept.append(index)
            continue
        shows = ", ".join(frame.characters) if frame.characters else "no character"
        message = (
            f"the frame shows {shows}, but every ConsiStory-Human prompt shows every character ({', '.join(everyone)})"
        )
        if drop_frames:
            partial.append(Problem(f"frames[{index}].characters", f"{message}; the frame is left out"))
        else:
            partial.append(
                Problem(
                    f"frames[{index}].characters",
                    message,
                    "list every character in the frame, or leave such frames out "
                    "(storycast convert --drop-frames; drop_frames=True)",
                )
            )
    if partial and not drop_frames:
        raise StoryError(partial, story.source)
    if not kept:
        raise StoryError(
            [
                Problem(
                    "frames",
                    f"no frame shows every character ({', '.join(everyone)}), so no prompt is left to write",
                    "add a frame that shows them all, or keep this story in the storycast format",
                )
            ],
            story.source,
        )
    return kept, partial


def _read_back_ids(story: Story) -> list[str]:
    """The ids :func:`from_consistory_human` gives the story's characters (made from their class words)."""
    taken: set[str] = set()
    return [character_id(c.class_word, taken) for c in story.characters]


def _check_reads_back(document: dict[str, Any], kept: list[int], source: Path | None) -> None:
    """Raise if :func:`from_consistory_human` would reject ``document``, naming the story's own fields."""
    try:
        from_consistory_human(document)
    except StoryError as err:
        problems = []
        for problem in err.problems:
            found = re.fullmatch(r"prompts\[(\d+)\]", problem.field)
            field = f"frames[{kept[int(found.group(1))]}]" if found else problem.field
            problems.append(
                Problem(
                    field,
                    f"the ConsiStory-Human file would not read back: {problem.message}",
                    "write each character of the frame as '{id}' in its text",
                )
            )
        raise StoryError(problems, source) from None

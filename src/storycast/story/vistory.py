"""The ViStoryBench story format (``ViStoryBench/vistorybench``, CVPR 2026), read as the benchmark's own loader
reads it, into a :class:`Story`.

A ViStory story is a numbered folder holding ``story.json`` and ``image/<character key>/`` reference images.
``story.json`` holds ``Story_type`` (per language), ``Characters`` (key -> ``name_en``/``name_ch``,
``prompt_en``/``prompt_ch``, ``tag``, ``num_of_appearances``) and ``Shots`` (each with ``index`` and, per language,
``Setting Description``, ``Plot Correspondence``, ``Characters Appearing`` (a list of names), ``Static Shot
Description`` and ``Shot Perspective Design``). What follows the authors' code at commit 514cc31
(``data_process/dataset_process/dataset_load.py``):

- the file is read as UTF-8 with or without a byte-order mark (``encoding="utf-8-sig"``);
- a shot's characters are its English ``Characters Appearing`` (the keys into ``Characters``) paired with the
  chosen language's names;
- a character's reference images are the ``.png``/``.jpg``/``.jpeg`` files under ``image/<key>/``, walked in
  sorted order;
- a shot's prompt for text-to-image methods is ``story_prompt_merge``'s: ``"{camera};{plot};{script};{<name> is
  <description>;...};{scene};"``, composed in that order (recorded in :data:`PROMPT_ORDER`); it becomes the
  frame's text verbatim, so every method sees exactly the benchmark's prompt.

Where the authors' loader prints a warning and skips (a shot missing a field, a character not in ``Characters``),
we refuse with the story, the field and the fix: a benchmark story that silently loses a shot scores differently.
A character without reference images is refused too (the benchmark's reference-based methods and metrics need
them). Our addition, needed by methods that locate characters by a word: each character's ``class_word`` is the first
of :data:`CLASS_WORDS` its description names, else its name (written before its description, so that the
description names it too); documented in docs/story-format.md. A character's ``tag`` (``realistic_human``,
``unrealistic_human``, ``non_human``) is kept as its ``kind`` (another value, or none, as unknown): the benchmark's
CIDS reads a face only for ``realistic_human`` (``cids_evaluator.py`` ``_get_encoder_name``), and our methods that
read a face from reference images leave a ``non_human`` character's unread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from storycast.errors import Problem, StoryError
from storycast.story.benchmark import character_id
from storycast.story.model import KINDS, Character, Frame, Story, contains_word

FORMAT_NAME = "vistory"
LANGUAGES = ("en", "ch")
SHOT_FIELDS = {
    "Setting Description": "scene",
    "Plot Correspondence": "plot",
    "Characters Appearing": "character_name",
    "Static Shot Description": "script",
    "Shot Perspective Design": "camera",
}
"""The shot fields the benchmark's loader requires, and its names for them (``dataset_load.py`` ``load_shots``)."""
PROMPT_ORDER = ("camera", "plot", "script", "characters", "scene")
"""The order ``story_prompt_merge`` joins a shot's parts in, each followed by ``;``."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASS_WORDS = (
    "woman", "man", "girl", "boy", "lady", "child", "kid", "baby", "person", "knight", "king", "queen", "prince",
    "princess", "soldier", "robot", "dragon", "dog", "cat", "fox", "rabbit", "bear", "bird", "horse", "wolf",
    "mouse", "lion", "tiger", "owl", "monkey", "pig", "duck", "frog", "fish", "creature", "animal", "monster",
)  # fmt: skip
"""Words a character's description is searched for, in this order, to name what it is (``class_word``)."""


LITE_STORIES = ("01", "08", "09", "15", "17", "19", "24", "27", "28", "29", "32", "41", "52", "53", "55", "57", "60",
                "64", "68", "79")  # fmt: skip
"""ViStoryBench-Lite: the 20 stories of the benchmark's lite split (``utils/extract_lite_stories.py``,
``LITE_DATA``, at 514cc31)."""
SPLITS = ("full", "lite")


def split_stories(names: Sequence[str], split: str) -> list[str]:
    """The story folder names (``"01"``...) of ``split``: all of them ("full") or the lite ones, in their order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return list(names) if split == "full" else [name for name in names if name.zfill(2) in LITE_STORIES]


def is_vistory(data: Any) -> bool:
    """True for a ViStory ``story.json`` document (recognised by content)."""
    return isinstance(data, Mapping) and isinstance(data.get("Shots"), list) and "Characters" in data


def shot_prompt(camera: str, plot: str, script: str, character_lines: list[str], scene: str) -> str:
    """A shot's prompt as the benchmark composes it for text-to-image methods (:data:`PROMPT_ORDER`)."""
    return f"{camera};{plot};{script};{';'.join(character_lines)};{scene};"


def _class_word(description: str, name: str) -> tuple[str, str]:
    """(class word, description): the first of :data:`CLASS_WORDS` the description names; else the character's
    name, written before the description (a shot's prompt holds "<name> is <description>", so the word a method
    looks for is in every prompt that shows the character, in either language)."""
    word = next((w for w in CLASS_WORDS if contains_word(description, w)), None)
    if word is not None:
        return word, description
    return name, f"{name}, {description}"


def _text(value: Any, language: str) -> Any:
    return value.get(language) if isinstance(value, Mapping) else None


def from_vistory(data: Mapping[str, Any], *, source: str | Path, language: str = "en") -> Story:
    """Build a story from a ViStory ``story.json`` (``source``: its path; reference images beside it)."""
    source = Path(source)
    folder = source.resolve().parent  # reference paths absolute: a run's copy of the story reads them anywhere
    problems: list[Problem] = []
    if language not in LANGUAGES:
        raise StoryError([Problem("", f"language '{language}' is not one of ViStory's", "use en or ch")], source)
    raw_characters = data.get("Characters")
    if not isinstance(raw_characters, Mapping) or not raw_characters:
        raise StoryError([Problem("Characters", "must map each character's key to its fields", "add them")], source)
    taken: set[str] = set()
    characters: dict[str, Character] = {}
    prompts: dict[str, str] = {}  # the descriptions as written: the shot prompts use them so
    for key, fields in raw_characters.items():
        where = f"Characters.{key}"
        if not isinstance(fields, Mapping):
            problems.append(
                Problem(where, "must be a mapping of the character's fields", "write name_en, prompt_en...")
            )
            continue
        name, prompt = fields.get(f"name_{language}"), fields.get(f"prompt_{language}")
        if not isinstance(name, str) or not name.strip() or not isinstance(prompt, str) or not prompt.strip():
            problems.append(
                Problem(
                    where, f"needs name_{language} and prompt_{language} texts", f"write both for --lang {language}"
                )
            )
            continue
        images = sorted(
            p for p in (folder / "image" / str(key)).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ) if (folder / "image" / str(key)).is_dir() else []  # fmt: skip
        if not images:
            problems.append(
                Problem(
                    where,
                    f"has no reference images (looked for .png, .jpg, .jpeg under {folder / 'image' / str(key)})",
                    "add the character's images there, as the benchmark's folders hold them",
                )
            )
            continue
        class_word, description = _class_word(prompt.strip(), name.strip())
        prompts[str(key)] = prompt
        characters[str(key)] = Character(
            id=character_id(str(key), taken),
            description=description,
            class_word=class_word,
            name=name.strip(),
            references=tuple(images),
            kind=tag if (tag := fields.get("tag")) in KINDS else None,
        )
    shots = data.get("Shots")
    frames: list[Frame] = []
    for number, shot in enumerate(shots if isinstance(shots, list) else []):
        where = f"Shots[{number}]"
        missing = [f for f in SHOT_FIELDS if not isinstance(shot, Mapping) or f not in shot]
        if missing:
            problems.append(
                Problem(where, f"misses {', '.join(missing)}", "add the fields the benchmark's shots have")
            )
            continue
        parts = {name: _text(shot[field], language) for field, name in SHOT_FIELDS.items()}
        keys = _text(shot["Characters Appearing"], "en")
        untyped = [name for name, value in parts.items() if name != "character_name" and not isinstance(value, str)]
        if untyped or not isinstance(keys, list) or not isinstance(parts["character_name"], list):
            problems.append(
                Problem(where, f"has no {language} text for {', '.join(untyped) or 'Characters Appearing'}",
                        f"write each field's '{language}' entry (Characters Appearing: a list of names)")
            )  # fmt: skip
            continue
        unknown = [k for k in keys if str(k).strip() not in raw_characters]
        if unknown:
            problems.append(
                Problem(
                    f"{where}.Characters Appearing", f"names {unknown}, not in Characters", "add them or fix the names"
                )
            )
            continue
        present = [characters[str(k).strip()] for k in keys if str(k).strip() in characters]
        # zip as theirs does: names beyond the keys (or keys beyond the names) are dropped.
        pairs = zip(keys, parts["character_name"], strict=False)
        lines = [f"{name} is {prompts[str(k).strip()]}" for k, name in pairs if str(k).strip() in characters]
        prompt = shot_prompt(parts["camera"], parts["plot"], parts["script"], lines, parts["scene"])
        frames.append(
            Frame(text=prompt, characters=tuple(dict.fromkeys(c.id for c in present)), context=parts["scene"],
                  caption=parts["plot"])
        )  # fmt: skip
    if not frames and not problems:
        problems.append(Problem("Shots", "holds no shots", "add the story's shots"))
    if problems:
        raise StoryError(problems, source)
    return Story(
        title=folder.name,
        frames=tuple(frames),
        characters=tuple(characters.values()),
        source=source,
        source_format=FORMAT_NAME,
    )


def shot_numbers(source: str | Path) -> list[int]:
    """Each shot's ``index`` in a ViStory ``story.json``, in order: the number the benchmark's scorers look a
    shot's image up by (``int(shot["index"])``; the image ``shot_<index>.png``). A shot whose index is not a whole
    number gets its position from 1, as the benchmark's ``shot_01.png`` numbering does."""
    import json

    shots = json.loads(Path(source).read_text(encoding="utf-8-sig")).get("Shots") or []
    numbers = []
    for position, shot in enumerate(shots, start=1):
        index = shot.get("index") if isinstance(shot, Mapping) else None
        try:
            numbers.append(int(index))
        except (TypeError, ValueError):
            numbers.append(position)
    return numbers

"""The story form: its fields -> our story document -> :func:`storycast.story.parse.parse_story`, and back.

The form holds what a person types (title, style, a few characters, one frame a line, a few generation
settings); the *document* is the story in our file format (``docs/story-format.md``), the same dict a story file
holds. A document loaded from a file or a run keeps what the form does not show (a frame's seed, caption,
context or character list, the ``methods:`` block, the batch size): the form's values are laid over it, frame by
frame, so editing one line keeps the other frames' seeds.

Paths in a document (reference photos, masks, control images) must name files the app stored in its uploads
folder; any other is dropped with a note when a story is loaded and refused when it is drawn, so a client never
makes the app read a file of its choosing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast.app.folders import AppFolders, AppRequestError
from storycast.errors import Problem, StoryError
from storycast.story.model import Story

MAX_CHARACTERS = 4
"""Character slots in the form (a story file with more is refused: the form could not show them)."""
FORM_SETTINGS = ("width", "height", "steps", "guidance_scale", "seed", "negative_prompt")
"""Generation settings the form shows; blank means the model preset's (or the method's) default."""
_INT_SETTINGS = ("width", "height", "steps", "seed")


@dataclass
class CharacterFields:
    """One character slot of the form. ``photos`` are paths in the app's uploads folder (kept on the server)."""

    id: str = ""
    name: str = ""
    description: str = ""
    class_word: str = ""
    photos: tuple[str, ...] = ()
    identity: str = ""
    """A key of the identity library the character takes its identity from (empty: its photos, or discovered)."""

    @property
    def blank(self) -> bool:
        texts = (self.id, self.name, self.description, self.class_word, self.identity)
        return not any(s.strip() for s in texts) and not self.photos


@dataclass
class StoryFields:
    """The form's values.

    Attributes:
        title: The story's title.
        style: Text before every frame's text ("A watercolor illustration of").
        style_suffix: Text after it (", storybook, soft light").
        characters: The character slots, blank ones included (their position is their number in messages).
        frames: One frame a line; ``{id}`` names a character.
        settings: Generation settings by name (:data:`FORM_SETTINGS`); None or "" is the default.
    """

    title: str = ""
    style: str = ""
    style_suffix: str = ""
    characters: list[CharacterFields] = field(default_factory=list)
    frames: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def frame_lines(text: str) -> list[str]:
    """The frames of the frame box: its non-empty lines, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _frame_entries(frames: Any) -> list[dict[str, Any]]:
    entries = []
    for item in frames if isinstance(frames, list) else []:
        entries.append({"text": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else {})
    return entries


def merge_frames(lines: Sequence[str], previous: Any) -> list[dict[str, Any]]:
    """The document's frames for the frame box's ``lines``, keeping what ``previous`` frames held besides text.

    A line takes the fields (seed, caption, characters...) of the previous frame at its place when that frame's
    text is the same, else of the first unused previous frame with its text, else none: inserting or removing a
    line keeps every other frame's seed, and a new or rewritten line starts afresh.
    """
    entries = _frame_entries(previous)
    used: set[int] = set()
    out: list[dict[str, Any]] = []
    for position, line in enumerate(lines):
        match = None
        if position < len(entries) and entries[position].get("text") == line:
            match = position
        else:
            match = next((i for i, e in enumerate(entries) if i not in used and e.get("text") == line), None)
        if match is None:
            out.append({"text": line})
        else:
            used.add(match)
            out.append({**entries[match], "text": line})
    return out


def _setting_value(name: str, value: Any) -> Any:
    """A form value as the document writes it: None for blank, whole numbers for the integer settings."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if name == "negative_prompt":
        return str(value)
    if name in _INT_SETTINGS:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            return int(value)
        return value  # the parser names the field and the fix
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def build_document(fields: StoryFields, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The story document of the form's values, laid over ``base`` (the document loaded or last built)."""
    base = dict(base or {})
    doc: dict[str, Any] = {"version": base.get("version", 1), "title": fields.title.strip()}
    prefix, suffix = fields.style.strip(), fields.style_suffix.strip()
    if suffix:
        doc["style"] = {"prefix": prefix, "suffix": suffix}
    elif prefix:
        doc["style"] = prefix
    characters = []
    for slot in fields.characters:
        if slot.blank:
            continue
        entry: dict[str, Any] = {
            "id": slot.id.strip(),
            "description": slot.description.strip(),
            "class_word": slot.class_word.strip(),
        }
        if slot.name.strip():
            entry["name"] = slot.name.strip()
        if slot.photos:
            entry["references"] = list(slot.photos)
        if slot.identity.strip():
            entry["identity"] = slot.identity.strip()
        characters.append(entry)
    doc["characters"] = characters
    doc["frames"] = merge_frames(frame_lines(fields.frames), base.get("frames"))
    settings = dict(base.get("settings") or {}) if isinstance(base.get("settings"), Mapping) else {}
    for name in FORM_SETTINGS:
        value = _setting_value(name, fields.settings.get(name))
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value
    if settings:
        doc["settings"] = settings
    if isinstance(base.get("methods"), Mapping) and base["methods"]:
        doc["methods"] = copy.deepcopy(dict(base["methods"]))
    return doc


def document_to_fields(doc: Mapping[str, Any]) -> StoryFields:
    """The form's values for a document (a loaded story file or a run's ``story.yaml``).

    Raises:
        AppRequestError: More characters than the form has slots.
    """
    style = doc.get("style")
    prefix, suffix = (style.get("prefix", ""), style.get("suffix", "")) if isinstance(style, Mapping) else (style, "")
    characters = [c for c in doc.get("characters") or [] if isinstance(c, Mapping)]
    if len(characters) > MAX_CHARACTERS:
        raise AppRequestError(
            f"the story has {len(characters)} characters; the app edits up to {MAX_CHARACTERS}. Fix: draw it with "
            f"`storycast generate`, or split the cast."
        )
    slots = []
    for item in characters:
        references = item.get("references") or []
        references = [references] if isinstance(references, str) else list(references)
        slots.append(
            CharacterFields(
                id=str(item.get("id") or ""),
                name=str(item.get("name") or ""),
                description=str(item.get("description") or ""),
                class_word=str(item.get("class_word") or ""),
                photos=tuple(str(p) for p in references),
                identity=str(item.get("identity") or ""),
            )
        )
    slots += [CharacterFields() for _ in range(MAX_CHARACTERS - len(slots))]
    settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
    lines = [" ".join(str(e.get("text", "")).split()) for e in _frame_entries(doc.get("frames"))]
    return StoryFields(
        title=str(doc.get("title") or ""),
        style=str(prefix or ""),
        style_suffix=str(suffix or ""),
        characters=slots,
        frames="\n".join(lines),
        settings={name: settings.get(name) for name in FORM_SETTINGS},
    )


# -- paths ------------------------------------------------------------------------------------------------


def _paths(doc: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field path, container, key) of every file a document names: references, masks, control images."""
    found: list[tuple[str, Any, Any]] = []
    for number, character in enumerate(doc.get("characters") or []):
        if isinstance(character, dict) and "references" in character:
            refs = character["references"]
            if isinstance(refs, str):
                character["references"] = refs = [refs]
            for position in range(len(refs) if isinstance(refs, list) else 0):
                found.append((f"characters[{number}].references[{position}]", refs, position))
    for number, frame in enumerate(doc.get("frames") or []):
        if not isinstance(frame, dict):
            continue
        masks = frame.get("masks")
        for cid in list(masks) if isinstance(masks, dict) else []:
            found.append((f"frames[{number}].masks.{cid}", masks, cid))
        if "control_image" in frame:
            found.append((f"frames[{number}].control_image", frame, "control_image"))
    return found


def _is_upload(value: Any, folders: AppFolders) -> bool:
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    path = Path(value)
    return folders.is_upload(path if path.is_absolute() else folders.uploads / path)


def path_problems(doc: Mapping[str, Any], folders: AppFolders) -> list[Problem]:
    """Every file a document names that is not one the app stored in its uploads folder."""
    problems = []
    for where, container, key in _paths(copy.deepcopy(dict(doc))):
        if not _is_upload(container[key], folders):
            problems.append(
                Problem(where, "names a file that was not uploaded to the app", "upload the photo in the form")
            )
    return problems


def sanitize_document(doc: Mapping[str, Any], folders: AppFolders) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``doc`` without the files it names outside the app's uploads, and a note for each one dropped."""
    doc = copy.deepcopy(dict(doc))
    notes: list[str] = []
    dropped: list[tuple[Any, Any]] = []
    for where, container, key in _paths(doc):
        value = container[key]
        if _is_upload(value, folders):
            path = Path(value)
            container[key] = str(path if path.is_absolute() else (folders.uploads / path).resolve())
        else:
            notes.append(f"{where}: '{value}' was left out (only photos uploaded to the app are used; upload it)")
            dropped.append((container, key))
    for container, key in reversed(dropped):  # list positions from the end, so earlier ones stay valid
        del container[key]
    for character in doc.get("characters") or []:
        if isinstance(character, dict) and character.get("references") == []:
            del character["references"]
    for frame in doc.get("frames") or []:
        if isinstance(frame, dict) and frame.get("masks") == {}:
            del frame["masks"]
    return doc, notes


def load_document(path: Path, folders: AppFolders) -> tuple[dict[str, Any], list[str]]:
    """A story file the app stored (YAML or JSON, ours or ConsiStory-Human) as our document, sanitized.

    Raises:
        StoryError: The file cannot be read (the CLI's limits and messages: size, encoding, syntax, depth...).
    """
    from storycast.story import benchmark
    from storycast.story.parse import read_document, story_to_dict

    data, _lines = read_document(path)
    if benchmark.is_consistory_human(data):
        data = story_to_dict(benchmark.from_consistory_human(data, source=path))
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise StoryError([Problem("", f"the file is {kind}, not a story", "write a mapping with 'frames'")], path)
    return sanitize_document(data, folders)


def check_document(doc: Mapping[str, Any], folders: AppFolders) -> Story:
    """The document parsed and validated, exactly as a story file is (:func:`storycast.story.parse.parse_story`).

    Raises:
        StoryError: Every problem found, each naming its field and the fix (files not uploaded included).
    """
    from storycast.story.parse import parse_story

    problems = path_problems(doc, folders)
    if problems:
        raise StoryError(problems, "the story")
    return parse_story(copy.deepcopy(dict(doc)), source=None, base_dir=folders.uploads)


_FIELD = re.compile(r"\b(characters|frames)\[(\d+)\]")


def problem_lines(err: StoryError, character_slots: Sequence[int] | None = None) -> list[str]:
    """Each problem of ``err`` as a line for the page: ``frames[1]`` reads "frame 2", ``characters[0]`` the
    number of its slot in the form (``character_slots[i]`` is the slot of the document's i-th character)."""

    def rename(match: re.Match[str]) -> str:
        index = int(match.group(2))
        if match.group(1) == "frames":
            return f"frame {index + 1}"
        slot = character_slots[index] if character_slots and index < len(character_slots) else index + 1
        return f"character {slot}"

    return [_FIELD.sub(rename, p.format()) for p in err.problems]


def used_slots(fields: StoryFields) -> list[int]:
    """The (1-based) slot numbers of the characters the document holds, in order."""
    return [number for number, slot in enumerate(fields.characters, start=1) if not slot.blank]


def seed_value(text: Any) -> int:
    """A seed typed in the form: a whole number from 0 to 2**64 - 1.

    Raises:
        AppRequestError: Anything else.
    """
    from storycast.story.limits import MAX_SEED

    value = str(text).strip()
    if not re.fullmatch(r"[0-9]{1,20}", value) or int(value) > MAX_SEED:
        raise AppRequestError(f"seed {value!r} is not a whole number from 0 to {MAX_SEED}. Fix: type e.g. 42.")
    return int(value)


def set_frame(doc: Mapping[str, Any], number: int, *, seed: int | None = None, text: str | None = None) -> dict:
    """A copy of ``doc`` with frame ``number`` (1-based) given ``seed`` and/or a new ``text``.

    Only that frame's inputs change, so drawing the document into the same run folder redraws that frame (and
    any frame whose group reads it), and keeps the rest.

    Raises:
        AppRequestError: No such frame, or an empty text.
    """
    doc = copy.deepcopy(dict(doc))
    frames = _frame_entries(doc.get("frames"))
    if not isinstance(number, int) or not 1 <= number <= len(frames):
        raise AppRequestError(
            f"there is no frame {number}; the story has {len(frames)}. Fix: pick 1 to {len(frames)}."
        )
    entry = frames[number - 1]
    if text is not None:
        text = " ".join(text.split())
        if not text:
            raise AppRequestError(f"the new text of frame {number} is empty. Fix: write what the frame shows.")
        if text != entry.get("text"):
            entry = {k: v for k, v in entry.items() if k not in ("characters", "caption", "context")}
            entry["text"] = text
    if seed is not None:
        entry["seed"] = seed
    frames[number - 1] = entry
    doc["frames"] = frames
    return doc

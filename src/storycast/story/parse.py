"""Read story files (YAML or JSON, ours or ConsiStory-Human) into a validated :class:`Story`.

Validation collects every problem before raising, and each problem names the field path
(``frames[3].characters[0]``), the line where the file has one, and the fix.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storycast.errors import Problem, StoryError
from storycast.story.model import (
    PLACEHOLDER,
    SEED_POLICIES,
    Character,
    Frame,
    GenerationSettings,
    Story,
    contains_word,
)

FORMAT_VERSION = 1
ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")

TOP_KEYS = ("version", "title", "style", "characters", "frames", "settings", "methods")
STYLE_KEYS = ("prefix", "suffix")
CHARACTER_KEYS = ("id", "description", "class_word", "name", "references")
FRAME_KEYS = (
    "text",
    "characters",
    "seed",
    "negative_prompt",
    "context",
    "context_type",
    "masks",
    "caption",
    "control_image",
)
SETTINGS_KEYS = ("width", "height", "steps", "guidance_scale", "seed", "negative_prompt", "batch_size", "seed_policy")


class _Problems:
    """Collects problems while walking a story document."""

    def __init__(self, lines: Mapping[str, int] | None = None):
        self.items: list[Problem] = []
        self.lines = lines or {}

    def add(self, path: str, message: str, fix: str = "") -> None:
        line = self.lines.get(path)
        if line is not None:
            message = f"(line {line}) {message}"
        self.items.append(Problem(path, message, fix))

    def unknown_keys(self, data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed fields are {', '.join(allowed)}"
                self.add(_join(path, str(key)), "unknown field", f"remove it or rename it ({hint})")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_TYPE_NAMES = {
    str: "text",
    int: "a whole number",
    float: "a number",
    list: "a list",
    dict: "a mapping",
    bool: "true/false",
}


def _check_type(value: Any, expected: type | tuple[type, ...], path: str, problems: _Problems) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    # bool is an int in Python; a YAML 'yes' must not pass as a seed.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        problems.add(path, f"must be {wanted}, got {type(value).__name__} {value!r}", f"write {wanted} here")
    return ok


def _get_text(data: Mapping[str, Any], key: str, path: str, problems: _Problems, *, required: bool) -> str | None:
    if key not in data or data[key] is None:
        if required:
            problems.add(_join(path, key), "missing required field", f"add '{key}: ...'")
        return None
    value = data[key]
    if not _check_type(value, str, _join(path, key), problems):
        return None
    if required and not value.strip():
        problems.add(_join(path, key), "is empty", f"write the {key.replace('_', ' ')}")
        return None
    return value


def _line_index(text: str) -> dict[str, int]:
    """Map field paths to 1-based line numbers, using the YAML composer (JSON parses as YAML too)."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        if path:
            lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                walk(value_node, _join(path, str(key_node.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, _join(path, index))

    if root is not None:
        walk(root, "")
    return lines


def read_document(path: str | Path) -> tuple[Any, dict[str, int]]:
    """Read a YAML or JSON file; syntax errors become a :class:`StoryError` with the line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StoryError([Problem("", "file not found", "check the path")], source=path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise StoryError(
            [Problem("", f"(line {err.lineno}) invalid JSON: {err.msg}", "fix the syntax")], path
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"(line {mark.line + 1}) " if mark is not None else ""
        reason = getattr(err, "problem", None) or str(err)
        raise StoryError([Problem("", f"{where}invalid YAML: {reason}", "fix the syntax")], path) from None
    return data, _line_index(text)


def load_story(path: str | Path) -> Story:
    """Read and validate a story file. The format (ours or ConsiStory-Human) is detected from its content."""
    from storycast.story import benchmark

    path = Path(path)
    data, lines = read_document(path)
    if benchmark.is_consistory_human(data):
        return benchmark.from_consistory_human(data, source=path)
    return parse_story(data, source=path, base_dir=path.parent, lines=lines)


def validate_story_file(path: str | Path) -> list[Problem]:
    """Every problem in a story file (empty list: the file is good)."""
    try:
        load_story(path)
    except StoryError as err:
        return err.problems
    return []


def parse_story(
    data: Any,
    *,
    source: str | Path | None = None,
    base_dir: str | Path | None = None,
    lines: Mapping[str, int] | None = None,
) -> Story:
    """Validate a story document (the dict read from a file) and build the :class:`Story`.

    Args:
        data: The parsed YAML/JSON document.
        source: File name used in messages.
        base_dir: Folder that relative reference and mask paths are resolved against.
        lines: Field path -> line number, for messages.
    """
    problems = _Problems(lines)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        problems.add("", f"the file is {kind}, not a story", "write a mapping with 'title', 'characters' and 'frames'")
        raise StoryError(problems.items, source)
    problems.unknown_keys(data, TOP_KEYS, "")

    version = data.get("version", FORMAT_VERSION)
    if _check_type(version, int, "version", problems) and version != FORMAT_VERSION:
        problems.add("version", f"format version {version} is not supported", f"use version: {FORMAT_VERSION}")

    title = _get_text(data, "title", "", problems, required=False)
    if title is None:
        title = Path(source).stem if source else "untitled"
    style, style_suffix = _parse_style(data.get("style"), problems)
    characters = _parse_characters(data.get("characters"), problems, base)
    settings = _parse_settings(data.get("settings"), problems)
    methods = _parse_methods(data.get("methods"), problems)
    frames = _parse_frames(data.get("frames"), characters, problems, base)

    if problems.items:
        raise StoryError(problems.items, source)
    return Story(
        title=title,
        frames=tuple(frames),
        characters=tuple(characters),
        style=style,
        style_suffix=style_suffix,
        settings=settings,
        methods=methods,
        source=Path(source) if source is not None else None,
    )


def _parse_style(value: Any, problems: _Problems) -> tuple[str, str]:
    if value is None:
        return "", ""
    if isinstance(value, str):
        return value, ""
    if not _check_type(value, (str, dict), "style", problems):
        return "", ""
    problems.unknown_keys(value, STYLE_KEYS, "style")
    prefix = _get_text(value, "prefix", "style", problems, required=False) or ""
    suffix = _get_text(value, "suffix", "style", problems, required=False) or ""
    return prefix, suffix


def _parse_characters(value: Any, problems: _Problems, base: Path) -> list[Character]:
    if value is None:
        return []
    if not _check_type(value, list, "characters", problems):
        return []
    characters: list[Character] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        path = _join("characters", index)
        if not _check_type(item, dict, path, problems):
            continue
        problems.unknown_keys(item, CHARACTER_KEYS, path)
        character_id = _get_text(item, "id", path, problems, required=True)
        description = _get_text(item, "description", path, problems, required=True)
        class_word = _get_text(item, "class_word", path, problems, required=True)
        name = _get_text(item, "name", path, problems, required=False)
        if character_id is not None:
            if not ID_PATTERN.match(character_id):
                problems.add(
                    _join(path, "id"),
                    f"'{character_id}' is not a valid id",
                    "use letters, digits, '_' or '-', starting with a letter (e.g. 'mara')",
                )
            elif character_id in seen:
                problems.add(_join(path, "id"), f"id '{character_id}' is used twice", "give each character its own id")
            seen.add(character_id)
        if class_word is not None and description is not None and not contains_word(description, class_word):
            problems.add(
                _join(path, "class_word"),
                f"class word '{class_word}' does not occur in the description '{description}'",
                f"put the word '{class_word}' in the description, or choose a class word that is in it",
            )
        references = _parse_paths(item.get("references"), _join(path, "references"), problems, base)
        if None not in (character_id, description, class_word):
            characters.append(Character(character_id, description, class_word, name, tuple(references)))
    return characters


def _parse_paths(value: Any, path: str, problems: _Problems, base: Path) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not _check_type(items, list, path, problems):
        return []
    paths: list[Path] = []
    for index, item in enumerate(items):
        item_path = _join(path, index) if not isinstance(value, str) else path
        if not _check_type(item, str, item_path, problems):
            continue
        resolved = (base / item).resolve() if not Path(item).is_absolute() else Path(item)
        if not resolved.is_file():
            problems.add(
                item_path,
                f"file '{item}' not found (looked at {resolved})",
                "fix the path (relative paths start at the story file's folder)",
            )
            continue
        paths.append(resolved)
    return paths


def _parse_settings(value: Any, problems: _Problems) -> GenerationSettings:
    if value is None:
        return GenerationSettings()
    if not _check_type(value, dict, "settings", problems):
        return GenerationSettings()
    problems.unknown_keys(value, SETTINGS_KEYS, "settings")
    out: dict[str, Any] = {}
    for key in ("width", "height"):
        if key in value and _check_type(value[key], int, _join("settings", key), problems):
            if value[key] <= 0 or value[key] % 8:
                problems.add(
                    _join("settings", key),
                    f"{value[key]} is not a positive multiple of 8",
                    "use e.g. 512, 768 or 1024",
                )
            else:
                out[key] = value[key]
    for key, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0)):
        if key in value and _check_type(value[key], int, _join("settings", key), problems):
            if value[key] < minimum:
                problems.add(_join("settings", key), f"{value[key]} is below {minimum}", f"use {minimum} or more")
            else:
                out[key] = value[key]
    if "guidance_scale" in value and _check_type(value["guidance_scale"], float, "settings.guidance_scale", problems):
        if value["guidance_scale"] < 0:
            problems.add("settings.guidance_scale", "must not be negative", "use e.g. 5.0 (1.0 turns guidance off)")
        else:
            out["guidance_scale"] = float(value["guidance_scale"])
    negative = _get_text(value, "negative_prompt", "settings", problems, required=False)
    if negative is not None:
        out["negative_prompt"] = negative
    policy = _get_text(value, "seed_policy", "settings", problems, required=False)
    if policy is not None:
        if policy in SEED_POLICIES:
            out["seed_policy"] = policy
        else:
            problems.add(
                "settings.seed_policy",
                f"'{policy}' is not a seed policy",
                "use per-frame (frame i from seed + i) or same (every frame from seed)",
            )
    return GenerationSettings(**out)


def _parse_methods(value: Any, problems: _Problems) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not _check_type(value, dict, "methods", problems):
        return {}
    methods: dict[str, dict[str, Any]] = {}
    for name, settings in value.items():
        path = _join("methods", str(name))
        if settings is None:
            settings = {}
        if _check_type(settings, dict, path, problems):
            methods[str(name)] = dict(settings)
    return methods


def _parse_frames(value: Any, characters: list[Character], problems: _Problems, base: Path) -> list[Frame]:
    if value is None:
        problems.add("frames", "missing required field", "add a 'frames:' list with at least one frame")
        return []
    if not _check_type(value, list, "frames", problems):
        return []
    if not value:
        problems.add("frames", "the story is empty (no frames)", "add at least one frame under 'frames:'")
        return []
    known = {c.id: c for c in characters}
    frames: list[Frame] = []
    for index, item in enumerate(value):
        path = _join("frames", index)
        if isinstance(item, str):
            item = {"text": item}
        if not _check_type(item, dict, path, problems):
            continue
        problems.unknown_keys(item, FRAME_KEYS, path)
        text = _get_text(item, "text", path, problems, required=True)
        if text is None:
            continue
        mentioned = list(dict.fromkeys(PLACEHOLDER.findall(text)))
        for character_id in mentioned:
            if character_id not in known:
                problems.add(
                    _join(path, "text"),
                    f"placeholder '{{{character_id}}}' names no character",
                    _known_hint(character_id, known),
                )
        listed = item.get("characters")
        ids: list[str] = []
        if listed is None:
            ids = [cid for cid in mentioned if cid in known]
        elif _check_type(listed, list, _join(path, "characters"), problems):
            for position, character_id in enumerate(listed):
                item_path = _join(_join(path, "characters"), position)
                if not _check_type(character_id, str, item_path, problems):
                    continue
                if character_id not in known:
                    problems.add(
                        item_path,
                        f"'{character_id}' is not a character of this story",
                        _known_hint(character_id, known),
                    )
                    continue
                if character_id in ids:
                    problems.add(item_path, f"'{character_id}' is listed twice", "list each character once")
                    continue
                ids.append(character_id)
                character = known[character_id]
                if character_id not in mentioned and not contains_word(text, character.class_word):
                    problems.add(
                        item_path,
                        f"character '{character_id}' is listed but the text neither writes '{{{character_id}}}' "
                        f"nor contains its class word '{character.class_word}'",
                        f"write '{{{character_id}}}' where {character.display_name} appears in the text",
                    )
            for character_id in mentioned:
                if character_id in known and character_id not in ids:
                    problems.add(
                        _join(path, "characters"),
                        f"the text mentions '{{{character_id}}}' but the list leaves it out",
                        f"add '{character_id}' to the list, or leave the list out to take it from the text",
                    )
        seed = item.get("seed")
        if seed is not None and _check_type(seed, int, _join(path, "seed"), problems) and seed < 0:
            problems.add(_join(path, "seed"), f"{seed} is negative", "use a seed of 0 or more")
        masks = _parse_masks(item.get("masks"), _join(path, "masks"), ids, problems, base)
        control = item.get("control_image")
        if control is not None and not isinstance(control, str):
            _check_type(control, str, _join(path, "control_image"), problems)
            control = None
        control_paths = _parse_paths(control, _join(path, "control_image"), problems, base)
        frames.append(
            Frame(
                text=text,
                characters=tuple(ids),
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else None,
                negative_prompt=_get_text(item, "negative_prompt", path, problems, required=False),
                context=_get_text(item, "context", path, problems, required=False),
                context_type=_get_text(item, "context_type", path, problems, required=False),
                masks=masks,
                caption=_get_text(item, "caption", path, problems, required=False),
                control_image=control_paths[0] if control_paths else None,
            )
        )
    return frames


def _parse_masks(value: Any, path: str, ids: list[str], problems: _Problems, base: Path) -> dict[str, Path]:
    if value is None:
        return {}
    if not _check_type(value, dict, path, problems):
        return {}
    masks: dict[str, Path] = {}
    for character_id, file_name in value.items():
        item_path = _join(path, str(character_id))
        if character_id not in ids:
            problems.add(
                item_path, f"'{character_id}' is not in this frame", "give masks only for the frame's characters"
            )
            continue
        found = _parse_paths(file_name, item_path, problems, base)
        if found:
            masks[str(character_id)] = found[0]
    return masks


def _known_hint(name: str, known: Mapping[str, Character]) -> str:
    if not known:
        return "declare it under 'characters:' first"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"did you mean '{close[0]}'? (characters: {', '.join(known)})"
    return f"use one of: {', '.join(known)}, or declare it under 'characters:'"


def story_to_dict(story: Story, *, relative_to: str | Path | None = None) -> dict[str, Any]:
    """The story in our file format (what ``parse_story`` reads back into an equal story)."""

    def path_text(path: Path) -> str:
        if relative_to is not None:
            try:
                return str(path.relative_to(Path(relative_to).resolve()))
            except ValueError:
                pass
        return str(path)

    data: dict[str, Any] = {"version": FORMAT_VERSION, "title": story.title}
    if story.style_suffix:
        data["style"] = {"prefix": story.style, "suffix": story.style_suffix}
    elif story.style:
        data["style"] = story.style
    data["characters"] = []
    for character in story.characters:
        entry: dict[str, Any] = {
            "id": character.id,
            "description": character.description,
            "class_word": character.class_word,
        }
        if character.name:
            entry["name"] = character.name
        if character.references:
            entry["references"] = [path_text(p) for p in character.references]
        data["characters"].append(entry)
    data["frames"] = []
    for frame in story.frames:
        entry = {"text": frame.text, "characters": list(frame.characters)}
        for key in ("seed", "negative_prompt", "context", "context_type", "caption"):
            if getattr(frame, key) is not None:
                entry[key] = getattr(frame, key)
        if frame.masks:
            entry["masks"] = {cid: path_text(p) for cid, p in frame.masks.items()}
        if frame.control_image is not None:
            entry["control_image"] = path_text(frame.control_image)
        data["frames"].append(entry)
    settings = {
        key: getattr(story.settings, key)
        for key in SETTINGS_KEYS
        if getattr(story.settings, key) != getattr(GenerationSettings(), key)
    }
    if settings:
        data["settings"] = settings
    if story.methods:
        data["methods"] = {name: dict(values) for name, values in story.methods.items()}
    return data

"""Read story files (YAML or JSON, ours or ConsiStory-Human) into a validated :class:`Story`.

Validation collects every problem before raising, and each problem names the field path
(``frames[3].characters[0]``), the line where the file has one, and the fix.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import functools
import json
import math
import os
import re
import reprlib
import stat
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storycast.errors import Problem, StoryError
from storycast.story.limits import MAX_BATCH, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from storycast.story.model import (
    KINDS,
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
IDENTITY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""What an identity library key may look like (keys are hex digests; a path or a URL is refused)."""
CHARACTER_KEYS = ("id", "description", "class_word", "name", "references", "identity", "kind")
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
SETTINGS_KEYS = (
    "width", "height", "steps", "guidance_scale", "seed", "negative_prompt", "batch_size", "seed_policy",
    "true_cfg_scale",
)  # fmt: skip

MAX_STORY_BYTES = 10 * 1024 * 1024
"""Largest story file read (10 MiB; a story of a thousand frames takes well under 1 MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings accepted (a story uses five levels; method settings a few more)."""
MAX_ALIASES = 1000
"""Most YAML aliases (``*name``) in one file."""
MAX_VALUES = 100_000
"""Most values (texts, numbers, lists, mappings) in one document, counting every alias as a copy of what it
names: this caps a "billion laughs" file, whose aliases would expand to more than memory holds."""
MAX_INT_DIGITS = 100
"""Longest whole number accepted anywhere in a story (seeds, the largest settings, have at most 20 digits)."""
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
"""Image formats a story may name (reference photos, masks, control images), by PIL's names (JPEG covers MPO)."""


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
        fix = f"write {wanted} here"
        if int in types and isinstance(value, str) and _BASE_60.match(value):
            fix += f" ('{value}' is text, not the YAML 1.1 base-60 number it once meant)"
        problems.add(path, f"must be {wanted}, got {type(value).__name__} {_describe(value)}", fix)
    return ok


_BASE_60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def _digits(number: int) -> int:
    """How many decimal digits ``number`` has, without ``str()`` (which refuses more than 4,300)."""
    number = abs(number)
    if number < 10:
        return 1
    digits = int(number.bit_length() * math.log10(2)) + 1
    return digits - 1 if 10 ** (digits - 1) > number else digits


def _show_int(number: int) -> str:
    """The number itself, or its digit count when it is too long to read (or to print at all)."""
    digits = _digits(number)
    return str(number) if digits <= 20 else f"a whole number of {digits:,} digits"


def _describe(value: Any) -> str:
    """A short, always printable ``repr`` for messages (huge numbers and texts are summarised)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _show_int(value)
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):  # a huge int deep inside a list
        return f"<{type(value).__name__}>"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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


class _Refused(Exception):
    """A document over one of the reading budgets (depth, aliases, values): one problem, at a line."""

    def __init__(self, line: int | None, message: str, fix: str):
        super().__init__(message)
        self.problem = Problem("", f"(line {line}) {message}" if line else message, fix)


_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_DEPTH_FIX = f"a story needs about five levels (frames, a frame, its masks); keep it under {MAX_DEPTH}"


@functools.cache
def _story_loader() -> type:
    """A ``yaml.SafeLoader`` with budgets, built on first use (``import yaml`` stays out of ``import storycast``).

    It reads ``1:30`` as text, not as the YAML 1.1 base-60 number 90; it refuses nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_ALIASES` aliases, a document of more than :data:`MAX_VALUES` values
    (aliases counted as copies) and recursive aliases while composing, before anything walks the document; and a
    value its constructor cannot build (``!!int abc``, the date ``2023-02-30``) is a YAML error at its line.
    """
    import yaml

    resolvers = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        resolvers[first] = [
            # The same patterns, minus any value with a ':' (the base-60 forms).
            (
                tag,
                re.compile(r"(?!.*:)" + pattern.pattern, pattern.flags) if tag in (_INT_TAG, _FLOAT_TAG) else pattern,
            )
            for tag, pattern in entries
        ]

    class StoryLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = resolvers

        def __init__(self, stream: str):
            super().__init__(stream)
            self.depth = 0
            self.aliases = 0
            self.values = 0
            self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise _Refused(line, f"more than {MAX_ALIASES} aliases (*name)", "write the values out")
                node = super().compose_node(parent, index)
                if id(node) not in self.sizes:
                    raise _Refused(
                        line, f"the alias *{event.anchor} refers to the list or mapping that holds it", "remove it"
                    )
                return node
            collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
            self.values += 1
            if self.values > MAX_VALUES:
                raise _Refused(line, f"the document holds more than {MAX_VALUES:,} values", "split it into stories")
            if collection:
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    raise _Refused(line, f"lists and mappings are nested more than {MAX_DEPTH} deep", _DEPTH_FIX)
            node = super().compose_node(parent, index)
            if not collection:
                self.sizes[id(node)] = (1, 0)
                return node
            self.depth -= 1
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            values, depth = 1, 1
            for child in children:
                child_values, child_depth = self.sizes[id(child)]
                values, depth = values + child_values, max(depth, child_depth + 1)
            if values > MAX_VALUES:
                raise _Refused(
                    line,
                    f"the aliases (*name) here expand to more than {MAX_VALUES:,} values",
                    "write the values out instead of repeating aliases of aliases",
                )
            if depth > MAX_DEPTH:
                raise _Refused(line, f"the aliases (*name) here nest more than {MAX_DEPTH} deep", _DEPTH_FIX)
            self.sizes[id(node)] = (values, depth)
            return node

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, TypeError, OverflowError) as err:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"cannot read {_describe(node.value)} as {node.tag.rsplit(':', 1)[-1]} ({err})",
                    node.start_mark,
                ) from None

    return StoryLoader


def _int_digits(text: str) -> int:
    """Digits of an integer literal ('-1_000' has 4; '0x' and '0b' prefixes do not count)."""
    text = text.lstrip("+-").replace("_", "")
    if text[:2].lower() in ("0x", "0b", "0o"):
        text = text[2:]
    return len(text)


def _check_nodes(root: Any) -> tuple[dict[str, int], list[Problem], list[Problem]]:
    """Field path -> line of a composed YAML document, and what composing lets through: whole numbers too long to
    read and base-60 numbers forced by a tag (the document cannot be built with them), then keys written twice
    (it can: YAML keeps the last). The composer has bounded the walk."""
    import yaml

    lines: dict[str, int] = {}
    problems: list[Problem] = []
    twice: list[Problem] = []  # last: they leave the document readable (YAML keeps the last value)

    def scalar_ok(node: Any, path: str) -> bool:
        line = node.start_mark.line + 1
        if node.tag == _INT_TAG and _int_digits(node.value) > MAX_INT_DIGITS:
            problems.append(
                Problem(
                    path,
                    f"(line {line}) a whole number of {_int_digits(node.value):,} digits is too long",
                    f"write at most {MAX_INT_DIGITS} digits (seeds, the largest numbers a story takes, have 20)",
                )
            )
            return False
        if node.tag in (_INT_TAG, _FLOAT_TAG) and ":" in node.value:
            problems.append(
                Problem(
                    path,
                    f"(line {line}) '{_short(node.value)}' is a base-60 number (YAML 1.1 reads 1:30 as 90)",
                    "write the number in the usual way, or quote it if it is text",
                )
            )
            return False
        return True

    def walk(node: Any, path: str) -> None:
        if path:
            lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            scalar_ok(node, path)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key_path = _join(path, _short(str(key_node.value), 200))
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG and scalar_ok(key_node, path):
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        twice.append(
                            Problem(
                                key_path,
                                f"(line {line}) the field '{_short(key_node.value)}' is written twice "
                                f"(first at line {seen[key]}); YAML would keep only the last",
                                "keep one of them",
                            )
                        )
                    seen.setdefault(key, line)
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, _join(path, index))

    walk(root, "")
    return lines, problems, twice


def _load_yaml(text: str, source: Path) -> tuple[Any, dict[str, int], list[Problem]]:
    """The document, its field lines, and the keys written twice (as problems reported with the document's
    others: YAML keeps the last, so the rest of the file is still checked)."""
    import yaml

    loader = _story_loader()(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}, []
        lines, unreadable, twice = _check_nodes(root)
        if unreadable:
            raise StoryError(unreadable + twice, source)
        return loader.construct_document(root), lines, twice
    except _Refused as refused:
        raise StoryError([refused.problem], source) from None
    except yaml.YAMLError as err:
        raise StoryError([yaml_syntax_problem(err)], source) from None
    finally:
        loader.dispose()


def yaml_syntax_problem(err: Any) -> Problem:
    """A YAML error as the line where the mistake is and what to do there: PyYAML notices a mistake where it can
    no longer read on (an unclosed quote at the end of the file), so the line it names is often not the one to
    edit; its context mark is."""
    import yaml

    problem = str(getattr(err, "problem", None) or err)
    context = str(getattr(err, "context", None) or "")
    mark, context_mark = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    opened = context_mark.line + 1 if context_mark is not None else line
    at = f"(line {line}) " if line is not None else ""
    if isinstance(err, yaml.constructor.ConstructorError):
        return Problem("", f"{at}invalid YAML: {problem}", "quote the value if it is text")
    if "quoted scalar" in context:
        return Problem(
            "",
            f"(line {opened}) a quote opened here is not closed (YAML read to line {line} looking for its end)",
            "close the quote on that line; inside double quotes write a quote as \\\", inside single quotes as ''",
        )
    if "mapping values are not allowed" in problem:
        return Problem(
            "",
            f"{at}a value holds ': ', which YAML reads as a second key",
            'put the value in quotes, e.g. text: "Mara says: hello"',
        )
    if "'\\t'" in problem:
        return Problem("", f"{at}a tab indents this line", "indent with spaces: YAML does not allow tabs")
    if "flow sequence" in context or "flow mapping" in context:
        bracket = "[" if "sequence" in context else "{"
        return Problem(
            "",
            f"(line {opened}) the '{bracket}' opened here is not closed before line {line}",
            f"close it with '{']' if bracket == '[' else '}'}', and separate its items with commas",
        )
    if "block" in context and ("expected <block end>" in problem or "expected key" in problem):
        return Problem(
            "",
            f"{at}this line is indented differently from the lines above it (from line {opened})",
            "line up the items of a list, or the fields of a mapping, in one column",
        )
    where = f" ({context} from line {opened})" if context else ""
    return Problem("", f"{at}invalid YAML: {problem}{where}", f"check line {line} and the line before it")


class _JsonObject(dict):
    """A JSON object that remembers the keys written twice in it (``json`` keeps the last silently)."""

    duplicates: list[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        out = cls(pairs)
        out.duplicates = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        return out


class _LongInt:
    """A JSON whole number too long to read; replaced by a problem before the document is used."""

    def __init__(self, digits: int):
        self.digits = digits


def _json_int(text: str) -> int | _LongInt:
    digits = _int_digits(text)
    return _LongInt(digits) if digits > MAX_INT_DIGITS else int(text)


_JSON_STRUCTURE = re.compile(r'[\[\]{}"]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _json_too_deep(text: str) -> int | None:
    """The line where a JSON text nests deeper than :data:`MAX_DEPTH` (``None``: it does not), found by
    scanning brackets outside strings, before ``json`` recurses into them."""
    depth, position = 0, 0
    while match := _JSON_STRUCTURE.search(text, position):
        char, position = match.group(), match.end()
        if char == '"':
            rest = _JSON_STRING_REST.match(text, position)
            if rest is None:
                return None  # an unclosed string: json says where
            position = rest.end()
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        else:
            depth -= 1
    return None


def _load_json(text: str, source: Path) -> tuple[Any, dict[str, int], list[Problem]]:
    line = _json_too_deep(text)
    if line is not None:
        problem = Problem("", f"(line {line}) lists and objects are nested more than {MAX_DEPTH} deep", _DEPTH_FIX)
        raise StoryError([problem], source)
    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.from_pairs, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise StoryError(
            [Problem("", f"(line {err.lineno}) invalid JSON: {err.msg}", "fix the syntax")], source
        ) from None
    found: list[tuple[str, str, str]] = []  # numbers that cannot be read: the document cannot be used
    twice: list[tuple[str, str, str]] = []  # keys written twice: it can (JSON keeps the last)
    count = 0

    def plain(value: Any, path: str) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise StoryError([Problem("", f"the document holds more than {MAX_VALUES:,} values", "split it")], source)
        if isinstance(value, _LongInt):
            found.append(
                (
                    path,
                    f"a whole number of {value.digits:,} digits is too long",
                    f"write at most {MAX_INT_DIGITS} digits (seeds, the largest numbers a story takes, have 20)",
                )
            )
            return None
        if isinstance(value, list):
            return [plain(item, _join(path, index)) for index, item in enumerate(value)]
        if isinstance(value, _JsonObject):
            count += len(value)  # keys count as values, as YAML's composer counts them
            for key in value.duplicates:
                twice.append(
                    (
                        _join(path, key),
                        f"the field '{_short(key)}' is written twice; JSON would keep only the last",
                        "keep one of them",
                    )
                )
            return {key: plain(item, _join(path, key)) for key, item in value.items()}
        return value

    data = plain(data, "")
    lines = _yaml_lines(text)
    problems = _Problems(lines)
    for path, message, fix in found + twice:
        problems.add(path, message, fix)
    if found:
        raise StoryError(problems.items, source)
    return data, lines, problems.items


def _yaml_lines(text: str) -> dict[str, int]:
    """Field path -> line for a JSON text, read as the YAML it nearly always also is ({} where it is not)."""
    import yaml

    loader = _story_loader()(text)
    try:
        root = loader.get_single_node()
        return _check_nodes(root)[0] if root is not None else {}
    except (yaml.YAMLError, _Refused):
        return {}
    finally:
        loader.dispose()


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM begins it
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
_ENCODING_FIX = "save the file as UTF-8 (any editor's 'Save as' offers it)"


def _file_kind_problem(path: Path, *, empty_ok: bool = False) -> tuple[str, str] | None:
    """What makes ``path`` unfit to read, found before opening it (``None``: nothing): the end of a sentence
    that starts with the file's name ("... is a folder"), and the fix.

    Refused: a path with a NUL byte or too long for the file system, a missing file, a folder, a device, pipe
    or socket, a file under /proc, /sys or /dev, and (unless ``empty_ok``) an empty file.
    """
    if "\0" in str(path):
        return "has a NUL byte in its path", "remove it from the path"
    try:
        info = os.stat(path)
        real = os.path.realpath(path)
    except (FileNotFoundError, NotADirectoryError):
        return "not found", "check the path"
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            return (
                f"has a path too long for the file system ({len(str(path)):,} characters)",
                "use a shorter path (each folder or file name at most 255 bytes)",
            )
        return f"cannot be read ({err.strerror})", "check the path and its permissions"
    except ValueError as err:  # a path the system cannot encode
        return f"has a path the system cannot use ({err})", "check the path"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file", "name a file inside it"
    if not stat.S_ISREG(info.st_mode):
        return "is a device, pipe or socket, not a regular file", "name a regular file"
    system = next((f for f in _SYSTEM_FOLDERS if real == f or real.startswith(f + "/")), None)
    if system is not None:
        return f"is a system file under {system}", "name a file of your own"
    if info.st_size == 0 and not empty_ok:
        return "is empty (0 bytes)", "name a file with something in it"
    return None


def _read_text(path: Path) -> str:
    """The file's text: UTF-8 with or without a BOM, or UTF-16/UTF-32 when a BOM says so."""
    problem = _file_kind_problem(path, empty_ok=True)  # an empty story is parse_story's to name
    if problem is not None:
        raise StoryError([Problem("", f"story file {problem[0]}", problem[1])], source=path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_STORY_BYTES + 1)
    except OSError as err:
        raise StoryError(
            [Problem("", f"story file cannot be read ({err.strerror})", "check its permissions")], path
        ) from None
    if len(raw) > MAX_STORY_BYTES:
        raise StoryError(
            [Problem("", f"the file is larger than {MAX_STORY_BYTES // 2**20} MiB", "split it into several stories")],
            path,
        )
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise StoryError(
            [
                Problem(
                    "",
                    f"(line {line}) is not {encoding.upper()} text (byte {err.start:,}: {err.reason})",
                    _ENCODING_FIX,
                )
            ],
            path,
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise StoryError(
            [
                Problem(
                    "",
                    f"(line {line}) holds NUL characters: a binary file, or UTF-16/UTF-32 without a BOM",
                    _ENCODING_FIX,
                )
            ],
            path,
        )
    text = text.removeprefix("\ufeff")
    problems = _unprintable_problems(text)
    if problems:
        raise StoryError(problems, path)
    return text


# YAML's printable set (YAML 1.1 §5.1, what PyYAML's reader accepts): tab, line breaks, the printable ASCII
# range, NEL, and the rest of Unicode but for the C1 controls, surrogates and the non-characters U+FFFE, U+FFFF.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MOJIBAKE = {"\x91": "‘", "\x92": "’", "\x93": "“", "\x94": "”", "\x96": "–", "\x97": "—", "\x85": "…"}
"""C1 controls that are Windows-1252 punctuation read as Latin-1 (text pasted from a word processor)."""


def _unprintable_problems(text: str, most: int = 5) -> list[Problem]:
    """One problem per line (up to ``most``) holding a control character that YAML refuses; the same for JSON
    files, so a story reads the same whichever format it is written in."""
    problems: list[Problem] = []
    seen: set[int] = set()
    for match in _UNPRINTABLE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if line in seen:
            continue
        seen.add(line)
        character = match.group()
        meant = _MOJIBAKE.get(character)
        fix = (
            f"replace it with {meant!r} (U+{ord(character):04X} is that character of Windows-1252 read as Latin-1)"
            if meant
            else "delete it or retype the text around it (a control character, often pasted with the text)"
        )
        problems.append(Problem("", f"(line {line}) holds the control character U+{ord(character):04X}", fix))
        if len(problems) == most:
            break
    return problems


def read_document(path: str | Path) -> tuple[Any, dict[str, int]]:
    """Read a YAML or JSON file into plain data and a field path -> line map.

    Every way a file can be unreadable is a :class:`StoryError` naming the file and, where there is one, the
    line: a missing or special file, one over :data:`MAX_STORY_BYTES`, text in no encoding we read, a syntax
    error, keys written twice, whole numbers over :data:`MAX_INT_DIGITS` digits, and documents over the
    budgets (:data:`MAX_DEPTH`, :data:`MAX_ALIASES`, :data:`MAX_VALUES`).
    """
    path = Path(path)
    data, lines, problems = _read_document(path)
    if problems:
        raise StoryError(problems, path)
    return data, lines


def _read_document(path: Path) -> tuple[Any, dict[str, int], list[Problem]]:
    """:func:`read_document`'s reading, with the problems that leave a document readable (keys written twice)
    returned rather than raised, so that a story's other problems are reported with them."""
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        return _load_json(text, path)
    return _load_yaml(text, path)


def load_story(path: str | Path, *, language: str = "en") -> Story:
    """Read and validate a story file. The format (ours, ConsiStory-Human, or a ViStory ``story.json``, read in
    ``language``: "en" or "ch") is detected from its content.
    Every problem is reported at once: keys written twice together with the rest of the story's."""
    from storycast.story import benchmark, vistory

    path = Path(path)
    data, lines, early = _read_document(path)
    try:
        if benchmark.is_consistory_human(data):
            story = benchmark.from_consistory_human(data, source=path)
        elif vistory.is_vistory(data):
            story = vistory.from_vistory(data, source=path, language=language)
        else:
            story = parse_story(data, source=path, base_dir=path.parent, lines=lines)
    except StoryError as err:
        if not early:
            raise
        raise StoryError(early + list(err.problems), path) from None
    if early:
        raise StoryError(early, path)
    return story


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
    _check_document(data, problems)
    if problems.items:
        raise StoryError(problems.items, source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        problems.add("", f"the file is {kind}, not a story", "write a mapping with 'title', 'characters' and 'frames'")
        raise StoryError(problems.items, source)
    problems.unknown_keys(data, TOP_KEYS, "")

    version = data.get("version", FORMAT_VERSION)
    if _check_type(version, int, "version", problems) and version != FORMAT_VERSION:
        problems.add(
            "version", f"format version {_show_int(version)} is not supported", f"use version: {FORMAT_VERSION}"
        )

    title = _get_text(data, "title", "", problems, required=False)
    if title is None:
        title = Path(source).stem if source else "untitled"
    style, style_suffix = _parse_style(data.get("style"), problems)
    characters = _parse_characters(data.get("characters"), problems, base)
    settings = _parse_settings(data.get("settings"), problems)
    methods = _parse_methods(data.get("methods"), problems)
    frames = _parse_frames(data.get("frames"), characters, problems, base)
    drawn_from_base = [i for i, frame in enumerate(frames) if frame.seed is None]
    if settings.seed_policy != "same" and drawn_from_base and settings.seed + drawn_from_base[-1] > MAX_SEED:
        problems.add(
            "settings.seed",
            f"frame {drawn_from_base[-1]} would draw from seed {settings.seed} + {drawn_from_base[-1]}, "
            f"beyond the largest seed {MAX_SEED}",
            f"use a seed of at most {MAX_SEED - drawn_from_base[-1]}, or seed_policy: same",
        )

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


def _check_document(data: Any, problems: _Problems) -> None:
    """Refuse, before anything walks it, a document nested deeper than :data:`MAX_DEPTH`, holding more than
    :data:`MAX_VALUES` values (shared or recursive parts counted as copies), or whole numbers (values or keys)
    longer than :data:`MAX_INT_DIGITS` digits. Files are checked as they are read; this guards documents built
    in code. The walk keeps its own stack, so no depth makes it recurse."""
    limit = 10**MAX_INT_DIGITS
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    values = 0
    while stack:
        value, path, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            problems.add("", f"the document holds more than {MAX_VALUES:,} values", "split it into several stories")
            return
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= limit:
            problems.add(
                path,
                f"{_show_int(value)} is too long",
                f"write at most {MAX_INT_DIGITS} digits (seeds, the largest numbers a story takes, have 20)",
            )
        elif isinstance(value, (Mapping, list, tuple)):
            if depth >= MAX_DEPTH:
                problems.add(path, f"lists and mappings are nested more than {MAX_DEPTH} deep", _DEPTH_FIX)
                return
            if isinstance(value, Mapping):
                children = []
                for key, item in value.items():
                    key_path = _join(path, _short(key, 200) if isinstance(key, str) else _describe(key))
                    children += [(key, key_path, depth + 1), (item, key_path, depth + 1)]
            else:
                children = [(item, _join(path, index), depth + 1) for index, item in enumerate(value)]
            stack.extend(reversed(children))  # popped in the document's order


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
        references = _parse_paths(item.get("references"), _join(path, "references"), problems, base, "reference photo")
        identity = _get_text(item, "identity", path, problems, required=False)
        if identity is not None and not IDENTITY_KEY_PATTERN.match(identity):
            problems.add(
                _join(path, "identity"),
                f"'{identity}' is not a key of the identity library",
                "copy a key from `storycast identities list` (letters, digits, '-' and '_')",
            )
            identity = None
        kind = _get_text(item, "kind", path, problems, required=False)
        if kind is not None and kind not in KINDS:
            problems.add(
                _join(path, "kind"), f"'{kind}' is not a kind of character", f"use one of: {', '.join(KINDS)}"
            )
            kind = None
        if None not in (character_id, description, class_word):
            characters.append(
                Character(character_id, description, class_word, name, tuple(references), identity, kind)
            )
    return characters


def _parse_paths(value: Any, path: str, problems: _Problems, base: Path, what: str) -> list[Path]:
    """The image files a field names (one path or a list), each checked as :func:`_image_problem` does."""
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
        name = _short(item.replace("\0", "\\0"))
        resolved = Path(item)
        if "\0" not in item and not resolved.is_absolute():
            try:
                resolved = (base / item).resolve()
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13); stat names it below
                resolved = base / item
        problem = _file_kind_problem(resolved) or _image_problem(resolved)
        if problem is None:
            paths.append(resolved)
            continue
        message, fix = problem
        if message == "not found":
            message, fix = (
                f"not found (looked at {_short(str(resolved), 200)})",
                "fix the path (relative paths start at the story file's folder)",
            )
        problems.add(item_path, f"{what} '{name}' {message}", fix)
    return paths


def _image_problem(path: Path) -> tuple[str, str] | None:
    """What makes a regular file unfit as an image (``None``: it is one), read from its header and checksums.

    PIL reads the header only; an image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression
    bomb) is refused there, before anything is decoded. ``verify()`` then checks a PNG's chunks and checksums
    to its end (a truncated or damaged file), and other formats are decoded (JPEG at 1/8 scale) to find theirs.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    fix = "name a PNG or JPEG image, or export this one again"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                kind, size = image.format, image.size
                image.verify()
            if kind != "PNG":
                with Image.open(path, formats=IMAGE_FORMATS) as image:
                    image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                    image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        return (
            f"is too large to open safely ({f'{int(pixels[1]):,} pixels' if pixels else err}): a possible "
            "decompression bomb",
            f"use an image of at most {Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)",
        )
    except UnidentifiedImageError:
        return f"is not an image in a format we read ({', '.join(IMAGE_FORMATS)})", fix
    except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error...) on bad data
        return f"is damaged or truncated ({type(err).__name__}: {_short(str(err))})", fix
    if 0 in size:
        return f"is an image of {size[0]}x{size[1]} pixels, with nothing in it", fix
    return None


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
                    f"{_show_int(value[key])} is not a positive multiple of 8",
                    "use e.g. 512, 768 or 1024",
                )
            elif not MIN_SIDE <= value[key] <= MAX_SIDE:
                problems.add(
                    _join("settings", key),
                    f"{_show_int(value[key])} pixels is out of range",
                    f"use a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, e.g. 512 or 1024",
                )
            else:
                out[key] = value[key]
    ranges = (
        ("steps", 1, MAX_STEPS, "steps (the papers use 30 to 50)"),
        ("batch_size", 1, MAX_BATCH, "frames per batch"),
        ("seed", 0, MAX_SEED, "(seeds are unsigned 64-bit numbers)"),
    )
    for key, minimum, maximum, unit in ranges:
        if key in value and _check_type(value[key], int, _join("settings", key), problems):
            if not minimum <= value[key] <= maximum:
                problems.add(
                    _join("settings", key),
                    f"{_show_int(value[key])} is out of range",
                    f"use a whole number between {minimum} and {maximum} {unit}",
                )
            else:
                out[key] = value[key]
    scales = (
        ("guidance_scale", 0, "use e.g. 5.0 (1.0 turns guidance off)"),
        (
            "true_cfg_scale",
            1,
            "use e.g. 4.0 with a negative prompt (FLUX's true classifier-free guidance; 1 turns it off)",
        ),
    )
    for key, minimum, fix in scales:
        if key in value and _check_type(value[key], float, _join("settings", key), problems):
            if not (math.isfinite(value[key]) and value[key] >= minimum):
                problems.add(
                    _join("settings", key),
                    f"{_describe(value[key])} is not a finite number of at least {minimum}",
                    fix,
                )
            else:
                out[key] = float(value[key])
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
        if seed is not None and _check_type(seed, int, _join(path, "seed"), problems):
            if not 0 <= seed <= MAX_SEED:
                problems.add(
                    _join(path, "seed"),
                    f"{_show_int(seed)} is out of range",
                    f"use a seed between 0 and {MAX_SEED} (seeds are unsigned 64-bit numbers)",
                )
                seed = None
        else:
            seed = None
        masks = _parse_masks(item.get("masks"), _join(path, "masks"), ids, problems, base)
        control = item.get("control_image")
        if control is not None and not isinstance(control, str):
            _check_type(control, str, _join(path, "control_image"), problems)
            control = None
        control_paths = _parse_paths(control, _join(path, "control_image"), problems, base, "control image")
        frames.append(
            Frame(
                text=text,
                characters=tuple(ids),
                seed=seed,
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
        found = _parse_paths(file_name, item_path, problems, base, "mask image")
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
        if character.identity:
            entry["identity"] = character.identity
        if character.kind:
            entry["kind"] = character.kind
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

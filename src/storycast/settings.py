"""Typed settings: nested frozen dataclasses, parsed once from a story file, the CLI or code.

Methods' settings are built on it, and so are the settings of the parts they share (adapters, masks) and of
the tools beside them (data building, training). A method's settings are a dataclass whose fields are values or groups (dataclasses of their own, one
per part: discovery, masks, injection...). Each leaf is declared with :func:`setting`, which holds its
help text, so ``storycast methods NAME`` prints exactly what the code documents. A leaf is addressed by
its dotted path (``discovery.candidates``), a nested mapping in a story file (``discovery: {candidates:
32}``), or its flat name (``discovery_candidates``): the names earlier storycast versions used keep
working. ``None`` means "automatic" where a field says so; :meth:`MethodSettings.resolve` fills those
in once, for a run's generation settings and model, before anything is drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin

from storycast.errors import SettingsError

if TYPE_CHECKING:
    from storycast.story.model import GenerationSettings

T = TypeVar("T", bound="MethodSettings")

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", *, flat: str | None = None, factory: Any = MISSING) -> Any:
    """A settings field with its help text (shown by ``storycast methods NAME``).

    Args:
        default: The default value.
        help: What it does, its unit and range, and the source of the default.
        flat: The leaf's flat name on the command line and in story files (default: its own name).
        factory: A default factory (for groups: ``factory=DiscoverySettings``).
    """
    metadata = {"help": help, "flat": flat}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ResolveContext:
    """What "automatic" settings are resolved against.

    Attributes:
        generation: The run's resolved generation settings (steps, size, guidance).
        family: The model family ("sdxl" or "sd15").
        tiny: The model is a tiny demo preset (budgets are scaled down so that demos run in seconds).
        references: A character some frame names has reference photos (a method may draw differently with them).
    """

    generation: GenerationSettings
    family: str
    tiny: bool = False
    references: bool = False


@dataclass(frozen=True)
class Leaf:
    """One settable value: its dotted path, flat name, type, default and help."""

    path: tuple[str, ...]
    flat: str
    annotation: Any
    default: Any
    help: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, MethodSettings)


@dataclass(frozen=True)
class MethodSettings:
    """Base class of every method's settings and of their groups.

    Subclasses are frozen dataclasses of :func:`setting` fields; ``validate`` checks values beyond their
    types and ``resolve`` fills the automatic ones.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the field and the fix when a value is out of range."""

    def resolve(self: T, context: ResolveContext) -> T:
        """These settings with every "automatic" value decided for ``context`` (idempotent). Groups are
        resolved with the same context; subclasses resolve their own leaves and call ``super``."""
        changes = {}
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            if _is_group(hints[item.name]):
                changes[item.name] = getattr(self, item.name).resolve(context)
        return dataclasses.replace(self, **changes) if changes else self

    # -- the tree of leaves ---------------------------------------------------------------------------

    @classmethod
    def leaves(cls, prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
        """Every settable value, groups expanded, in declaration order."""
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            annotation = hints[item.name]
            path = (*prefix, item.name)
            if _is_group(annotation):
                yield from annotation.leaves(path)
                continue
            default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
            yield Leaf(
                path, item.metadata.get("flat") or item.name, annotation, default, item.metadata.get("help", "")
            )

    @classmethod
    def names(cls) -> dict[str, Leaf]:
        """Every accepted name (dotted path and flat name) -> its leaf."""
        names: dict[str, Leaf] = {}
        for leaf in cls.leaves():
            for name in dict.fromkeys((leaf.dotted, leaf.flat)):
                if name in names and names[name].path != leaf.path:
                    raise TypeError(f"{cls.__name__}: '{name}' names both {names[name].dotted} and {leaf.dotted}")
                names[name] = leaf
        return names

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The flat names of every leaf (what ``--set`` takes)."""
        return tuple(leaf.flat for leaf in cls.leaves())

    # -- parsing --------------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "settings") -> T:
        """Settings from a mapping of names (flat, dotted, or nested mappings) to values, with clear errors.

        Args:
            data: Values to set; missing fields keep their defaults. String values (from the command line)
                are converted to the field's type.
            where: Prefix for messages, e.g. ``story.yaml: methods.identitystory`` or ``--set``.
        """
        return cls().updated(data, where=where)

    def updated(self: T, data: Mapping[str, Any] | None, *, where: str = "settings") -> T:
        """A copy with the values of ``data`` set (same names as :meth:`from_mapping`)."""
        names = self.names()
        values: dict[tuple[str, ...], Any] = {}
        for key, raw in _flatten(dict(data or {})):
            name = key.replace("-", "_")
            leaf = names.get(name)
            if leaf is None:
                choices = sorted({leaf.flat for leaf in names.values()} | {leaf.dotted for leaf in names.values()})
                close = difflib.get_close_matches(name, choices, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(choices) or 'none'}"
                raise SettingsError(f"{_at(where, key)}: unknown setting. Fix: {hint}")
            values[leaf.path] = convert_value(raw, leaf.annotation, _at(where, key))
        try:
            return _replace_paths(self, values)
        except SettingsError as err:
            raise SettingsError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (what the manifest records)."""
        return dataclasses.asdict(self)

    def flat_dict(self) -> dict[str, Any]:
        """Flat name -> value of every leaf."""
        return {leaf.flat: self.get(leaf.path) for leaf in self.leaves()}

    def get(self, path: tuple[str, ...] | str) -> Any:
        """The value at a dotted path or flat name."""
        if isinstance(path, str):
            path = self.names()[path].path
        value: Any = self
        for part in path:
            value = getattr(value, part)
        return value


def _at(where: str, key: str) -> str:
    """Where a value was given: ``story.yaml: methods.x.key`` in a file, ``--set key`` on the command line."""
    return f"{where} {key}" if where.startswith("--") else f"{where}.{key}"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of a possibly nested mapping; a group may be given as a mapping."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _replace_paths(settings: T, values: Mapping[tuple[str, ...], Any]) -> T:
    here = {path[0]: value for path, value in values.items() if len(path) == 1}
    below: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in values.items():
        if len(path) > 1:
            below.setdefault(path[0], {})[path[1:]] = value
    for name, nested in below.items():
        here[name] = _replace_paths(getattr(settings, name), nested)
    return dataclasses.replace(settings, **here) if here else settings


def describe_type(annotation: Any) -> str:
    """A short human name of a settings type: ``int | None``, ``one of a, b``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, get_args(annotation)))
    if origin in (tuple, list):
        return f"list of {describe_type((get_args(annotation) or (Any,))[0])}"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def convert_value(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` to ``annotation`` (bool, int, float, str, Literal, Optional, tuple)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and len(options) < len(get_args(annotation)):
            return None
        errors = []
        for option in options:
            try:
                return convert_value(value, option, where)
            except SettingsError as err:
                errors.append(str(err))
        raise SettingsError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = get_args(annotation)
        if value in allowed:
            return value
        by_text = {str(option): option for option in allowed}  # "1" from the command line for Literal[1, 2]
        if isinstance(value, str) and value in by_text:
            return by_text[value]
        raise SettingsError(f"{where}: {value!r} is not allowed. Fix: use one of {', '.join(map(str, allowed))}.")
    if origin in (tuple, list):
        (item_type, *_rest) = get_args(annotation) or (Any,)
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}.")
        return tuple(convert_value(v, item_type, where) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise SettingsError(f"{where}: expected true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a whole number, got {value!r}.")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise SettingsError(f"{where}: expected a number, got {value!r}.")
        if not math.isfinite(number):
            raise SettingsError(f"{where}: expected a finite number, got {value!r}.")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected text, got {value!r}.")
    return value


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None) -> None:
    """Raise :class:`SettingsError` unless ``low <= value <= high`` (None values and bounds are not checked)."""
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else (f"at least {low}" if low is not None else f"at most {high}")
        )
        raise SettingsError(f"{name} must be {bounds}, got {value}.")

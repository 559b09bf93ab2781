"""Typed method settings: dataclasses parsed once from a story file, the CLI or code."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

from storycast.errors import SettingsError

T = TypeVar("T", bound="MethodSettings")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """Base class of every method's settings.

    Subclasses are frozen dataclasses whose fields carry defaults and docstrings (in the class
    docstring's ``Attributes:`` section); ``validate`` checks values beyond their types.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the field and the fix when a value is out of range."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "settings") -> T:
        """Build settings from a mapping of field name -> value, with clear errors.

        Args:
            data: Values to set; missing fields keep their defaults. String values (from the
                command line) are converted to the field's type.
            where: Prefix for messages, e.g. ``story.yaml: methods.identitystory``.
        """
        data = dict(data or {})
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, raw in data.items():
            key = str(key).replace("-", "_")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(names) or 'none'}"
                raise SettingsError(f"{where}.{key}: unknown setting. Fix: {hint}")
            values[key] = convert_value(raw, hints[key], f"{where}.{key}")
        try:
            return cls(**values)
        except SettingsError as err:
            raise SettingsError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a number, got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected text, got {value!r}.")
    return value

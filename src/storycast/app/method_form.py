"""A method's settings as form fields, with the help texts ``storycast methods NAME`` prints.

The form shows a method's own settings (the leaves at the top of its settings dataclass) as fields; every
other setting (the groups: discovery, attention, masks...) is set as ``KEY=VALUE`` lines, as ``--set`` on the
command line. Values travel as overrides by flat name and are checked by the settings class itself when the run
is planned (:func:`storycast.runs.plan.plan_run`), so the form accepts exactly what the CLI does.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from storycast.errors import SettingsError
from storycast.settings import Leaf, MethodSettings, describe_type


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is shown.

    Attributes:
        name: Its flat name (what ``--set`` takes).
        kind: "checkbox", "dropdown", "number" or "text".
        label: ``name [type]``.
        help: The setting's help text (from its ``setting(help=...)``).
        value: The default as the field shows it.
        choices: The options of a dropdown.
        integer: A number field takes whole numbers only.
    """

    name: str
    kind: str
    label: str
    help: str
    value: Any
    choices: tuple[str, ...] = ()
    integer: bool = False


def _fixed_choices(annotation: Any) -> tuple[str, ...] | None:
    """The options of a setting with a fixed set of values (a Literal or true/false, either optional, "none" then
    first: automatic), as the CLI spells them; None for the others."""
    origin = get_origin(annotation)
    if origin is typing.Literal:
        return tuple(str(option) for option in get_args(annotation))
    if annotation is bool:
        return ("true", "false")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1 and len(options) < len(get_args(annotation)):
            inner = _fixed_choices(options[0])
            return ("none", *inner) if inner is not None else None
    return None


def field_spec(leaf: Leaf) -> FieldSpec:
    """The field for ``leaf``: a checkbox for true/false, a dropdown for a fixed set (with "none" first where none
    means automatic), a number field for a plain number, and text for the rest (lists, automatic numbers), holding
    the CLI's spelling."""
    annotation = leaf.annotation
    label = f"{leaf.flat} [{describe_type(annotation)}]"
    common = {"name": leaf.flat, "label": label, "help": leaf.help}
    if annotation is bool:
        return FieldSpec(kind="checkbox", value=bool(leaf.default), **common)
    choices = _fixed_choices(annotation)
    if choices is not None:
        return FieldSpec(kind="dropdown", value=text_value(leaf.default), choices=choices, **common)
    if annotation in (int, float):
        return FieldSpec(kind="number", value=leaf.default, integer=annotation is int, **common)
    return FieldSpec(kind="text", value=text_value(leaf.default), **common)


def text_value(value: Any) -> str:
    """A value as ``--set`` spells it: ``none``, ``true``, ``1,2,3``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(text_value(v) for v in value)
    return str(value)


def main_fields(settings_class: type[MethodSettings]) -> list[FieldSpec]:
    """The method's own settings (not those of its groups), in declaration order."""
    return [field_spec(leaf) for leaf in settings_class.leaves() if len(leaf.path) == 1]


def settings_help(settings_class: type[MethodSettings]) -> str:
    """Every setting of the method as Markdown: name, dotted path, type, default and help, grouped as
    ``storycast methods NAME`` prints them."""
    leaves = sorted(settings_class.leaves(), key=lambda leaf: len(leaf.path) > 1)
    if not leaves:
        return "No settings of its own: frames follow the generation settings."
    lines: list[str] = []
    group = None
    for leaf in leaves:
        if len(leaf.path) > 1 and leaf.path[0] != group:
            group = leaf.path[0]
            lines.append(f"\n**{group}**\n")
        where = f" ({leaf.dotted})" if leaf.dotted != leaf.flat else ""
        lines.append(f"- `{leaf.flat} = {leaf.default!r}` [{describe_type(leaf.annotation)}]{where}: {leaf.help}")
    return "\n".join(lines)


def overrides(settings_class: type[MethodSettings], fields: Mapping[str, Any], extra: str) -> dict[str, Any]:
    """The overrides the form holds: field values that differ from the defaults, then ``KEY=VALUE`` lines.

    Raises:
        SettingsError: A line that is not ``KEY=VALUE``, or a setting twice (in a field and a line).
    """
    defaults = {spec.name: spec.value for spec in main_fields(settings_class)}
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name in defaults and value is not None and value != defaults[name]:
            values[name] = value
    for number, line in enumerate((extra or "").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"more settings, line {number}: {line!r} is not KEY=VALUE. Fix: e.g. sa32=0.5")
        key = key.strip()
        if key in values:
            raise SettingsError(f"more settings, line {number}: {key} is set above too. Fix: set it once.")
        values[key] = value.strip()
    return values


def overrides_of_run(settings_class: type[MethodSettings], recorded: Mapping[str, Any]) -> tuple[dict, str]:
    """The field values and ``KEY=VALUE`` lines that draw a run's recorded (resolved) settings again.

    A run's manifest records its settings resolved; resolving is idempotent, so giving them back as overrides
    plans the same run (its frames are kept) instead of one of other settings.
    """
    try:
        settings = settings_class.from_mapping(recorded, where="the run's manifest")
    except SettingsError:
        return {}, ""
    main = {spec.name for spec in main_fields(settings_class)}
    defaults = settings_class().flat_dict()
    fields: dict[str, Any] = {}
    lines: list[str] = []
    for name, value in settings.flat_dict().items():
        if value == defaults.get(name):
            continue
        if name in main:
            kind = field_spec(settings_class.names()[name]).kind
            fields[name] = text_value(value) if kind in ("text", "dropdown") else value
        else:
            lines.append(f"{name}={text_value(value)}")
    return fields, "\n".join(lines)


def presets_for(families: tuple[str, ...] | list[str], current: str) -> tuple[list[str], str]:
    """The model presets offered for a method of ``families`` (those of its families: the FLUX presets for a method
    that runs on FLUX), and the one to select: ``current`` when it is offered, else the first offered."""
    from storycast.models.presets import BASE_PRESETS

    offered = [name for name, preset in BASE_PRESETS.items() if preset.family in families]
    return offered, current if current in offered or not offered else offered[0]

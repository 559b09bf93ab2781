"""Methods by name, imported on first use so optional dependencies stay optional.

Third-party packages can add methods through the ``storycast.methods`` entry-point group
(``name = "package.module:ClassName"``).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

from storycast.errors import UnknownMethodError

if TYPE_CHECKING:
    from storycast.methods.base import StoryMethod
    from storycast.settings import MethodSettings

ENTRY_POINT_GROUP = "storycast.methods"

_BUILTIN: dict[str, str] = {
    "vanilla": "storycast.methods.vanilla:VanillaMethod",
    "identitystory": "storycast.methods.identitystory.method:IdentityStoryMethod",
    "storydiffusion": "storycast.methods.storydiffusion.method:StoryDiffusionMethod",
    "storynizor": "storycast.methods.storynizor.method:StorynizorMethod",
    "photomaker": "storycast.methods.photomaker.method:PhotoMakerMethod",
    "1prompt1story": "storycast.methods.oneprompt.method:OnePromptOneStoryMethod",
    "consistory": "storycast.methods.consistory.method:ConsiStoryMethod",
    "characonsist": "storycast.methods.characonsist.method:CharaConsistMethod",
    "story-adapter": "storycast.methods.story_adapter.method:StoryAdapterMethod",
    "story2board": "storycast.methods.story2board.method:Story2BoardMethod",
}
_BUILTIN_SETTINGS: dict[str, str] = {
    "vanilla": "storycast.settings:MethodSettings",
    "identitystory": "storycast.methods.identitystory.settings:IdentityStorySettings",
    "storydiffusion": "storycast.methods.storydiffusion.settings:StoryDiffusionSettings",
    "storynizor": "storycast.methods.storynizor.settings:StorynizorSettings",
    "photomaker": "storycast.methods.photomaker.settings:PhotoMakerMethodSettings",
    "1prompt1story": "storycast.methods.oneprompt.settings:OnePromptSettings",
    "consistory": "storycast.methods.consistory.settings:ConsiStorySettings",
    "story-adapter": "storycast.methods.story_adapter.settings:StoryAdapterSettings",
    "characonsist": "storycast.methods.characonsist.settings:CharaConsistSettings",
    "story2board": "storycast.methods.story2board.settings:Story2BoardSettings",
}
"""Each built-in method's settings class, in a module that imports no torch, diffusers or transformers: what
``storycast validate`` checks a story's ``methods:`` against before anything heavy loads (a test holds it equal to
each method's ``settings_class``)."""
_REGISTERED: dict[str, str] = {}


def register_method(name: str, target: str) -> None:
    """Register ``"package.module:ClassName"`` under ``name`` (replacing an earlier registration)."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:ClassName', got {target!r}")
    _REGISTERED[name] = target


def _targets() -> dict[str, str]:
    targets = dict(_BUILTIN)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(entry.name, entry.value)
    targets.update(_REGISTERED)
    return targets


def list_methods() -> list[str]:
    return sorted(_targets())


def builtin_methods() -> list[str]:
    """The methods storycast itself ships (not those of installed plug-ins)."""
    return sorted(_BUILTIN)


def get_settings_class(name: str) -> type[MethodSettings]:
    """The settings class of the method registered under ``name``: for a built-in method without importing the
    method itself (no torch), for a plug-in through its class."""
    if name in _BUILTIN_SETTINGS and _targets().get(name) == _BUILTIN[name]:
        module_name, _, class_name = _BUILTIN_SETTINGS[name].partition(":")
        return getattr(importlib.import_module(module_name), class_name)
    return get_method(name).settings_class


def get_method(name: str) -> type[StoryMethod]:
    """The method class registered under ``name``."""
    targets = _targets()
    if name not in targets:
        import difflib

        close = difflib.get_close_matches(str(name), list(targets), n=1)
        hint = (
            f"did you mean '{close[0]}'? (methods: {', '.join(sorted(targets))})"
            if close
            else (f"use one of {', '.join(sorted(targets))}")
        )
        raise UnknownMethodError(f"unknown method '{name}'. Fix: {hint}.")
    module_name, _, class_name = targets[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)

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
    from storycast.methods.card import MethodAbout
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
    "pulid": "storycast.methods.pulid.method:PuLIDMethod",
}
_BUILTIN_ABOUT: dict[str, str] = {
    "vanilla": "storycast.methods.vanilla_about:ABOUT",
    "identitystory": "storycast.methods.identitystory.about:ABOUT",
    "storydiffusion": "storycast.methods.storydiffusion.about:ABOUT",
    "storynizor": "storycast.methods.storynizor.about:ABOUT",
    "photomaker": "storycast.methods.photomaker.about:ABOUT",
    "1prompt1story": "storycast.methods.oneprompt.about:ABOUT",
    "consistory": "storycast.methods.consistory.about:ABOUT",
    "story-adapter": "storycast.methods.story_adapter.about:ABOUT",
    "characonsist": "storycast.methods.characonsist.about:ABOUT",
    "story2board": "storycast.methods.story2board.about:ABOUT",
    "pulid": "storycast.methods.pulid.about:ABOUT",
}
"""Each built-in method's :class:`~storycast.methods.card.MethodAbout`, in a module that imports no torch,
diffusers or transformers: what ``storycast methods`` lists and ``storycast validate`` checks before anything heavy
loads (the method classes take theirs from the same objects)."""
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


def get_about(name: str) -> MethodAbout:
    """What is known of the method registered under ``name``: for a built-in method without importing it (no
    torch), for a plug-in from its class."""
    if name in _BUILTIN_ABOUT and _targets().get(name) == _BUILTIN.get(name):
        module_name, _, attribute = _BUILTIN_ABOUT[name].partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    from storycast.methods.card import MethodAbout

    return MethodAbout.of(get_method(name))


def get_settings_class(name: str) -> type[MethodSettings]:
    """The settings class of the method registered under ``name`` (see :func:`get_about`)."""
    return get_about(name).settings


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

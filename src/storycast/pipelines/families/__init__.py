"""Backbone families by name: each one implementation of :class:`~storycast.pipelines.families.base.Family`.

``get_family(name)`` gives the class (what loading and planning ask before a model exists); a family bound to a
loaded pipeline is ``get_family(name)(pipe, device)`` (what ``LoadedModels.backbone`` holds). The names are known
without importing torch or diffusers: a family's module is imported on first use, as methods are.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from storycast.pipelines.families.base import Family

SchedulerName = Literal["model", "ddim", "euler", "euler-ancestral", "dpm++", "pndm"]
"""Every sampler a method's ``scheduler`` setting may name, in one list; which of them a family runs is its
``scheduler_kinds`` ("model", the model's own, everywhere; the DDPM-family ones on the UNet families)."""

_FAMILIES: dict[str, str] = {
    "sdxl": "storycast.pipelines.families.sdxl:SDXL",
    "sd15": "storycast.pipelines.families.sd15:SD15",
    "flux": "storycast.pipelines.families.flux:Flux",
}
FAMILY_NAMES: tuple[str, ...] = tuple(_FAMILIES)
"""Every family storycast runs."""


class UnknownFamilyError(ValueError):
    """A family name that is not in :data:`FAMILY_NAMES`."""


def get_family(name: str) -> type[Family]:
    """The family called ``name``; an unknown name is an error naming the known ones."""
    if name not in _FAMILIES:
        raise UnknownFamilyError(f"model family '{name}' is not known. Fix: use one of {', '.join(FAMILY_NAMES)}.")
    module, _, attribute = _FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def all_families() -> list[type[Family]]:
    return [get_family(name) for name in FAMILY_NAMES]


def family_of_pipeline_class(class_names: Sequence[str]) -> str | None:
    """The family of a pipeline from its class name, or the names of its MRO (first match); None when none."""
    for class_name in class_names:
        for family in all_families():
            if class_name in family.pipeline_classes:
                return family.name
    return None


def check_scheduler(kind: str, family: str, *, setting: str = "scheduler") -> None:
    """Refuse a sampler the family does not run, naming the ones it does.

    Raises:
        ValueError: ``kind`` is not one of the family's ``scheduler_kinds``.
    """
    kinds = get_family(family).scheduler_kinds
    if kind not in kinds:
        raise ValueError(
            f"{setting}={kind!r} is not a sampler of {family} models. Fix: --set {setting}= one of {', '.join(kinds)}."
        )


def prompt_encoder(pipe: Any, family: str, device: Any) -> Any:
    """``encode(prompts, negative_prompts, *, width, height) -> GuidancePair`` of a loaded pipeline of ``family``,
    with the family's default guidance layout."""
    bound = get_family(family)(pipe, device)

    def encode(prompts: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int) -> Any:
        return bound.encode(prompts, negative_prompts, width=width, height=height)

    return encode

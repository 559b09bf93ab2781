"""What a run needs to know about its model before loading it: family, defaults, and what makes a run.

The run planner decides which frames are up to date before any weights are read, so everything a frame's
key depends on must be known from the :class:`~storycast.models.spec.ModelSpec` alone: the family (from
the preset, a folder's ``model_index.json``, a checkpoint's key names, or the Hub repository's
``model_index.json``, a small file), the resolved dtype, and the source. ``load_models`` records the same
fields in ``LoadedModels.info``, so a plan made from a spec and one made from the loaded models agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast.errors import SettingsError
from storycast.models.presets import FamilyDefaults, defaults_for
from storycast.models.spec import ModelSpec

IDENTITY_KEYS = ("source", "repo_id", "revision", "path", "family", "dtype", "seed", "loras")
"""The provenance fields that make a run: a frame drawn with other values of these is another frame."""
OPTIONAL_IDENTITY_KEYS = ("quantize", "cache")
"""Identity fields recorded only when set (a quantized denoiser or a step cache draws other pixels): a model without
them has the identity, and its runs the keys, they had before these fields existed. Offload, device placement and
compilation are not here: they move weights or run them faster; the pixels stay the same."""
UNSET = (None, "none")
"""Values of an optional identity field that leave it out."""


@dataclass(frozen=True)
class ModelFacts:
    """A model as the planner sees it.

    Attributes:
        family: "sdxl", "sd15" or "flux".
        defaults: Resolution, steps and guidance used where nothing else is set.
        tiny: A tiny random-weight preset (offline demos and tests): methods scale their search budgets
            down (see each method's settings) and keep the preset's few steps.
        random: A full-size random-weight preset (benchmarks).
        identity: The ``IDENTITY_KEYS`` values (None where they do not apply), and the
            ``OPTIONAL_IDENTITY_KEYS`` that are set.
        guidance: How the model is guided: "cfg" (classifier-free, the UNet families), "embedded" (a guidance
            value given to FLUX.1-dev) or "none" (FLUX.1-schnell).
    """

    family: str
    defaults: FamilyDefaults
    tiny: bool = False
    random: bool = False
    identity: Mapping[str, Any] = field(default_factory=dict)
    guidance: str = "cfg"


def identity_from_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields of a loaded model's provenance record."""
    identity = {key: info.get(key) for key in IDENTITY_KEYS}
    identity.update({key: info[key] for key in OPTIONAL_IDENTITY_KEYS if info.get(key) not in UNSET})
    return identity


def lora_records(spec: ModelSpec) -> list[dict[str, Any]] | None:
    """The LoRAs of a spec as the manifest records them (``lora_0``, ``lora_1``...), None without any."""
    if not spec.loras:
        return None
    return [
        {"name": f"lora_{index}", "source": lora.source, "scale": lora.scale, "weight_name": lora.weight_name}
        for index, lora in enumerate(spec.loras)
    ]


def model_facts(model: ModelSpec | Any) -> ModelFacts:
    """The facts of a spec without loading anything (the family of a Hub id that is not a preset may need its
    ``model_index.json``), or of loaded models (their ``facts``).

    Raises:
        MissingWeightsError: The source is neither a preset, a file, a folder nor a reachable Hub id.
        ModelLoadError: A folder or checkpoint of an architecture storycast does not run.
        SettingsError: A device that is not there (``--device cuda`` without CUDA).
    """
    from storycast.models.detect import detect
    from storycast.pipelines.families import get_family
    from storycast.utils.torch_utils import dtype_name, resolve_device, resolve_dtype

    if not isinstance(model, ModelSpec):
        return model.facts  # loaded models know their own facts
    spec = model
    if spec.aux_device:
        resolve_device(spec.aux_device)  # a device that is not there fails before anything loads
    kind, family, guidance, preset = detect(spec)
    identity: dict[str, Any] = dict.fromkeys(IDENTITY_KEYS)
    identity.update(source=spec.source, loras=lora_records(spec))
    if preset is not None:
        if kind == "hub":
            identity.update(repo_id=preset.repo_id, revision=spec.revision or "main")
        else:
            identity["seed"] = spec.seed
    elif kind in ("folder", "file"):
        identity["path"] = str(Path(spec.source).expanduser().resolve())
    else:
        identity.update(repo_id=spec.source, revision=spec.revision or "main")
    identity["family"] = family
    check_step_cache(spec, family)
    device = resolve_device(spec.device)
    identity["dtype"] = dtype_name(resolve_dtype(spec.dtype, device, auto=get_family(family).auto_dtype))
    identity.update({key: getattr(spec, key) for key in OPTIONAL_IDENTITY_KEYS if getattr(spec, key) not in UNSET})
    return ModelFacts(
        family=family,
        defaults=preset.defaults if preset is not None else defaults_for(family, guidance),
        tiny=bool(preset and preset.tiny),
        random=bool(preset and preset.random),
        identity=identity,
        guidance=guidance,
    )


def check_step_cache(spec: ModelSpec, family: str) -> None:
    """Refuse ``spec.cache`` on a family whose denoiser takes no step cache, before any weights are read."""
    from storycast.pipelines.families import get_family

    if spec.cache != "none" and not get_family(family).step_caches:
        raise SettingsError(
            f"cache '{spec.cache}': step caches hook the blocks of FLUX's transformer, but '{spec.source}' is a "
            f"{family} model. Fix: drop --cache (ModelSpec(cache='none'))."
        )

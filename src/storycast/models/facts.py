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
from typing import TYPE_CHECKING, Any

from storycast.models.presets import FAMILY_DEFAULTS, FamilyDefaults
from storycast.models.spec import ModelSpec

if TYPE_CHECKING:
    from storycast.models.loading import LoadedModels

IDENTITY_KEYS = ("source", "repo_id", "revision", "path", "family", "dtype", "seed", "loras")
"""The provenance fields that make a run: a frame drawn with other values of these is another frame."""


@dataclass(frozen=True)
class ModelFacts:
    """A model as the planner sees it.

    Attributes:
        family: "sdxl" or "sd15".
        defaults: Resolution, steps and guidance used where nothing else is set.
        tiny: A tiny random-weight preset (offline demos and tests): methods scale their search budgets
            down (see each method's settings) and keep the preset's few steps.
        random: A full-size random-weight preset (benchmarks).
        identity: The ``IDENTITY_KEYS`` values (None where they do not apply).
    """

    family: str
    defaults: FamilyDefaults
    tiny: bool = False
    random: bool = False
    identity: Mapping[str, Any] = field(default_factory=dict)


def identity_from_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields of a loaded model's provenance record."""
    return {key: info.get(key) for key in IDENTITY_KEYS}


def lora_records(spec: ModelSpec) -> list[dict[str, Any]] | None:
    """The LoRAs of a spec as the manifest records them (``lora_0``, ``lora_1``...), None without any."""
    if not spec.loras:
        return None
    return [
        {"name": f"lora_{index}", "source": lora.source, "scale": lora.scale, "weight_name": lora.weight_name}
        for index, lora in enumerate(spec.loras)
    ]


def _hub_family(repo_id: str, spec: ModelSpec) -> str:
    """The family of a Hub pipeline, from its ``model_index.json`` (cached, or fetched: a few hundred bytes)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from storycast.errors import MissingWeightsError
    from storycast.models.loading import family_of_index, missing_weights_message

    cached = try_to_load_from_cache(repo_id, "model_index.json", revision=spec.revision)
    if isinstance(cached, str):
        return family_of_index(Path(cached))
    try:
        path = hf_hub_download(
            repo_id, "model_index.json", revision=spec.revision, local_files_only=spec.local_files_only
        )
    except Exception as err:  # offline, missing repo, HTTP errors: all "not reachable" to the user
        from storycast.models.checkpoints import first_line

        raise MissingWeightsError(missing_weights_message(repo_id, first_line(err))) from None
    return family_of_index(Path(path))


def model_facts(model: ModelSpec | LoadedModels) -> ModelFacts:
    """The facts of loaded models, or of a spec without loading anything (the family of a Hub id that is
    not a preset may need its ``model_index.json``).

    Raises:
        MissingWeightsError: The source is neither a preset, a file, a folder nor a reachable Hub id.
        ModelLoadError: A folder or checkpoint of an architecture storycast does not run.
        SettingsError: A device that is not there (``--device cuda`` without CUDA).
    """
    from storycast.models.loading import LoadedModels, classify_source, family_of_checkpoint, family_of_index
    from storycast.utils.torch_utils import dtype_name, resolve_device, resolve_dtype

    spec_asked = model.spec if isinstance(model, LoadedModels) else model
    if getattr(spec_asked, "aux_device", None):
        resolve_device(spec_asked.aux_device)  # a device that is not there fails before anything loads
    if isinstance(model, LoadedModels):
        return ModelFacts(
            family=model.family,
            defaults=model.defaults,
            tiny=bool(model.info.get("tiny")),
            random=bool(model.info.get("random")),
            identity=identity_from_info(model.info),
        )
    spec = model
    kind, preset = classify_source(spec)
    identity: dict[str, Any] = dict.fromkeys(IDENTITY_KEYS)
    identity.update(source=spec.source, loras=lora_records(spec))
    if preset is not None:
        family = preset.family
        if kind == "hub":
            identity.update(repo_id=preset.repo_id, revision=spec.revision or "main")
        else:
            identity["seed"] = spec.seed
    elif kind == "folder":
        folder = Path(spec.source).expanduser().resolve()
        family = spec.family or family_of_index(folder / "model_index.json")
        identity["path"] = str(folder)
    elif kind == "file":
        path = Path(spec.source).expanduser().resolve()
        family = spec.family or family_of_checkpoint(path)
        identity["path"] = str(path)
    else:
        family = spec.family or _hub_family(spec.source, spec)
        identity.update(repo_id=spec.source, revision=spec.revision or "main")
    identity["family"] = family
    identity["dtype"] = dtype_name(resolve_dtype(spec.dtype, resolve_device(spec.device)))
    return ModelFacts(
        family=family,
        defaults=preset.defaults if preset is not None else FAMILY_DEFAULTS[family],
        tiny=bool(preset and preset.tiny),
        random=bool(preset and preset.random),
        identity=identity,
    )

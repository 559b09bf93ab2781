"""Load a base text-to-image pipeline from a preset, Hub id, local folder or single checkpoint file, or wrap one
the caller already has (:func:`models_from_pipeline`).

Errors are translated at this boundary: a user sees which weights are missing and how to point
at a local copy, never a traceback from inside huggingface_hub or diffusers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.models.presets import (
    BASE_PRESETS,
    FAMILY_CONFIG_REPO,
    FAMILY_DEFAULTS,
    BasePreset,
    FamilyDefaults,
)
from storycast.models.spec import ModelSpec
from storycast.utils.torch_utils import DTYPE_NAMES, dtype_name, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PIPELINE_FAMILY = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class LoadedModels:
    """A loaded base pipeline and what a run needs to know about it.

    Attributes:
        pipeline: The diffusers text-to-image pipeline (``StableDiffusionXLPipeline`` or
            ``StableDiffusionPipeline``); methods build theirs from its components.
        family: "sdxl" or "sd15".
        spec: The request this was loaded from.
        device: Where the models run.
        dtype: Weight dtype.
        defaults: Resolution, steps and guidance for this model.
        info: Provenance for the run manifest (source kind, id, revision, file hashes...).
        attachments: Adapters loaded onto these models (PhotoMaker, LoRAs...), by a key naming the adapter
            and its source, so that several method instances share one copy instead of loading it twice.
    """

    pipeline: Any
    family: str
    spec: ModelSpec
    device: str
    dtype: torch.dtype
    defaults: FamilyDefaults
    info: dict[str, Any] = field(default_factory=dict)
    attachments: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return bool(self.info.get("tiny"))

    @property
    def aux_device(self) -> str:
        """Where auxiliary models run (detectors, segmenters, image encoders): ``spec.aux_device``, else the
        models' own device."""
        return resolve_device(self.spec.aux_device) if self.spec.aux_device else self.device

    @property
    def facts(self) -> Any:
        """:class:`storycast.models.facts.ModelFacts` of these models."""
        from storycast.models.facts import model_facts

        return model_facts(self)


def missing_weights_message(what: str, reason: str = "", *, fix_flag: str = "--model") -> str:
    reason = f" ({reason})" if reason else ""
    return (
        f"the weights of '{what}' are not on this machine and could not be downloaded{reason}. Fix: download them "
        f"where the Hub is reachable (`hf download {what}`) and copy the Hugging Face cache here (or set HF_HOME "
        f"to it), or pass {fix_flag} /path/to/local/copy (a diffusers folder or a single .safetensors file)."
    )


def _short_reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def classify_source(spec: ModelSpec) -> tuple[str, BasePreset | None]:
    """Return (kind, preset) where kind is 'tiny', 'random', 'hub', 'folder' or 'file'."""
    preset = BASE_PRESETS.get(spec.source)
    if preset is not None:
        return ("tiny" if preset.tiny else "random" if preset.random else "hub"), preset
    path = Path(spec.source).expanduser()
    if path.is_dir():
        return "folder", None
    if path.is_file():
        return "file", None
    looks_like_path = spec.source.startswith((".", "/", "~")) or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if looks_like_path or spec.source.count("/") != 1:
        raise MissingWeightsError(
            f"model '{spec.source}' is neither a preset, a Hub id (owner/name) nor an existing file or folder. "
            f"Fix: check the path, or use a preset ({', '.join(BASE_PRESETS)})."
        )
    return "hub", None


def family_of_index(index: Path) -> str:
    """The family of a diffusers pipeline from its ``model_index.json``."""
    folder = index.parent
    if not index.is_file():
        raise ModelLoadError(
            f"'{folder}' has no model_index.json, so it is not a diffusers pipeline folder. Fix: point --model at "
            f"the folder written by save_pretrained (or a Hub snapshot), or at a single .safetensors checkpoint."
        )
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (KeyError, ValueError, TypeError) as err:
        raise ModelLoadError(f"'{index}' is not a valid model_index.json ({err}).") from None
    family = PIPELINE_FAMILY.get(class_name)
    if family is None:
        raise ModelLoadError(
            f"'{folder}' holds a {class_name}; storycast runs SDXL and SD 1.5 pipelines. "
            f"Fix: use a {' or '.join(sorted(PIPELINE_FAMILY))} folder."
        )
    return family


def family_of_folder(folder: Path) -> str:
    return family_of_index(folder / "model_index.json")


def family_of_checkpoint(path: Path) -> str:
    """Tell SDXL from SD 1.5 by the key names of an original-layout single-file checkpoint."""
    keys: list[str]
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    else:
        import torch

        state = torch.load(str(path), map_location="meta", weights_only=True)
        keys = list(state.get("state_dict", state).keys())
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    raise ModelLoadError(
        f"cannot tell which architecture '{path}' is (no SDXL 'conditioner.embedders.1.*' or SD 1.5 "
        f"'cond_stage_model.*' keys). Fix: pass the family explicitly (--family sdxl|sd15) or use a diffusers folder."
    )


def _pipeline_class(family: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _download(repo_id: str, spec: ModelSpec, variant: str | None) -> Path:
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(
            repo_id, revision=spec.revision, variant=variant, local_files_only=spec.local_files_only
        )
    except (OSError, ValueError) as err:
        raise MissingWeightsError(missing_weights_message(repo_id, _short_reason(err))) from None
    except Exception as err:  # huggingface_hub's HTTP errors do not share a base class with OSError everywhere
        if type(err).__module__.startswith(("huggingface_hub", "requests", "httpx")):
            raise MissingWeightsError(missing_weights_message(repo_id, _short_reason(err))) from None
        raise
    return Path(folder)


def _load_pipeline(kind: str, spec: ModelSpec, preset: BasePreset | None, dtype: Any) -> tuple[Any, str, dict]:
    from storycast.models.tiny import tiny_pipeline

    info: dict[str, Any] = {"source": spec.source, "kind": kind}
    if kind == "tiny":
        assert preset is not None
        info.update(tiny=True, seed=spec.seed)
        return cast_built_pipeline(tiny_pipeline(preset.family, seed=spec.seed), dtype), preset.family, info

    if kind == "random":
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from storycast.models.random_full import random_full_components

        assert preset is not None
        device = resolve_device(spec.device)
        components = random_full_components(preset.family, device=device, dtype=dtype, seed=spec.seed)
        cls = StableDiffusionXLPipeline if preset.family == "sdxl" else StableDiffusionPipeline
        info.update(random=True, seed=spec.seed)
        return cls(**components), preset.family, info

    if kind == "file":
        path = Path(spec.source).expanduser().resolve()
        family = spec.family or family_of_checkpoint(path)
        config = spec.config or FAMILY_CONFIG_REPO[family]
        info.update(path=str(path), config=config, size_bytes=path.stat().st_size)
        try:
            pipe = _pipeline_class(family).from_single_file(
                str(path), config=config, torch_dtype=dtype, local_files_only=spec.local_files_only
            )
        except (OSError, ValueError) as err:
            message = missing_weights_message(config, _short_reason(err), fix_flag="--model-config")
            raise MissingWeightsError(f"the configs for single-file checkpoint '{path.name}': {message}") from None
        return pipe, family, info

    if kind == "folder":
        folder = Path(spec.source).expanduser().resolve()
        info["path"] = str(folder)
    else:
        repo_id = preset.repo_id if preset is not None else spec.source
        assert repo_id is not None
        variant = spec.variant
        if variant is None and preset is not None and preset.fp16_variant and dtype_name(dtype) == "fp16":
            variant = "fp16"
        folder = _download(repo_id, spec, variant)
        info.update(repo_id=repo_id, revision=spec.revision or "main", variant=variant)
        if folder.parent.name == "snapshots":
            info["commit"] = folder.name
    family = spec.family or family_of_folder(folder)
    extra: dict[str, Any] = {}
    if family == "sd15":
        # Research runs need every frame; the checker's black frames would corrupt the metrics.
        extra.update(safety_checker=None, requires_safety_checker=False)
    variant = info.get("variant", spec.variant)
    try:
        pipe = _pipeline_class(family).from_pretrained(str(folder), torch_dtype=dtype, variant=variant, **extra)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load a {family} pipeline from '{folder}': {_short_reason(err)}. Fix: check that the folder "
            f"is complete (re-download it), or pass --family (ModelSpec(family=...) in Python) if the architecture was guessed wrong."
        ) from None
    return pipe, family, info


def cast_built_pipeline(pipe: Any, dtype: torch.dtype) -> Any:
    """Cast the models of a pipeline built in memory (the tiny presets) to ``dtype``, in place.

    Pipelines read from weights get ``torch_dtype`` at load time instead. Models already in ``dtype`` are left
    alone; the others are cast as torch modules, since diffusers' ``ModelMixin.to(dtype=...)`` warns that
    modules to keep in float32 get cast too, even for models that declare none (as the tiny ones).
    """
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and component.dtype != dtype:
            torch.nn.Module.to(component, dtype=dtype)
    return pipe


def place_pipeline(pipe: Any, device: str, offload: str, *, vae_tiling: bool, vae_slicing: bool) -> None:
    """Move or offload a pipeline and set VAE memory options (diffusers' own mechanisms)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()


def load_loras(pipe: Any, loras: tuple[Any, ...], *, local_files_only: bool = False) -> list[dict[str, Any]]:
    """Load LoRAs into the pipeline (through peft) and make them all active at their scales.

    They are named ``lora_0``, ``lora_1``... Methods that switch adapters of their own (PhotoMaker's)
    keep these active in every pass.
    """
    from storycast.utils.imports import require

    require("peft", extra="lora", purpose="LoRA weights")
    records = []
    for index, lora in enumerate(loras):
        name = f"lora_{index}"
        kwargs: dict[str, Any] = {"adapter_name": name, "local_files_only": local_files_only}
        if lora.weight_name:
            kwargs["weight_name"] = lora.weight_name
        try:
            pipe.load_lora_weights(lora.source, **kwargs)
        except OSError as err:
            raise MissingWeightsError(
                missing_weights_message(lora.source, _short_reason(err), fix_flag="--lora")
            ) from None
        except (ValueError, KeyError) as err:
            if "offline" in str(err).lower():  # diffusers' offline mode: the repo cannot be listed
                raise MissingWeightsError(
                    missing_weights_message(lora.source, _short_reason(err), fix_flag="--lora")
                ) from None
            raise ModelLoadError(
                f"'{lora.source}' could not be loaded as a LoRA for this {type(pipe).__name__} ({_short_reason(err)}). "
                f"Fix: check that it is a LoRA for this model family (diffusers, kohya or PEFT format)."
            ) from None
        records.append({"name": name, "source": lora.source, "scale": lora.scale, "weight_name": lora.weight_name})
    pipe.set_adapters([r["name"] for r in records], [r["scale"] for r in records])
    return records


def active_loras(models: LoadedModels) -> dict[str, float]:
    """Adapter name -> scale of the LoRAs loaded with the models."""
    return {r["name"]: r["scale"] for r in models.info.get("loras", [])}


def load_models(spec: ModelSpec) -> LoadedModels:
    """Load the base pipeline described by ``spec`` and place it on its device."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    kind, preset = classify_source(spec)
    pipe, family, info = _load_pipeline(kind, spec, preset, dtype)
    if spec.family is not None and spec.family != family:
        raise ModelLoadError(f"'{spec.source}' is a {family} model, but family '{spec.family}' was asked for.")
    if spec.offload != "none" and not device.startswith("cuda"):
        logger.warning("offload '%s' needs a CUDA device; running on %s without offload", spec.offload, device)
        offload = "none"
    else:
        offload = spec.offload
    place_pipeline(pipe, device, offload, vae_tiling=spec.vae_tiling, vae_slicing=spec.vae_slicing)
    if spec.loras:
        info["loras"] = load_loras(pipe, spec.loras, local_files_only=spec.local_files_only)
    if spec.channels_last or spec.compile:
        from storycast.models.speed import apply_speed_options

        info["speed"] = apply_speed_options(pipe, device, channels_last=spec.channels_last, compile=spec.compile)
    pipe.set_progress_bar_config(disable=True)
    defaults = preset.defaults if preset is not None else FAMILY_DEFAULTS[family]
    info.update(family=family, dtype=dtype_name(dtype), device=device, offload=offload)
    return LoadedModels(
        pipeline=pipe, family=family, spec=spec, device=device, dtype=dtype, defaults=defaults, info=info
    )


def models_from_pipeline(
    pipeline: Any, *, source: str | None = None, device: str | None = None, local_files_only: bool = False
) -> LoadedModels:
    """Use a diffusers pipeline you already have (built, loaded and placed as you like) for storycast.

    The family comes from the pipeline's class, its dtype and device from the pipeline; nothing is moved, cast
    or loaded (an img2img pipeline is rewrapped as text-to-image over the same models). Its progress bar is
    switched off: storycast reports progress through callbacks. Wrap a pipeline once and pass the result to
    every call, so that the adapters methods attach (PhotoMaker...) are loaded once. LoRAs already in the
    pipeline are unknown to storycast, and a method that switches adapters of its own (PhotoMaker's) leaves
    them off; give LoRAs to :func:`load_models` (``ModelSpec.loras``) to keep them on in every pass.

    Args:
        pipeline: A ``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline`` (a subclass, or their img2img
            pipelines).
        source: The model's name in manifests and run keys (default: the pipeline's ``name_or_path``, else
            "pipeline"). A frame in a run folder is kept on a rerun when source, family and dtype match, so
            name a pipeline whose weights you changed.
        device: Where the models run (default: the pipeline's device); give it for a pipeline with CPU offload,
            whose weights wait on the CPU.
        local_files_only: Adapters that methods load (PhotoMaker...) come from the local cache only.

    Raises:
        ModelLoadError: Not an SDXL or SD 1.5 pipeline.
    """
    classes = [cls.__name__ for cls in type(pipeline).__mro__]
    family = next((PIPELINE_FAMILY[name] for name in classes if name in PIPELINE_FAMILY), None)
    if family is None:
        raise ModelLoadError(
            f"a {type(pipeline).__name__} is not a pipeline storycast runs. Fix: pass a "
            f"{' or '.join(sorted(PIPELINE_FAMILY))} (or load one with load_models(ModelSpec(...)))."
        )
    text_to_image = _pipeline_class(family)
    if not isinstance(pipeline, text_to_image):
        pipeline = text_to_image.from_pipe(pipeline)  # the same model objects, no copy
    device = resolve_device(device) if device is not None else str(pipeline.device)
    dtype = pipeline.dtype
    name = source or str(pipeline.name_or_path or "pipeline")  # a Path when loaded from one
    spec = ModelSpec(
        source=name,
        family=family,
        dtype=dtype_name(dtype) if dtype_name(dtype) in DTYPE_NAMES else "auto",
        device=device,
        local_files_only=local_files_only,
    )
    pipeline.set_progress_bar_config(disable=True)
    info = {
        "source": name,
        "kind": "pipeline",
        "pipeline_class": classes[0],
        "family": family,
        "dtype": dtype_name(dtype),
        "device": device,
    }
    return LoadedModels(
        pipeline=pipeline,
        family=family,
        spec=spec,
        device=device,
        dtype=dtype,
        defaults=FAMILY_DEFAULTS[family],
        info=info,
    )

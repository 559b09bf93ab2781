"""Load a base text-to-image pipeline from a preset, Hub id, local folder or single checkpoint file, or wrap one
the caller already has (:func:`models_from_pipeline`).

Errors are translated at this boundary: a user sees which weights are missing and how to point
at a local copy, never a traceback from inside huggingface_hub or diffusers. What a source is (its kind, family
and guidance) is decided by :mod:`storycast.models.detect` from small files; each family's pipeline class comes
from its implementation (:mod:`storycast.pipelines.families`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.models.detect import (
    check_single_file_configs,
    detect,
    missing_weights_message,
    pipeline_kwargs,
    short_reason,
)
from storycast.models.facts import ModelFacts, check_step_cache, identity_from_info
from storycast.models.presets import BasePreset, FamilyDefaults, config_repo_for, defaults_for
from storycast.models.quantization import check_quantize, quantize_denoiser
from storycast.models.spec import ModelSpec
from storycast.utils.torch_utils import DTYPE_NAMES, dtype_name, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

    from storycast.pipelines.families.base import Family

logger = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    """A loaded base pipeline and what a run needs to know about it.

    Attributes:
        pipeline: The diffusers text-to-image pipeline of the family (``StableDiffusionXLPipeline``,
            ``StableDiffusionPipeline``, ``FluxPipeline``); methods reach it through :attr:`backbone`.
        family: "sdxl", "sd15" or "flux".
        spec: The request this was loaded from.
        device: Where the models run.
        dtype: Weight dtype.
        defaults: Resolution, steps and guidance for this model.
        info: Provenance for the run manifest (source kind, id, revision, file hashes...).
        attachments: Adapters loaded onto these models (PhotoMaker, LoRAs...), by a key naming the adapter
            and its source, so that several method instances share one copy instead of loading it twice.
        guidance: How the model is guided: "cfg", "embedded" (FLUX.1-dev) or "none" (FLUX.1-schnell).
    """

    pipeline: Any
    family: str
    spec: ModelSpec
    device: str
    dtype: torch.dtype
    defaults: FamilyDefaults
    info: dict[str, Any] = field(default_factory=dict)
    attachments: dict[tuple[str, str], Any] = field(default_factory=dict)
    guidance: str = "cfg"

    @property
    def is_tiny(self) -> bool:
        return bool(self.info.get("tiny"))

    @property
    def aux_device(self) -> str:
        """Where auxiliary models run (detectors, segmenters, image encoders): ``spec.aux_device``, else the
        models' own device."""
        return resolve_device(self.spec.aux_device) if self.spec.aux_device else self.device

    @functools.cached_property
    def backbone(self) -> Family:
        """The pipeline seen through its family's protocol: what methods encode, sample and decode with."""
        from storycast.pipelines.families import get_family
        from storycast.pipelines.step_cache import StepCache

        backbone = get_family(self.family)(self.pipeline, self.device)
        backbone.step_cache = StepCache.parse(self.spec.cache)
        return backbone

    @property
    def facts(self) -> ModelFacts:
        """What the planner knows of these models (the same fields a plan made from their spec has)."""
        return ModelFacts(
            family=self.family,
            defaults=self.defaults,
            tiny=bool(self.info.get("tiny")),
            random=bool(self.info.get("random")),
            identity=identity_from_info(self.info),
            guidance=self.guidance,
        )


def _download(repo_id: str, spec: ModelSpec, variant: str | None) -> Path:
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(
            repo_id, revision=spec.revision, variant=variant, local_files_only=spec.local_files_only
        )
    except (OSError, ValueError) as err:
        raise MissingWeightsError(missing_weights_message(repo_id, short_reason(err))) from None
    except Exception as err:  # huggingface_hub's HTTP errors do not share a base class with OSError everywhere
        if type(err).__module__.startswith(("huggingface_hub", "requests", "httpx")):
            raise MissingWeightsError(missing_weights_message(repo_id, short_reason(err))) from None
        raise
    return Path(folder)


def _pipeline_class(family: str) -> Any:
    from storycast.pipelines.families import get_family

    return get_family(family).pipeline_class()


def _built_pipeline(kind: str, spec: ModelSpec, preset: BasePreset, dtype: Any) -> Any:
    """A tiny or full-size random-weight pipeline of the preset's family, built in code."""
    device = resolve_device(spec.device)
    if preset.family == "flux":
        from storycast.models.flux_components import random_flux_components, tiny_flux_components

        embedded = preset.guidance == "embedded"
        if kind == "tiny":
            components = tiny_flux_components(seed=spec.seed, guidance_embeds=embedded)
            return cast_built_pipeline(_pipeline_class("flux")(**components), dtype)
        components = random_flux_components(device=device, dtype=dtype, seed=spec.seed, guidance_embeds=embedded)
        return _pipeline_class("flux")(**components)
    if kind == "tiny":
        from storycast.models.tiny import tiny_pipeline

        return cast_built_pipeline(tiny_pipeline(preset.family, seed=spec.seed), dtype)
    from storycast.models.random_full import random_full_components

    components = random_full_components(preset.family, device=device, dtype=dtype, seed=spec.seed)
    return _pipeline_class(preset.family)(**components)


def _load_single_file(path: Path, family: str, guidance: str, spec: ModelSpec, dtype: Any, info: dict) -> Any:
    config = spec.config or config_repo_for(family, guidance)
    info.update(path=str(path), config=config, size_bytes=path.stat().st_size)
    check_single_file_configs(config, family, spec)
    try:
        if family == "flux":
            # A FLUX file holds the transformer alone (Black Forest Labs' layout): the rest of the pipeline comes
            # from the configs' repository or folder.
            from diffusers import FluxTransformer2DModel

            transformer = FluxTransformer2DModel.from_single_file(
                str(path), config=config, subfolder="transformer", torch_dtype=dtype,
                local_files_only=spec.local_files_only,
            )  # fmt: skip
            return _pipeline_class(family).from_pretrained(
                config, transformer=transformer, torch_dtype=dtype, local_files_only=spec.local_files_only
            )
        return _pipeline_class(family).from_single_file(
            str(path), config=config, torch_dtype=dtype, local_files_only=spec.local_files_only
        )
    except (OSError, ValueError) as err:
        message = missing_weights_message(config, short_reason(err), fix_flag="--model-config")
        raise MissingWeightsError(f"the configs for single-file checkpoint '{path.name}': {message}") from None


def _load_pipeline(
    kind: str, family: str, guidance: str, spec: ModelSpec, preset: BasePreset | None, dtype: Any
) -> tuple[Any, dict]:
    info: dict[str, Any] = {"source": spec.source, "kind": kind}
    if kind in ("tiny", "random"):
        assert preset is not None
        info.update({kind: True, "seed": spec.seed})
        return _built_pipeline(kind, spec, preset, dtype), info
    if kind == "file":
        path = Path(spec.source).expanduser().resolve()
        return _load_single_file(path, family, guidance, spec, dtype, info), info
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
    variant = info.get("variant", spec.variant)
    try:
        pipe = _pipeline_class(family).from_pretrained(
            str(folder), torch_dtype=dtype, variant=variant, **pipeline_kwargs(family)
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load a {family} pipeline from '{folder}': {short_reason(err)}. Fix: check that the folder "
            f"is complete (re-download it), or pass --family (ModelSpec(family=...) in Python) if the architecture was guessed wrong."
        ) from None
    return pipe, info


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


GROUP_OFFLOAD_BLOCKS = 1
"""Blocks per group of offload "group": one block of the denoiser on the GPU at a time, the next one prefetched on a
CUDA stream (diffusers takes one block per group whenever it uses streams)."""


def place_pipeline(
    pipe: Any,
    device: str,
    offload: str,
    *,
    vae_tiling: bool,
    vae_slicing: bool,
    text_encoder_device: str | None = None,
) -> None:
    """Move or offload a pipeline and set VAE memory options (diffusers' own mechanisms); with
    ``text_encoder_device`` (offload "none" or "group"), the text encoders go there instead, never to ``device``
    first."""
    encoders = text_encoder_names(pipe) if text_encoder_device else []
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        group_offload(pipe, device, skip=encoders)
    elif encoders:
        move_components(pipe, device, skip=encoders)
    else:
        pipe.to(device)
    if text_encoder_device:
        move_components(pipe, text_encoder_device, only=encoders)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()


def text_encoder_names(pipe: Any) -> list[str]:
    """The pipeline's text encoders (``text_encoder``, ``text_encoder_2``...)."""
    return [name for name, part in pipe.components.items() if name.startswith("text_encoder") and part is not None]


def move_components(pipe: Any, device: str, *, skip: Sequence[str] = (), only: Sequence[str] | None = None) -> None:
    """Move the pipeline's models (those in ``only``, else all but those in ``skip``) to ``device``."""
    import torch

    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and name not in skip and (only is None or name in only):
            part.to(device)


def group_offload(pipe: Any, device: str, *, skip: Sequence[str] = ()) -> None:
    """Block-level group offloading (diffusers' ``apply_group_offloading``) of the denoiser and the text encoders
    (but those in ``skip``, left where they are): their weights wait in CPU memory and come to ``device`` a group
    at a time as they run. The denoiser's blocks come one per group (``GROUP_OFFLOAD_BLOCKS``), the next one copied
    on a CUDA stream meanwhile; a text encoder, whose blocks are not a top-level list, comes whole while it encodes
    and leaves after. The VAE (decoded through ``vae.decode``, which the offloading hooks do not see) is moved to
    ``device``."""
    import torch

    options = {
        "onload_device": torch.device(device),
        "offload_device": torch.device("cpu"),
        "offload_type": "block_level",
        "num_blocks_per_group": GROUP_OFFLOAD_BLOCKS,
        "use_stream": device.startswith("cuda"),
    }
    for name, part in pipe.components.items():
        if not isinstance(part, torch.nn.Module) or name in skip:
            continue
        if name == "vae":
            part.to(device)
        elif hasattr(part, "enable_group_offload"):  # diffusers' models
            part.to("cpu")
            part.enable_group_offload(**options)
        else:  # transformers' text encoders
            from diffusers.hooks import apply_group_offloading

            part.to("cpu")
            apply_group_offloading(part, **options)


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
                missing_weights_message(lora.source, short_reason(err), fix_flag="--lora")
            ) from None
        except (ValueError, KeyError) as err:
            if "offline" in str(err).lower():  # diffusers' offline mode: the repo cannot be listed
                raise MissingWeightsError(
                    missing_weights_message(lora.source, short_reason(err), fix_flag="--lora")
                ) from None
            raise ModelLoadError(
                f"'{lora.source}' could not be loaded as a LoRA for this {type(pipe).__name__} ({short_reason(err)}). "
                f"Fix: check that it is a LoRA for this model family (diffusers, kohya or PEFT format)."
            ) from None
        records.append({"name": name, "source": lora.source, "scale": lora.scale, "weight_name": lora.weight_name})
    pipe.set_adapters([r["name"] for r in records], [r["scale"] for r in records])
    return records


def active_loras(models: LoadedModels) -> dict[str, float]:
    """Adapter name -> scale of the LoRAs loaded with the models."""
    return {r["name"]: r["scale"] for r in models.info.get("loras", [])}


def _text_encoder_device(spec: ModelSpec, family: str) -> str | None:
    """``spec.text_encoder_device`` resolved (None when unset), refused for a family it does not apply to."""
    if spec.text_encoder_device is None:
        return None
    if family != "flux":
        raise SettingsError(
            f"text_encoder_device places FLUX's text encoders, but '{spec.source}' is a {family} model. Fix: drop "
            f"--text-encoder-device (--offload model moves the text encoders off the GPU once prompts are encoded)."
        )
    return resolve_device(spec.text_encoder_device)


def load_models(spec: ModelSpec) -> LoadedModels:
    """Load the base pipeline described by ``spec``, quantize its denoiser (``spec.quantize``) and place it on its
    device (``spec.offload``, ``spec.text_encoder_device``).

    Raises:
        SettingsError: A device that is not there, a quantization this hardware cannot run, or a text encoder
            device for a model that is not FLUX; all before any weights are read.
        ExtraNotInstalledError: ``spec.quantize`` without torchao (the ``quant`` extra).
        MissingWeightsError, ModelLoadError: Weights that are not there or not of a model storycast runs.
    """
    from storycast.pipelines.families import get_family

    device = resolve_device(spec.device)
    kind, family, guidance, preset = detect(spec)
    if spec.family is not None and spec.family != family:
        raise ModelLoadError(f"'{spec.source}' is a {family} model, but family '{spec.family}' was asked for.")
    dtype = resolve_dtype(spec.dtype, device, auto=get_family(family).auto_dtype)
    text_encoder_device = _text_encoder_device(spec, family)
    check_step_cache(spec, family)
    check_quantize(spec.quantize, device, dtype)  # before any weights are read
    pipe, info = _load_pipeline(kind, family, guidance, spec, preset, dtype)
    if spec.offload != "none" and not device.startswith("cuda"):
        logger.warning("offload '%s' needs a CUDA device; running on %s without offload", spec.offload, device)
        offload = "none"
    else:
        offload = spec.offload
    if spec.quantize != "none":
        denoiser = getattr(pipe, get_family(family).denoiser_name)
        info["quantization"] = quantize_denoiser(denoiser, spec.quantize, device)
    place_pipeline(
        pipe,
        device,
        offload,
        vae_tiling=spec.vae_tiling,
        vae_slicing=spec.vae_slicing,
        text_encoder_device=text_encoder_device,
    )
    if spec.loras:
        info["loras"] = load_loras(pipe, spec.loras, local_files_only=spec.local_files_only)
    if spec.channels_last or spec.compile:
        from storycast.models.speed import apply_speed_options

        denoiser = getattr(pipe, get_family(family).denoiser_name)
        info["speed"] = apply_speed_options(denoiser, device, channels_last=spec.channels_last, compile=spec.compile)
    pipe.set_progress_bar_config(disable=True)
    defaults = preset.defaults if preset is not None else defaults_for(family, guidance)
    info.update(
        family=family,
        dtype=dtype_name(dtype),
        device=device,
        offload=offload,
        text_encoder_device=text_encoder_device,
        quantize=spec.quantize,
        cache=spec.cache,
    )
    return LoadedModels(
        pipeline=pipe,
        family=family,
        spec=spec,
        device=device,
        dtype=dtype,
        defaults=defaults,
        info=info,
        guidance=guidance,
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
        pipeline: A ``StableDiffusionXLPipeline``, ``StableDiffusionPipeline`` or ``FluxPipeline`` (a subclass, or
            their img2img pipelines).
        source: The model's name in manifests and run keys (default: the pipeline's ``name_or_path``, else
            "pipeline"). A frame in a run folder is kept on a rerun when source, family and dtype match, so
            name a pipeline whose weights you changed.
        device: Where the models run (default: the pipeline's device); give it for a pipeline with CPU offload,
            whose weights wait on the CPU.
        local_files_only: Adapters that methods load (PhotoMaker...) come from the local cache only.

    Raises:
        ModelLoadError: Not a pipeline of a family storycast runs.
    """
    from storycast.pipelines.families import all_families, family_of_pipeline_class

    classes = [cls.__name__ for cls in type(pipeline).__mro__]
    family = family_of_pipeline_class(classes)
    if family is None:
        known = sorted(family.pipeline_class_name for family in all_families())
        raise ModelLoadError(
            f"a {type(pipeline).__name__} is not a pipeline storycast runs. Fix: pass a "
            f"{' or '.join(known)} (or load one with load_models(ModelSpec(...)))."
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
    guidance = "cfg"
    if family == "flux":
        guidance = "embedded" if pipeline.transformer.config.guidance_embeds else "none"
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
        defaults=defaults_for(family, guidance),
        info=info,
        guidance=guidance,
    )

"""What a model source is, before anything is loaded: a preset, a Hub id, a folder or a single file, its family,
and how it is guided.

The run planner needs the family and guidance of a model before reading any weights (a frame's key depends on
them, and a method that does not run on the family must say so at once), so they are read from small files: a
preset's own record, a folder's ``model_index.json`` (and a FLUX transformer's ``config.json``), a checkpoint's
tensor names, or those files of a Hub repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.models.presets import BASE_PRESETS, FAMILIES, BasePreset
from storycast.models.spec import ModelSpec

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
FLUX_TEXT_PARTS = ("text_encoder_2", "tokenizer_2")
"""The T5 encoder and its tokenizer: what a FLUX pipeline folder needs beside its transformer and VAE."""


def missing_weights_message(what: str, reason: str = "", *, fix_flag: str = "--model") -> str:
    reason = f" ({reason})" if reason else ""
    gated = (
        " FLUX.1-dev is gated: accept its licence on the Hub page and log in (`hf auth login`) first."
        if "FLUX.1-dev" in what
        else ""
    )
    return (
        f"the weights of '{what}' are not on this machine and could not be downloaded{reason}. Fix: download them "
        f"where the Hub is reachable (`hf download {what}`) and copy the Hugging Face cache here (or set HF_HOME "
        f"to it), or pass {fix_flag} /path/to/local/copy (a diffusers folder or a single .safetensors file).{gated}"
    )


def short_reason(err: BaseException) -> str:
    """The first line of an error's message, at most 200 characters."""
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
    from storycast.pipelines.families import all_families, family_of_pipeline_class

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
    family = family_of_pipeline_class([class_name])
    if family is None:
        known = sorted(name for family in all_families() for name in family.pipeline_classes[:1])
        raise ModelLoadError(
            f"'{folder}' holds a {class_name}; storycast runs {', '.join(FAMILIES)} pipelines. "
            f"Fix: use a {' or '.join(known)} folder."
        )
    return family


def family_of_folder(folder: Path) -> str:
    return family_of_index(folder / "model_index.json")


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file checkpoint, read without loading its tensors."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    import torch

    state = torch.load(str(path), map_location="meta", weights_only=True)
    return list(state.get("state_dict", state).keys())


def family_of_checkpoint(path: Path) -> str:
    """The family of an original-layout single-file checkpoint, by its tensor names."""
    from storycast.pipelines.families import all_families

    keys = checkpoint_keys(path)
    for family in all_families():
        if family.matches_checkpoint(keys):
            return family.name
    raise ModelLoadError(
        f"cannot tell which architecture '{path}' is (no SDXL 'conditioner.embedders.1.*', SD 1.5 "
        f"'cond_stage_model.*' or FLUX 'double_blocks.*' / 'single_transformer_blocks.*' keys). Fix: pass the family "
        f"explicitly (--family {'|'.join(FAMILIES)}) or use a diffusers folder."
    )


def guidance_of_folder(folder: Path, family: str) -> str:
    """How the pipeline in ``folder`` is guided: a FLUX transformer's ``guidance_embeds`` says embedded or none."""
    if family != "flux":
        return "cfg"
    config = folder / "transformer" / "config.json"
    try:
        embeds = json.loads(config.read_text()).get("guidance_embeds", False)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"'{config}' cannot be read ({short_reason(err)}), so whether this FLUX model takes a guidance input is "
            f"unknown. Fix: point --model at a complete FLUX pipeline folder (transformer/, vae/, text_encoder/, "
            f"text_encoder_2/, tokenizer/, tokenizer_2/)."
        ) from None
    return "embedded" if embeds else "none"


def guidance_of_checkpoint(path: Path, family: str) -> str:
    """How a single-file checkpoint's model is guided (a FLUX transformer with a guidance input, or none)."""
    if family != "flux":
        return "cfg"
    from storycast.pipelines.families.flux import Flux

    return "embedded" if Flux.checkpoint_guidance(checkpoint_keys(path)) else "none"


def check_flux_text_encoders(folder: Path, *, what: str, fix: str) -> None:
    """A FLUX pipeline folder must hold its T5 encoder and tokenizer: refused, naming the missing part, before
    anything loads."""
    missing = [part for part in FLUX_TEXT_PARTS if not (folder / part).is_dir() or not any((folder / part).iterdir())]
    if missing:
        raise ModelLoadError(
            f"{what} '{folder}' has no {' or '.join(missing)}: FLUX encodes prompts with T5 (text_encoder_2, "
            f"tokenizer_2) beside CLIP. Fix: {fix}"
        )


def hub_file(repo_id: str, filename: str, spec: ModelSpec) -> Path:
    """A small file of a Hub repository: from the cache, or fetched (a few hundred bytes)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=spec.revision)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=spec.revision, local_files_only=spec.local_files_only))
    except Exception as err:  # offline, missing repo, HTTP errors: all "not reachable" to the user
        raise MissingWeightsError(missing_weights_message(repo_id, short_reason(err))) from None


def hub_family(repo_id: str, spec: ModelSpec) -> tuple[str, str]:
    """(family, guidance) of a Hub pipeline, from its ``model_index.json`` (and a FLUX transformer's config)."""
    family = family_of_index(hub_file(repo_id, "model_index.json", spec))
    if family != "flux":
        return family, "cfg"
    config = hub_file(repo_id, "transformer/config.json", spec)
    return family, "embedded" if json.loads(config.read_text()).get("guidance_embeds", False) else "none"


def detect(spec: ModelSpec) -> tuple[str, str, str, BasePreset | None]:
    """(kind, family, guidance, preset) of a model source, reading at most a few small files.

    Raises:
        MissingWeightsError: Neither a preset, a file, a folder nor a reachable Hub id.
        ModelLoadError: A folder or checkpoint of an architecture storycast does not run, or a FLUX folder without
            its T5 encoder.
    """
    kind, preset = classify_source(spec)
    if preset is not None:
        return kind, preset.family, preset.guidance, preset
    if kind == "folder":
        folder = Path(spec.source).expanduser().resolve()
        family = spec.family or family_of_folder(folder)
        if family == "flux":
            check_flux_text_encoders(
                folder, what="FLUX folder", fix="copy the whole pipeline folder (save_pretrained writes them all)."
            )
        return kind, family, guidance_of_folder(folder, family), None
    if kind == "file":
        path = Path(spec.source).expanduser().resolve()
        family = spec.family or family_of_checkpoint(path)
        return kind, family, guidance_of_checkpoint(path, family), None
    if spec.family is not None and spec.family != "flux":
        return kind, spec.family, "cfg", None  # nothing to fetch: the family is given and needs no more
    family, guidance = hub_family(spec.source, spec)
    return kind, spec.family or family, guidance, None


def check_single_file_configs(config: str, family: str, spec: ModelSpec) -> None:
    """A FLUX single file holds the transformer alone: its VAE and text encoders come from ``config`` (a folder or
    a Hub id), checked here before the big file is read."""
    if family != "flux":
        return
    fix = (
        "pass --model-config a complete FLUX pipeline folder or Hub id (e.g. black-forest-labs/FLUX.1-dev), "
        "with its text_encoder_2 and tokenizer_2."
    )
    folder = Path(config).expanduser()
    if folder.is_dir():
        check_flux_text_encoders(folder, what="the configs folder of the FLUX checkpoint", fix=fix)
        return
    if spec.local_files_only:
        from huggingface_hub import try_to_load_from_cache

        missing = [
            part
            for part in ("text_encoder_2/config.json", "tokenizer_2/tokenizer_config.json")
            if not isinstance(try_to_load_from_cache(config, part, revision=None), str)
        ]
        if missing:
            raise MissingWeightsError(
                f"the FLUX checkpoint '{spec.source}' holds the transformer alone; its T5 encoder comes from "
                f"'{config}', which is not in the local cache ({', '.join(missing)} missing) and --local-files-only "
                f"forbids downloading it. Fix: {fix}"
            )


def pipeline_kwargs(family: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments of a family's pipeline."""
    if family == "sd15":
        # Research runs need every frame; the checker's black frames would corrupt the metrics.
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}

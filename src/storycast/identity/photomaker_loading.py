"""Load a PhotoMaker adapter file: v1 (``TencentARC/PhotoMaker``, ``photomaker-v1.bin``) or v2
(``TencentARC/PhotoMaker-V2``, ``photomaker-v2.bin``).

Both files are a torch pickle of ``{"id_encoder": <state dict>, "lora_weights": <state dict>}``: the ID encoder
(:class:`~storycast.identity.photomaker.PhotoMakerIDEncoder` or
:class:`~storycast.identity.photomaker_v2.PhotoMakerV2IDEncoder`) and a LoRA for the SDXL UNet. A
``.safetensors`` variant stores the same tensors flat, under ``id_encoder.<key>`` and ``lora_weights.<key>``.
The version is read from the ID encoder's keys (:func:`photomaker_version`): only v2 has ``qformer_perceiver.*``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder
from storycast.identity.photomaker_v2 import PhotoMakerV2Config, PhotoMakerV2IDEncoder

PHOTOMAKER_REPO = "TencentARC/PhotoMaker"
PHOTOMAKER_V2_REPO = "TencentARC/PhotoMaker-V2"
PHOTOMAKER_V1_FILE = "photomaker-v1.bin"
PHOTOMAKER_V2_FILE = "photomaker-v2.bin"
V2_KEY_PREFIX = "qformer_perceiver."
TOP_LEVEL_KEYS = ("id_encoder", "lora_weights")
# A buffer that transformers < 4.31 saved and later versions rebuild; the official file does not hold it.
_IGNORED_ENCODER_KEYS = ("vision_model.embeddings.position_ids",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class PhotoMakerWeights:
    """The two parts of a PhotoMaker adapter.

    Attributes:
        id_encoder: State dict of the ID encoder (``vision_model.*``, ``visual_projection*``, ``fuse_module.*``).
        lora_weights: State dict of the UNet LoRA, as stored (for diffusers' ``load_lora_weights``).
        source: Where it came from (a file path, or "<state dict>").
    """

    id_encoder: dict[str, torch.Tensor]
    lora_weights: dict[str, torch.Tensor]
    source: str

    @property
    def version(self) -> str:
        """The PhotoMaker version, "v1" or "v2", from the ID encoder's keys (:func:`photomaker_version`)."""
        return photomaker_version(self.id_encoder)


def load_photomaker_state_dict(
    source: str | Path | Mapping[str, object],
    weight_name: str = PHOTOMAKER_V1_FILE,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> PhotoMakerWeights:
    """Read a PhotoMaker adapter from a file, a folder, a Hugging Face Hub repo id, or a state dict.

    Args:
        source: A ``.bin``/``.safetensors`` file; a folder holding ``weight_name``; a hub repo id such as
            ``"TencentARC/PhotoMaker"`` or ``"TencentARC/PhotoMaker-V2"``; or an already loaded dict (nested or
            flat-prefixed).
        weight_name: File name inside a folder or hub repo (official ``photomaker-v1.bin`` / ``photomaker-v2.bin``).
        revision, cache_dir, local_files_only: Passed to ``huggingface_hub.hf_hub_download`` for hub ids.

    Raises:
        MissingWeightsError: The file is not on disk and could not be downloaded.
        ModelLoadError: The file could not be read, or lacks the ``id_encoder`` / ``lora_weights`` parts.
    """
    if isinstance(source, Mapping):
        return split_photomaker_state_dict(source, "<state dict>")
    path = resolve_photomaker_file(
        source, weight_name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
    )
    return split_photomaker_state_dict(_read_file(path), str(path))


def resolve_photomaker_file(
    source: str | Path,
    weight_name: str = PHOTOMAKER_V1_FILE,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """Local path of the adapter file: ``source`` itself, ``source / weight_name``, or a hub download."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / weight_name
        if candidate.is_file():
            return candidate
        raise MissingWeightsError(
            f"The folder '{path}' has no PhotoMaker file '{weight_name}'. Fix: put it there, pass the file "
            "itself, or pass weight_name= with the file's name."
        )
    text = str(source)
    if not _HUB_ID.match(text) or text.endswith((".bin", ".safetensors", ".pt", ".pth")):
        raise MissingWeightsError(
            f"The PhotoMaker adapter '{text}' is neither a file, a folder nor a Hugging Face Hub repo id. Fix: "
            f"pass the path of '{weight_name}', its folder, or the repo id '{PHOTOMAKER_REPO}' (v1) or "
            f"'{PHOTOMAKER_V2_REPO}' (v2)."
        )
    return _download(text, weight_name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)


def _download(
    repo_id: str, weight_name: str, *, revision: str | None, cache_dir: str | Path | None, local_files_only: bool
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                repo_id,
                weight_name,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
    except (OSError, EntryNotFoundError, ValueError) as err:
        raise MissingWeightsError(
            f"Could not get '{weight_name}' from the Hugging Face Hub repo '{repo_id}' "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}). Fix: on a "
            f"machine with network run `huggingface-cli download {repo_id} {weight_name}` (or download it from "
            f"https://huggingface.co/{repo_id}), then pass the local file or its folder instead of the repo id."
        ) from err


def _read_file(path: Path) -> Mapping[str, object]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"Could not read the safetensors file '{path}': {err}.") from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(
            f"Could not read '{path}' as a torch checkpoint of tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}). Fix: check the download is complete "
            "(re-download it) and that it is a PhotoMaker adapter."
        ) from err
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"'{path}' holds a {type(loaded).__name__}, not a dict of state dicts.")
    return loaded


def split_photomaker_state_dict(state_dict: Mapping[str, object], source: str) -> PhotoMakerWeights:
    """Split a nested ``{"id_encoder": {...}, "lora_weights": {...}}`` or a flat ``id_encoder.<key>`` /
    ``lora_weights.<key>`` dict into :class:`PhotoMakerWeights`."""
    keys = list(state_dict)
    if all(isinstance(state_dict.get(name), Mapping) for name in TOP_LEVEL_KEYS):
        parts = {name: dict(state_dict[name]) for name in TOP_LEVEL_KEYS}
    elif keys and all(isinstance(key, str) and key.partition(".")[0] in TOP_LEVEL_KEYS for key in keys):
        parts = {name: {} for name in TOP_LEVEL_KEYS}
        for key in keys:
            part, _, rest = key.partition(".")
            parts[part][rest] = state_dict[key]
    else:
        parts = {}
    if not parts or not all(parts.values()):
        shown = ", ".join(repr(key) for key in keys[:8]) + (f", ... ({len(keys)} keys)" if len(keys) > 8 else "")
        raise ModelLoadError(
            f"{source} is not a PhotoMaker adapter: it needs the top-level keys 'id_encoder' and "
            f"'lora_weights' (or flat keys prefixed 'id_encoder.' / 'lora_weights.'), but has [{shown}]. "
            f"Fix: pass the PhotoMaker file '{PHOTOMAKER_V1_FILE}' from {PHOTOMAKER_REPO} or '{PHOTOMAKER_V2_FILE}' "
            f"from {PHOTOMAKER_V2_REPO}."
        )
    for name, part in parts.items():
        bad = [key for key, value in part.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise ModelLoadError(f"{source}: '{name}' holds non-tensor values under {bad[:5]}.")
    return PhotoMakerWeights(id_encoder=parts["id_encoder"], lora_weights=parts["lora_weights"], source=source)


def photomaker_version(id_encoder: Mapping[str, object]) -> str:
    """The PhotoMaker version of an ID encoder state dict: "v2" when it has the ArcFace branch
    (``qformer_perceiver.*``), else "v1"."""
    return "v2" if any(key.startswith(V2_KEY_PREFIX) for key in id_encoder) else "v1"


def build_id_encoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: PhotoMakerConfig | None = None, dtype: torch.dtype = torch.float32
) -> PhotoMakerIDEncoder:
    """A PhotoMaker v1 :class:`PhotoMakerIDEncoder` (``dtype``, on the state dict's device, eval mode) loaded strictly.

    The module is built on the meta device and takes the state dict's tensors as its parameters, so no
    random initialisation runs and no second copy of the 0.3 B-parameter tower is made (the tensors are
    shared with ``state_dict`` when they already have ``dtype``).

    Raises:
        ModelLoadError: Listing the missing keys, the unexpected keys and the shape mismatches.
    """
    config = config or PhotoMakerConfig.vit_l14()
    if isinstance(config, PhotoMakerV2Config):
        raise ModelLoadError("build_id_encoder_from_state_dict builds PhotoMaker v1; got a PhotoMakerV2Config.")
    return _build_strict(PhotoMakerIDEncoder, config, state_dict, dtype)  # type: ignore[return-value]


def build_v2_id_encoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: PhotoMakerV2Config | None = None,
    dtype: torch.dtype = torch.float32,
) -> PhotoMakerV2IDEncoder:
    """A PhotoMaker v2 :class:`PhotoMakerV2IDEncoder` loaded strictly, as :func:`build_id_encoder_from_state_dict`.

    Raises:
        ModelLoadError: Listing the missing keys, the unexpected keys and the shape mismatches.
    """
    config = config or PhotoMakerV2Config.vit_l14()
    if not isinstance(config, PhotoMakerV2Config):
        raise ModelLoadError(
            "build_v2_id_encoder_from_state_dict builds PhotoMaker v2; got a v1 PhotoMakerConfig. Fix: pass a "
            "PhotoMakerV2Config (PhotoMakerV2Config.vit_l14() for the official file)."
        )
    return _build_strict(PhotoMakerV2IDEncoder, config, state_dict, dtype)  # type: ignore[return-value]


def build_photomaker_encoder(
    state_dict: Mapping[str, torch.Tensor],
    config: PhotoMakerConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> PhotoMakerIDEncoder | PhotoMakerV2IDEncoder:
    """The v1 or v2 ID encoder, whichever the state dict's keys say (:func:`photomaker_version`).

    ``config`` is the geometry (default: the official one of the detected version); a v2 state dict needs a
    :class:`PhotoMakerV2Config`, a v1 one a plain :class:`PhotoMakerConfig`.

    Raises:
        ModelLoadError: The config is of the other version, or the state dict does not fit.
    """
    version = photomaker_version(state_dict)
    if version == "v2":
        if config is not None and not isinstance(config, PhotoMakerV2Config):
            raise ModelLoadError(
                "the PhotoMaker weights are v2 (they hold qformer_perceiver.*), but a v1 PhotoMakerConfig was given. "
                "Fix: pass a PhotoMakerV2Config (or none, for the official geometry)."
            )
        return build_v2_id_encoder_from_state_dict(state_dict, config, dtype)
    if isinstance(config, PhotoMakerV2Config):
        raise ModelLoadError(
            "the PhotoMaker weights are v1 (no qformer_perceiver.*), but a PhotoMakerV2Config was given. Fix: pass a "
            "PhotoMakerConfig (or none, for the official geometry)."
        )
    return build_id_encoder_from_state_dict(state_dict, config, dtype)


def _build_strict(
    kind: type[torch.nn.Module], config: PhotoMakerConfig, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> torch.nn.Module:
    with torch.device("meta"):
        encoder = kind(config)
    state_dict = {key: value for key, value in state_dict.items() if key not in _IGNORED_ENCODER_KEYS}
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    version = getattr(kind, "version", "v1")
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = "; ".join(items[:10]) + (f"; ... ({len(items)} in all)" if len(items) > 10 else "")
                problems.append(f"{len(items)} {label}: {shown}")
        hint = ""
        if version == "v1" and any(key.startswith(V2_KEY_PREFIX) for key in unexpected):
            hint = (
                f" This looks like PhotoMaker v2 ({PHOTOMAKER_V2_FILE}): build it with "
                "build_v2_id_encoder_from_state_dict, or let build_photomaker_encoder detect the version."
            )
        elif version == "v2" and all(key.startswith(V2_KEY_PREFIX) for key in missing) and missing:
            hint = (
                f" This looks like PhotoMaker v1 ({PHOTOMAKER_V1_FILE}): build it with "
                "build_id_encoder_from_state_dict, or let build_photomaker_encoder detect the version."
            )
        elif mismatched:
            config_name = type(config).__name__
            hint = f" Fix: build with the config that matches the file ({config_name}.vit_l14() for the official one)."
        raise ModelLoadError(
            f"The state dict does not fit the PhotoMaker {version} ID encoder. " + " | ".join(problems) + "." + hint
        )
    encoder.load_state_dict(state_dict, strict=True, assign=True)
    _rebuild_position_ids(encoder)
    return encoder.to(dtype).eval()


def _rebuild_position_ids(encoder: torch.nn.Module) -> None:
    """Recreate the buffers the file does not hold (CLIP's ``position_ids``: 0..n-1), left on meta by the build."""
    for module in encoder.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name != "position_ids":
                raise ModelLoadError(f"the ID encoder's buffer '{name}' is not in the file and cannot be rebuilt.")
            device = next(encoder.parameters()).device
            ids = torch.arange(buffer.shape[-1], device=device).expand(buffer.shape)
            module.register_buffer(name, ids, persistent=False)

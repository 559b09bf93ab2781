"""Storynizor's ID-Injector weights: a resampler and, per cross-attention layer, bias-free identity k/v.

The module holds the parameters; the attention it adds is
:class:`storycast.attention.injection.IdentityInjection`. Two file layouts load:

- **ours** (what ``storycast train storynizor`` writes): a folder with ``storynizor.safetensors`` and
  ``storynizor.json``, or the ``.safetensors`` file alone (the JSON is also in its metadata). Keys are named
  after modules: ``resampler.<resampler key>`` and ``layers.<UNet attention module>.to_{k,v}_ip.weight``;
  ``lora.<peft key>`` holds the stage-2 LoRA on the up-block self-attention (its rank, alpha and target modules
  in the JSON's ``extra.lora``);
- **IP-Adapter-Plus** (``h94/IP-Adapter``, e.g. ``models/ip-adapter-plus-face_sd15.safetensors`` or the
  ``.bin``): ``image_proj.<resampler key>`` and ``ip_adapter.<id>.to_{k,v}_ip.weight``, where the n-th
  cross-attention layer of ``unet.attn_processors`` has id 2n + 1 (the official training script numbers
  every processor and only cross-attention ones have weights; diffusers' loader reads them the same way).
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.identity.resampler import Resampler, ResamplerConfig

CHECKPOINT_FILE = "storynizor.safetensors"
CONFIG_FILE = "storynizor.json"
FORMAT = "storycast.storynizor"
FORMAT_VERSION = 1
LORA_ADAPTER = "storynizor"
LORA_TARGETS = r".*up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)"
"""The modules Storynizor's stage-2 LoRA adapts: every up-block self-attention projection (peft regex)."""


@dataclass(frozen=True)
class InjectorConfig:
    """What a checkpoint says besides its tensors.

    Attributes:
        resampler: The resampler's geometry.
        image_encoder: The image encoder it was trained with (Hub id[:subfolder] or folder).
        family: Model family it was trained for ("sd15", "sdxl"), when known.
        extra: Anything else the writer recorded (training settings, steps).
    """

    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    image_encoder: str | None = None
    family: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "resampler": asdict(self.resampler),
            "image_encoder": self.image_encoder,
            "family": self.family,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> InjectorConfig:
        if data.get("format") != FORMAT:
            raise ModelLoadError(
                f"{source} is not a storynizor config (format {data.get('format')!r}, not {FORMAT!r})."
            )
        try:
            resampler = ResamplerConfig(**data["resampler"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{source}: the 'resampler' entry is not a resampler geometry ({err}).") from None
        return cls(resampler, data.get("image_encoder"), data.get("family"), data.get("extra") or {})


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, int, int]]:
    """(module name, hidden width, context width) of every cross-attention layer, in ``attn_processors`` order."""
    from storycast.attention.layers import attention_layers

    by_name = {layer.name: layer for layer in attention_layers(unet) if layer.is_cross}
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    return [
        (name, by_name[name].module.to_k.out_features, by_name[name].module.to_k.in_features)
        for name in names
        if name in by_name
    ]


class IDInjector(nn.Module):
    """The resampler and each cross-attention layer's identity projections.

    Args:
        config: The resampler geometry and provenance.
        layers: (module name, hidden width, context width) per cross-attention layer.
    """

    def __init__(self, config: InjectorConfig, layers: list[tuple[str, int, int]]):
        super().__init__()
        self.config = config
        self.resampler = Resampler(config.resampler)
        self.layer_names = [name for name, _, _ in layers]
        self.to_k_ip = nn.ModuleList(nn.Linear(context, hidden, bias=False) for _, hidden, context in layers)
        self.to_v_ip = nn.ModuleList(nn.Linear(context, hidden, bias=False) for _, hidden, context in layers)

    @classmethod
    def for_unet(cls, unet: nn.Module, config: InjectorConfig, *, from_text: bool = True) -> IDInjector:
        """A fresh injector for ``unet``; with ``from_text`` the identity k/v start as copies of the layers' text
        k/v (IP-Adapter's ``tutorial_train_plus.py``, Storynizor's spec)."""
        layers = cross_attention_layers(unet)
        injector = cls(config, layers)
        if from_text:
            modules = dict(unet.named_modules())
            with torch.no_grad():
                for index, name in enumerate(injector.layer_names):
                    injector.to_k_ip[index].weight.copy_(modules[name].to_k.weight)
                    injector.to_v_ip[index].weight.copy_(modules[name].to_v.weight)
        return injector

    def projections(self, layer: str) -> tuple[nn.Linear, nn.Linear]:
        """The identity (to_k_ip, to_v_ip) of a cross-attention layer."""
        index = self.layer_names.index(layer)
        return self.to_k_ip[index], self.to_v_ip[index]  # type: ignore[return-value]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Tensors under our module-named keys (``resampler.*``, ``layers.<module>.to_{k,v}_ip.weight``)."""
        state = {f"resampler.{key}": value for key, value in self.resampler.state_dict().items()}
        for index, name in enumerate(self.layer_names):
            state[f"layers.{name}.to_k_ip.weight"] = self.to_k_ip[index].weight
            state[f"layers.{name}.to_v_ip.weight"] = self.to_v_ip[index].weight
        return {key: value.detach().contiguous() for key, value in state.items()}

    def load_checkpoint_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load tensors in our key layout; every key must be there with the model's shape."""
        expected = self.checkpoint_state()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [
            f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
            for key, value in expected.items()
            if key in state and tuple(state[key].shape) != tuple(value.shape)
        ]
        if missing or unexpected or wrong:
            parts = []
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if items:
                    parts.append(
                        f"{len(items)} {label}: " + "; ".join(items[:4]) + ("; ..." if len(items) > 4 else "")
                    )
            raise ModelLoadError(
                f"the ID-Injector weights {source} do not fit this model ({' | '.join(parts)}). Fix: use weights made "
                f"for this base model's family and size (SD 1.5 weights on an SD 1.5 model, SDXL weights on SDXL), "
                f"or set weights (--set weights=...) to such a checkpoint."
            )
        with torch.no_grad():
            self.resampler.load_state_dict(
                {k[len("resampler.") :]: v for k, v in state.items() if k.startswith("resampler.")}
            )
            for index, name in enumerate(self.layer_names):
                self.to_k_ip[index].weight.copy_(state[f"layers.{name}.to_k_ip.weight"])
                self.to_v_ip[index].weight.copy_(state[f"layers.{name}.to_v_ip.weight"])


# -- files ------------------------------------------------------------------------------------------------


def save_injector(injector: IDInjector, folder: str | Path, lora: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``storynizor.safetensors`` (config in its metadata too) and ``storynizor.json`` into ``folder``,
    atomically (a half-written checkpoint never replaces a good one). ``lora``: the stage-2 LoRA's peft state
    (its geometry must be in ``injector.config.extra["lora"]``)."""
    from safetensors.torch import save_file

    from storycast.utils.io import atomic_directory

    folder = Path(folder)
    if lora and "lora" not in injector.config.extra:
        raise ValueError("a LoRA is saved with its geometry: set injector.config.extra['lora'] (rank, alpha)")
    config = json.dumps(injector.config.to_json())
    with atomic_directory(folder) as staging:
        tensors = {key: value.cpu() for key, value in injector.checkpoint_state().items()}
        tensors.update({f"lora.{key}": value.detach().cpu().contiguous() for key, value in (lora or {}).items()})
        save_file(tensors, str(staging / CHECKPOINT_FILE), metadata={"storycast": config})
        (staging / CONFIG_FILE).write_text(json.dumps(injector.config.to_json(), indent=2) + "\n")
    return folder


@dataclass
class InjectorWeights:
    """Tensors in our key layout, with the config and where they came from."""

    state: dict[str, torch.Tensor]
    config: InjectorConfig
    source: str
    layout: str
    """"storycast" or "ip-adapter"."""
    lora: dict[str, torch.Tensor] = field(default_factory=dict)
    """The stage-2 LoRA's peft state (keys without ``lora.``), empty for stage-1 and IP-Adapter weights."""


def read_injector_weights(
    source: str | Path | Mapping[str, Any], unet: nn.Module, *, local_files_only: bool = False
) -> InjectorWeights:
    """Weights from a folder, a file, a Hub id (``owner/name`` for ours, ``owner/name:path/in/repo`` for a file
    such as ``h94/IP-Adapter:models/ip-adapter-plus-face_sd15.safetensors``) or a state dict, in our layout.

    Raises:
        MissingWeightsError: Nothing at ``source`` and it could not be downloaded.
        ModelLoadError: The file is not an ID-Injector checkpoint, or does not fit ``unet``.
    """
    if isinstance(source, Mapping):
        return _to_our_layout(dict(source), None, "<state dict>", unet)
    path = _resolve_file(str(source), local_files_only=local_files_only)
    tensors, metadata = _read_tensors(path)
    config = None
    sibling = path.with_name(CONFIG_FILE)
    if sibling.is_file():
        config = InjectorConfig.from_json(json.loads(sibling.read_text()), str(sibling))
    elif metadata.get("storycast"):
        config = InjectorConfig.from_json(json.loads(metadata["storycast"]), str(path))
    return _to_our_layout(tensors, config, str(path), unet)


def build_injector(weights: InjectorWeights, unet: nn.Module) -> IDInjector:
    """An :class:`IDInjector` for ``unet`` holding ``weights`` (shapes checked, the file named on a mismatch)."""
    if weights.config.resampler.output_dim != unet.config.cross_attention_dim:
        raise ModelLoadError(
            f"the ID-Injector weights {weights.source} make {weights.config.resampler.output_dim}-wide identity "
            f"tokens, but this UNet's cross-attention takes {unet.config.cross_attention_dim}. Fix: use weights made "
            f"for this base model (SD 1.5: 768, SDXL: 2048), or set weights (--set weights=...) to such a checkpoint."
        )
    injector = IDInjector(weights.config, cross_attention_layers(unet))
    injector.load_checkpoint_state(weights.state, weights.source)
    return injector


def _resolve_file(source: str, *, local_files_only: bool) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = path / CHECKPOINT_FILE
        if found.is_file():
            return found
        raise MissingWeightsError(
            f"the folder '{path}' has no {CHECKPOINT_FILE}. Fix: point weights at a folder written by "
            f"`storycast train storynizor`, or at an IP-Adapter-Plus file itself."
        )
    repo, _, filename = source.partition(":")
    from storycast.models.checkpoints import looks_like_path

    if looks_like_path(repo) or repo.count("/") != 1 or (not filename and path.suffix in (".bin", ".safetensors")):
        raise MissingWeightsError(
            f"ID-Injector weights '{source}' are neither a file, a folder nor a Hub id. Fix: pass a file or folder "
            f"that exists, 'owner/name' (a repo holding {CHECKPOINT_FILE}), or 'owner/name:path/in/repo.safetensors'."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        if not filename:
            # A repo may ship the safetensors alone: its metadata holds the config.
            with contextlib.suppress(OSError, EntryNotFoundError, ValueError):
                hf_hub_download(repo, CONFIG_FILE, local_files_only=local_files_only)
        return Path(hf_hub_download(repo, filename or CHECKPOINT_FILE, local_files_only=local_files_only))
    except (OSError, EntryNotFoundError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MissingWeightsError(
            f"ID-Injector weights '{filename or CHECKPOINT_FILE}' of Hub repo '{repo}' are not on this machine and "
            f"could not be downloaded ({first}). Fix: `hf download {repo} {filename or CHECKPOINT_FILE}` where the Hub "
            f"is reachable and copy the Hugging Face cache here, or set weights (--set weights=...) to a local file."
        ) from None


def _read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is no dict
                return tensors, dict(handle.metadata() or {})
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(
                f"could not read the safetensors file '{path}' ({err}). Fix: download it again."
            ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(
            f"could not read '{path}' as a checkpoint of tensors ({type(err).__name__}). Fix: download it again; it "
            f"should be an IP-Adapter-Plus .bin/.safetensors or a storynizor.safetensors."
        ) from None
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"'{path}' holds a {type(loaded).__name__}, not a dict of tensors.")
    return dict(loaded), {}


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _to_our_layout(
    state: dict[str, Any], config: InjectorConfig | None, source: str, unet: nn.Module
) -> InjectorWeights:
    flat = _flatten(state)
    bad = [key for key, value in flat.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{source}: non-tensor values under {bad[:4]}.")
    if any(key.startswith("image_proj.") for key in flat):
        flat, layout = _from_ip_adapter(flat, source, unet), "ip-adapter"
    elif any(key.startswith("resampler.") for key in flat):
        layout = "storycast"
    else:
        shown = ", ".join(list(flat)[:5])
        raise ModelLoadError(
            f"{source} is not ID-Injector weights: expected keys 'resampler.*' and 'layers.*' (storycast) or "
            f"'image_proj.*' and 'ip_adapter.*' (IP-Adapter-Plus), found [{shown}]. Fix: pass an IP-Adapter-Plus(-Face) "
            f"file or a checkpoint written by `storycast train storynizor`."
        )
    lora = {key[len("lora.") :]: value for key, value in flat.items() if key.startswith("lora.")}
    flat = {key: value for key, value in flat.items() if not key.startswith("lora.")}
    if lora and (config is None or not isinstance(config.extra.get("lora"), Mapping)):
        raise ModelLoadError(
            f"{source} holds a LoRA ('lora.*' keys) but no config giving its rank and alpha. Fix: keep "
            f"{CONFIG_FILE} next to it, or use the file as `storycast train storynizor` wrote it."
        )
    resampler_state = {k[len("resampler.") :]: v for k, v in flat.items() if k.startswith("resampler.")}
    if "latents" not in resampler_state:
        raise ModelLoadError(
            f"{source}: the resampler has no 'latents'; it is not an IP-Adapter-Plus resampler (plain IP-Adapter and "
            f"FaceID files use other image projections). Fix: use an IP-Adapter-Plus or Plus-Face file."
        )
    if config is None:
        try:
            geometry = ResamplerConfig.from_state_dict(resampler_state)
        except KeyError as err:
            raise ModelLoadError(f"{source}: the resampler lacks {err}; the file is incomplete.") from None
        config = InjectorConfig(geometry, family=None)
    return InjectorWeights(flat, config, source, layout, lora)


def _from_ip_adapter(flat: dict[str, torch.Tensor], source: str, unet: nn.Module) -> dict[str, torch.Tensor]:
    """IP-Adapter key names -> ours, the n-th cross-attention layer of ``attn_processors`` having id 2n + 1."""
    layers = cross_attention_layers(unet)
    ids = sorted({int(key.split(".")[1]) for key in flat if key.startswith("ip_adapter.")})
    if len(ids) != len(layers):
        raise ModelLoadError(
            f"{source} has identity k/v for {len(ids)} cross-attention layers, this UNet has {len(layers)}. Fix: use "
            f"the file made for this base model (SD 1.5: 16 layers, e.g. ip-adapter-plus-face_sd15; SDXL: 70, "
            f"e.g. sdxl_models/ip-adapter-plus-face_sdxl_vit-h)."
        )
    out = {f"resampler.{k[len('image_proj.') :]}": v for k, v in flat.items() if k.startswith("image_proj.")}
    for number, (name, _, _) in enumerate(layers):
        for part in ("to_k_ip", "to_v_ip"):
            key = f"ip_adapter.{2 * number + 1}.{part}.weight"
            if key not in flat:
                raise ModelLoadError(
                    f"{source} lacks '{key}' (layer {name}); the file is incomplete or not IP-Adapter."
                )
            out[f"layers.{name}.{part}.weight"] = flat[key]
    return out


# -- the stage-2 LoRA ------------------------------------------------------------------------------------------


def add_storynizor_lora(
    unet: nn.Module, rank: int, alpha: float, state: Mapping[str, torch.Tensor] | None = None, *, source: str = ""
) -> None:
    """Put Storynizor's LoRA (adapter ``storynizor``) on the up-block self-attention of ``unet`` through peft:
    Gaussian-initialised ``lora_A`` and zero ``lora_B`` (an identity at first), or ``state`` when given."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights="gaussian")
    unet.add_adapter(config, adapter_name=LORA_ADAPTER)
    if state:
        result = set_peft_model_state_dict(unet, dict(state), adapter_name=LORA_ADAPTER)
        unexpected = [key for key in getattr(result, "unexpected_keys", []) if LORA_ADAPTER in key or "lora" in key]
        if unexpected:
            unet.delete_adapters(LORA_ADAPTER)
            raise ModelLoadError(
                f"the LoRA of {source or 'the checkpoint'} does not fit this UNet ({len(unexpected)} keys without a "
                f"module, e.g. {unexpected[0]}). Fix: use a checkpoint trained on this base model."
            )


def storynizor_lora_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The peft state of Storynizor's LoRA (keys as :func:`add_storynizor_lora` reads them)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER)

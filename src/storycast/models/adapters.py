"""Adapters attached to loaded models: PhotoMaker, ControlNets. Each attaches once per loaded models (methods
share it through ``LoadedModels.attachments``) and has a ``detach()`` that undoes what attaching did.

The tiny and random-weight presets resolve their own adapter weights here ("auto" gives them random
weights of the right architecture), so methods never ask which preset they run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from storycast.methods.settings import MethodSettings, check_range, setting

if TYPE_CHECKING:
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter
    from storycast.models.loading import LoadedModels

PHOTOMAKER_REPO = "TencentARC/PhotoMaker"


class Attachment(Protocol):
    """Something attached to loaded models."""

    def detach(self) -> None: ...


@dataclass(frozen=True)
class PhotoMakerSettings(MethodSettings):
    """PhotoMaker v1 (identity conditioning through the class word's token)."""

    source: str = setting(
        "auto",
        f"PhotoMaker v1 weights: a Hub id, folder or file. 'auto': {PHOTOMAKER_REPO}, or random weights of the same "
        "architecture for the tiny and random-weight presets.",
        flat="photomaker",
    )
    file: str = setting("photomaker-v1.bin", "File name inside a Hub repo or folder.", flat="photomaker_file")


@dataclass(frozen=True)
class ControlNetSettings(MethodSettings):
    """A ControlNet conditioning the base passes on each frame's ``control_image``."""

    source: str | None = setting(
        None,
        "A ControlNet for the base model (Hub id or folder; 'tiny' builds a random one for the tiny presets) that "
        "conditions the plain passes on each frame's control_image; frames without one draw unconditioned.",
        flat="controlnet",
    )
    scale: float = setting(
        0.8, "Conditioning scale of the ControlNet (IdentityStory's authors use 0.8).", flat="controlnet_scale"
    )

    def validate(self) -> None:
        check_range("controlnet_scale", self.scale, 0)


def _active_loras(models: LoadedModels) -> dict[str, float]:
    from storycast.models.loading import active_loras

    return active_loras(models)


def attach_photomaker(models: LoadedModels, settings: PhotoMakerSettings) -> PhotoMakerAdapter:
    """PhotoMaker on ``models`` (SDXL), loaded on first use and shared by every method on these models."""
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter

    key = ("photomaker", f"{settings.source}:{settings.file}")
    if key in models.attachments:
        return models.attachments[key]
    pipe = models.pipeline
    facts = models.facts
    if settings.source == "auto" and (facts.tiny or facts.random):
        from storycast.identity.photomaker import PhotoMakerConfig
        from storycast.models.tiny import tiny_photomaker_weights

        # Random weights for random models: the tiny encoder, or the full-size one for the full-size random
        # presets that benchmarks measure (LoRA rank 64: the official file's size fits that rank).
        config = PhotoMakerConfig.tiny() if facts.tiny else PhotoMakerConfig.vit_l14()
        rank = 4 if facts.tiny else 64
        weights = tiny_photomaker_weights(pipe.unet, seed=models.spec.seed, rank=rank, config=config)
        adapter = PhotoMakerAdapter.load(
            pipe, weights, config=config, base_adapters=_active_loras(models), device=models.device
        )
    else:
        adapter = PhotoMakerAdapter.load(
            pipe,
            PHOTOMAKER_REPO if settings.source == "auto" else settings.source,
            weight_name=settings.file,
            local_files_only=models.spec.local_files_only,
            base_adapters=_active_loras(models),
            device=models.device,
        )
    models.attachments[key] = adapter
    return adapter


@dataclass
class AttachedControlNet:
    """A ControlNet held for loaded models; ``detach`` frees it."""

    model: Any
    models: LoadedModels
    key: tuple[str, str]

    def detach(self) -> None:
        self.models.attachments.pop(self.key, None)
        self.model = None


def attach_controlnet(models: LoadedModels, source: str) -> AttachedControlNet:
    """A ControlNet from a Hub id or folder, on the models' device and dtype; "tiny" makes a random one from the
    tiny UNet's config (tests, demos). Loaded once per loaded models."""
    import torch
    from diffusers import ControlNetModel

    key = ("controlnet", source)
    if key in models.attachments:
        return models.attachments[key]
    unet = models.pipeline.unet
    if source == "tiny":
        from storycast.models.tiny import _seeded, tiny_components

        # From a fresh tiny UNet: the live one may carry LoRA layers that from_unet cannot copy.
        with _seeded(models.spec.seed + 20):
            fresh_unet = tiny_components(models.family, models.spec.seed)["unet"]
            controlnet = ControlNetModel.from_unet(fresh_unet, conditioning_channels=3)
            # from_unet zero-initialises the output convolutions (a fresh ControlNet changes nothing);
            # random ones make the tiny ControlNet's effect visible, as a trained one's is.
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                torch.nn.init.normal_(conv.weight, std=0.05)
    else:
        from storycast.models.checkpoints import load_checkpoint

        controlnet = load_checkpoint(
            lambda path, offline: ControlNetModel.from_pretrained(path, local_files_only=offline),
            source,
            what="ControlNet",
            point_at="set the controlnet setting (--set controlnet=...) to",
            local_files_only=models.spec.local_files_only,
        )
    attached = AttachedControlNet(controlnet.to(device=models.device, dtype=unet.dtype).eval(), models, key)
    models.attachments[key] = attached
    return attached


@dataclass
class AttachedInjector:
    """Storynizor's ID-Injector and its image encoder, held for loaded models; ``detach`` frees them (the
    identity branch itself is attention processors, installed per call with their own handle)."""

    injector: Any
    image_encoder: Any
    source: str
    models: LoadedModels
    key: tuple[str, str]
    lora: bool = False
    """The checkpoint's stage-2 LoRA is on the UNet (adapter ``storynizor``)."""

    def detach(self) -> None:
        self.models.attachments.pop(self.key, None)
        if self.lora:
            from storycast.identity.id_injector import LORA_ADAPTER

            unet = self.models.pipeline.unet
            unet.delete_adapters(LORA_ADAPTER)
            _restore_adapters(self.models)
            self.lora = False
        self.injector = self.image_encoder = None


def _restore_adapters(models: LoadedModels, extra: dict[str, float] | None = None) -> None:
    """The models' own LoRAs (and ``extra``) active at their scales; none: LoRA layers off."""
    active = {**_active_loras(models), **(extra or {})}
    unet = models.pipeline.unet
    if active:
        unet.set_adapters(list(active), list(active.values()))
    elif hasattr(unet, "disable_lora") and getattr(unet, "peft_config", None):
        unet.disable_lora()


def attach_id_injector(
    models: LoadedModels, weights: str, image_encoder: str, *, auto_weights: str
) -> AttachedInjector:
    """The ID-Injector of ``weights`` (``auto_weights`` for "auto") and its CLIP image encoder on ``models``,
    loaded once. The tiny and random-weight presets resolve "auto" to random weights of the architecture: an
    IP-Adapter-Plus file in the official layout (tiny) or the full-size geometry (random), read by the same
    loader as real files."""
    import torch

    from storycast.identity import image_encoder as encoders
    from storycast.identity.id_injector import InjectorConfig, build_injector, read_injector_weights

    key = ("id-injector", f"{weights}|{image_encoder}")
    if key in models.attachments:
        return models.attachments[key]
    unet = models.pipeline.unet
    facts = models.facts
    synthetic = weights == "auto" and (facts.tiny or facts.random)
    if image_encoder == "auto" and (facts.tiny or facts.random):
        encoder = (
            encoders.tiny_image_encoder(models.spec.seed) if facts.tiny else encoders.vit_h14_random(models.spec.seed)
        )
    else:
        encoder = None
    if synthetic:
        from storycast.models.tiny import tiny_ip_adapter_plus_weights

        assert encoder is not None
        if facts.tiny:
            state = tiny_ip_adapter_plus_weights(unet, encoder.config.hidden_size, models.spec.seed)
            loaded = read_injector_weights(state, unet)
            source = "random (tiny IP-Adapter-Plus layout)"
        else:
            from storycast.identity.id_injector import IDInjector
            from storycast.identity.resampler import ResamplerConfig
            from storycast.models.tiny import _seeded

            width = unet.config.cross_attention_dim
            geometry = ResamplerConfig(dim=width, heads=width // 64, output_dim=width)  # IP-Adapter-Plus's
            with _seeded(models.spec.seed + 40):
                random_injector = IDInjector.for_unet(unet, InjectorConfig(geometry))
            loaded = read_injector_weights(random_injector.checkpoint_state(), unet)
            source = "random (IP-Adapter-Plus geometry)"
    else:
        source = auto_weights if weights == "auto" else weights
        loaded = read_injector_weights(source, unet, local_files_only=models.spec.local_files_only)
    injector = build_injector(loaded, unet)
    if encoder is None:
        named = image_encoder if image_encoder != "auto" else loaded.config.image_encoder
        from storycast.models.presets import VIT_H_ENCODER

        encoder = encoders.load_image_encoder(named or VIT_H_ENCODER, local_files_only=models.spec.local_files_only)
    features = encoder.config.hidden_size
    if features != injector.config.resampler.embedding_dim:
        from storycast.errors import ModelLoadError

        raise ModelLoadError(
            f"the ID-Injector weights {source} read {injector.config.resampler.embedding_dim}-wide image features, "
            f"the image encoder gives {features}. Fix: set image_encoder (--set injector.image_encoder=...) to the "
            f"encoder the weights were trained with (IP-Adapter-Plus: ViT-H/14, 1280)."
        )
    if loaded.lora:
        from storycast.identity.id_injector import LORA_ADAPTER, add_storynizor_lora

        geometry = loaded.config.extra["lora"]
        add_storynizor_lora(unet, int(geometry["rank"]), float(geometry["alpha"]), loaded.lora, source=source)
        torch.nn.Module.to(unet, device=models.device, dtype=unet.dtype)  # the new LoRA layers too, quietly
        _restore_adapters(models, {LORA_ADAPTER: 1.0})
    attached = AttachedInjector(
        injector.to(device=models.device, dtype=unet.dtype).eval(),
        encoder.to(device=models.device, dtype=unet.dtype).eval(),
        source,
        models,
        key,
        lora=bool(loaded.lora),
    )
    models.attachments[key] = attached
    return attached


def detach_all(models: LoadedModels) -> None:
    """Detach every adapter from ``models`` (the base pipeline is as loaded again)."""
    for attachment in list(models.attachments.values()):
        attachment.detach()
    models.attachments.clear()

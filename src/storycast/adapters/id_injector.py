"""Storynizor's ID-Injector and its CLIP image encoder attached to loaded models (the identity branch itself is
attention processors, installed per call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storycast.models.loading import LoadedModels


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
    from storycast.models.loading import active_loras

    active = {**active_loras(models), **(extra or {})}
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
        from storycast.adapters.tiny import tiny_ip_adapter_plus_weights

        assert encoder is not None
        if facts.tiny:
            state = tiny_ip_adapter_plus_weights(unet, encoder.config.hidden_size, models.spec.seed)
            loaded = read_injector_weights(state, unet)
            source = "random (tiny IP-Adapter-Plus layout)"
        else:
            from storycast.identity.id_injector import IDInjector
            from storycast.identity.resampler import ResamplerConfig
            from storycast.utils.torch_utils import seeded

            width = unet.config.cross_attention_dim
            geometry = ResamplerConfig(dim=width, heads=width // 64, output_dim=width)  # IP-Adapter-Plus's
            with seeded(models.spec.seed + 40):
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

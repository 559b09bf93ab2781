"""A ControlNet for the loaded base model, loaded once and shared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storycast.settings import MethodSettings, check_range, setting

if TYPE_CHECKING:
    from storycast.models.loading import LoadedModels


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
        from storycast.models.tiny import tiny_components
        from storycast.utils.torch_utils import seeded

        # From a fresh tiny UNet: the live one may carry LoRA layers that from_unet cannot copy.
        with seeded(models.spec.seed + 20):
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

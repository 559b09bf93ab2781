"""Mask providers by name, their shared settings, and the automatic choice between them.

Methods that need character masks (IdentityStory today) hold a :class:`MaskSettings` group and ask this
module for a provider; they never build one themselves. Providers are imported on first use, so the
detector's dependencies stay optional.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from storycast.errors import SettingsError
from storycast.masks.base import MaskProvider
from storycast.masks.grounded_sam import BOX_THRESHOLD, DETECTOR_ID, SEGMENTER_ID, TEXT_THRESHOLD
from storycast.settings import MethodSettings, ResolveContext, check_range, setting

logger = logging.getLogger(__name__)

PROVIDERS = {
    "attention": "storycast.masks.attention:AttentionMasks",
    "user": "storycast.masks.user:UserMasks",
    "grounded-sam": "storycast.masks.grounded_sam:GroundedSamMasks",
}


@dataclass(frozen=True)
class MaskSettings(MethodSettings):
    """Where the characters of a frame are, and how their masks are cleaned."""

    provider: Literal["auto", "grounded-sam", "attention", "user"] = setting(
        "auto",
        "Mask provider: 'auto' (the frame's mask files when it has them, else GroundingDINO + SAM when their "
        "weights are on this machine, else the class words' attention maps), 'grounded-sam' (the authors'), "
        "'attention' (no extra models) or 'user' (mask files given per frame).",
        flat="mask_provider",
    )
    auto_detector: bool | None = setting(
        None,
        "Whether 'auto' may choose GroundingDINO + SAM when their weights are on this machine. None: yes, except "
        "on tiny demo models, whose images are noise that no detector can read.",
    )
    retries: int = setting(
        3,
        "New seeds tried when a character is not found, before the frame fails (the authors retry without bound).",
        flat="mask_retries",
    )
    cleanup_dilation: int = setting(10, "Dilation of the cleaned masks, in pixels at 1024 px (the authors' 10).")
    detector: str = setting(DETECTOR_ID, "GroundingDINO checkpoint (Hub id or folder) for 'grounded-sam'.")
    segmenter: str = setting(SEGMENTER_ID, "SAM checkpoint (Hub id or folder) for 'grounded-sam'.")
    box_threshold: float = setting(BOX_THRESHOLD, "GroundingDINO box threshold (the authors' 0.3).")
    text_threshold: float = setting(TEXT_THRESHOLD, "GroundingDINO text threshold (the authors' 0.25).")

    def validate(self) -> None:
        check_range("mask_retries", self.retries, 0)
        check_range("cleanup_dilation", self.cleanup_dilation, 0)
        check_range("box_threshold", self.box_threshold, 0, 1)
        check_range("text_threshold", self.text_threshold, 0, 1)

    def resolve(self, context: ResolveContext) -> MaskSettings:
        if self.auto_detector is not None:
            return self
        import dataclasses

        return dataclasses.replace(self, auto_detector=not context.tiny)


def detector_available(settings: MaskSettings) -> bool:
    """True when the detector and segmenter are local folders or already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for source in (settings.detector, settings.segmenter):
        if Path(source).is_dir():
            continue
        try:
            cached = try_to_load_from_cache(source, "config.json")
        except ValueError:
            return False
        if not isinstance(cached, str):
            return False
    return True


def choose_provider(settings: MaskSettings, *, frame_has_user_masks: bool) -> str:
    """The provider a frame uses: the setting, or for 'auto' the frame's files, the detector when allowed and on
    this machine, else attention maps."""
    if settings.provider != "auto":
        return settings.provider
    if frame_has_user_masks:
        return "user"
    if settings.auto_detector and detector_available(settings):
        return "grounded-sam"
    return "attention"


def fallback_reason(settings: MaskSettings, chosen: str) -> str | None:
    """Why 'auto' chose the attention maps instead of the authors' GroundingDINO + SAM, with the fix; None when
    it did not fall back (another provider asked for, a user mask, or detector use not allowed: tiny models)."""
    if settings.provider != "auto" or chosen != "attention" or not settings.auto_detector:
        return None
    return (
        f"GroundingDINO + SAM ({settings.detector}, {settings.segmenter}) are not on this machine, so masks come from "
        f"the class words' cross-attention maps, not from the authors' detector. Fix: `storycast download "
        f"grounding-dino sam` (or hf download both) for the authors' masks, or --set mask_provider=attention to "
        f"choose the maps and silence this."
    )


def shares_the_gpu(models: Any) -> bool:
    """Whether auxiliary models would sit on the UNet's own CUDA device (then they are offloaded when idle)."""
    return str(models.aux_device).startswith("cuda") and str(models.aux_device) == str(models.device)


def build_provider(
    name: str, settings: MaskSettings, *, device: Any, local_files_only: bool, offload_idle: bool = False
) -> MaskProvider:
    """A mask provider by name, configured by ``settings``; ``offload_idle`` keeps a detector's models in CPU memory
    between frames (for a detector sharing the UNet's GPU)."""
    if name not in PROVIDERS:
        raise SettingsError(f"mask_provider '{name}' is not known. Fix: use auto or one of {', '.join(PROVIDERS)}.")
    module_name, _, class_name = PROVIDERS[name].partition(":")
    provider_class = getattr(importlib.import_module(module_name), class_name)
    if name != "grounded-sam":
        return provider_class()
    from storycast.masks.grounded_sam import GroundedSamSettings

    return provider_class(
        GroundedSamSettings(
            detector=settings.detector,
            segmenter=settings.segmenter,
            box_threshold=settings.box_threshold,
            text_threshold=settings.text_threshold,
            device=str(device),
            local_files_only=local_files_only,
            offload_idle=offload_idle,
        )
    )

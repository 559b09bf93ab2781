"""Mask providers by name, their shared settings, and the automatic choice between them.

Methods that need character masks (IdentityStory today) hold a :class:`MaskSettings` group and ask this
module for a provider; they never build one themselves. Providers are imported on first use, so the
detector's dependencies stay optional.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from storycast.errors import SettingsError
from storycast.masks.base import MaskProvider
from storycast.masks.settings import MaskSettings

logger = logging.getLogger(__name__)

PROVIDERS = {
    "attention": "storycast.masks.attention:AttentionMasks",
    "user": "storycast.masks.user:UserMasks",
    "grounded-sam": "storycast.masks.grounded_sam:GroundedSamMasks",
}


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

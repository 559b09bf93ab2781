"""Stable Diffusion 1.5: one CLIP text encoder, a four-level UNet."""

from __future__ import annotations

from collections.abc import Collection

import torch

from storycast.pipelines.conditioning import GuidancePair, TextConditioning
from storycast.pipelines.families.unet import UNetFamily


class SD15(UNetFamily):
    """Stable Diffusion 1.x (``StableDiffusionPipeline``)."""

    name = "sd15"
    pipeline_class_name = "StableDiffusionPipeline"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    config_repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    @classmethod
    def matches_checkpoint(cls, keys: Collection[str]) -> bool:
        # The original (CompVis) layout's text encoder.
        return any(k.startswith("cond_stage_model.") for k in keys)

    @torch.no_grad()
    def encode_pair(self, prompts: list[str], negatives: list[str], width: int, height: int) -> GuidancePair:
        embeds, negative_embeds = self.pipe.encode_prompt(prompts, self.device, 1, True, negative_prompt=negatives)
        return GuidancePair(TextConditioning(negative_embeds), TextConditioning(embeds))

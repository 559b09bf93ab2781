"""SDXL: two CLIP text encoders (per-token embeddings of both, the pooled embedding of the second), size ids, a
three-level UNet."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.pipelines.conditioning import GuidancePair, SDXLConditioning, size_ids
from storycast.pipelines.families.unet import UNetFamily


@dataclass(frozen=True)
class SDXLPromptEncoder:
    """Both SDXL text encoders over the pipeline's own ``encode_prompt``; the size ids say the image is uncropped
    at its target size. Also used on its own by adapters that encode prompts of an SDXL pipeline (PhotoMaker)."""

    pipe: Any
    device: Any

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int
    ) -> GuidancePair:
        if len(prompts) != len(negative_prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negative_prompts)} negative prompts")
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=list(prompts),
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=list(negative_prompts),
        )
        ids = size_ids(height, width, len(prompts), dtype=embeds.dtype, device=embeds.device)
        return GuidancePair(
            SDXLConditioning(negative_embeds, negative_pooled, ids), SDXLConditioning(embeds, pooled, ids.clone())
        )


class SDXL(UNetFamily):
    """Stable Diffusion XL (``StableDiffusionXLPipeline``)."""

    name = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    config_repo = "stabilityai/stable-diffusion-xl-base-1.0"

    @classmethod
    def matches_checkpoint(cls, keys: Collection[str]) -> bool:
        # The original (Stability) layout's second text encoder.
        return any(k.startswith("conditioner.embedders.1.") for k in keys)

    def encode_pair(self, prompts: list[str], negatives: list[str], width: int, height: int) -> GuidancePair:
        return SDXLPromptEncoder(self.pipe, self.device)(prompts, negatives, width=width, height=height)

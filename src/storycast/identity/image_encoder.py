"""The CLIP image encoder of IP-Adapter-style identity injection: patch features of reference images.

IP-Adapter-Plus (and Storynizor's ID-Injector, which follows it) reads the penultimate hidden states of an
OpenCLIP ViT-H/14 vision tower (257 x 1280 at 224 px; ``presets.VIT_H_ENCODER``),
through ``transformers``' ``CLIPVisionModelWithProjection``. The unconditional features of guidance are
those of an all-zero pixel tensor (IP-Adapter's ``get_image_embeds``: ``zeros_like(clip_image)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from storycast.identity.image_embedding import clip_preprocess

if TYPE_CHECKING:
    from PIL import Image


def _random_clip_vision(seed: int, **config: Any) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from storycast.utils.torch_utils import seeded

    with seeded(seed + 30):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).eval()


def tiny_image_encoder(seed: int = 0) -> Any:
    """A random CLIP vision tower at test size (hidden 32, 2 layers, 32 px, patch 8: 17 tokens)."""
    return _random_clip_vision(
        seed,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )


def vit_h14_random(seed: int = 0) -> Any:
    """OpenCLIP ViT-H/14's vision tower with random weights (the real size, for offline benchmarks)."""
    return _random_clip_vision(
        seed,
        hidden_size=1280,
        intermediate_size=5120,
        num_attention_heads=16,
        num_hidden_layers=32,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
    )


def load_image_encoder(
    source: str,
    *,
    local_files_only: bool = False,
    what: str = "CLIP image encoder",
    point_at: str = "set image_encoder (--set injector.image_encoder=...) to",
) -> Any:
    """A CLIP vision tower from a Hub id (``owner/name`` or ``owner/name:subfolder``) or a folder; ``what`` and
    ``point_at`` name it and its setting in the error when it is missing."""
    from transformers import CLIPVisionModelWithProjection

    from storycast.models.checkpoints import load_checkpoint

    repo, _, subfolder = source.partition(":")

    def load(path: str, offline: bool) -> Any:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=offline, **kwargs)

    return load_checkpoint(load, repo, what=what, point_at=point_at, local_files_only=local_files_only).eval()


@torch.no_grad()
def patch_features(encoder: Any, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) penultimate hidden states (n, tokens, hidden) of ``images`` and of zero pixels, float32."""
    parameter = next(encoder.parameters())
    pixels = clip_preprocess(images, encoder.config.image_size).to(parameter.device, parameter.dtype)

    def features(batch: torch.Tensor) -> torch.Tensor:
        return encoder(batch, output_hidden_states=True).hidden_states[-2].float()

    return features(pixels), features(torch.zeros_like(pixels))

"""Iterative Identity Discovery (IdentityStory §3.2): find a character's identity from its description.

Loop: draw m candidates with the identity-preserving generator (PhotoMaker's LoRA on; the first loop has
no identity yet, later loops merge the current identity from ``start_merge_step`` on), embed them with
PhotoMaker's ID encoder, keep the consistent ones with the iterative SVD filter, and average them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.identity.photomaker_prompt import MergedConditioning
from storycast.identity.svd_filter import svd_filter
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.freeu import FREEU_SDXL, freeu
from storycast.pipelines.sampler import Sampling, sample
from storycast.utils.torch_utils import make_generator


@dataclass(frozen=True)
class DiscoveryBudget:
    """Resolved numbers of one discovery (see ``IdentityStorySettings`` for their meaning)."""

    candidates: int
    batch_size: int
    steps: int
    guidance_scale: float
    loops: int
    start_merge_step: int
    svd_rank: int
    svd_keep_ratio: float
    svd_iterations: int
    preview_images: int
    negative_prompt: str
    freeu: bool
    seed: int
    width: int
    height: int


@dataclass
class DiscoveryResult:
    """The identity (D,), its preview images, and what the filter kept in each loop."""

    identity: torch.Tensor
    previews: list[Any]
    kept: list[list[int]]


@torch.no_grad()
def draw_candidates(
    adapter: PhotoMakerAdapter,
    conditioning: GuidancePair,
    class_position: int,
    identity: torch.Tensor | None,
    seeds: list[int],
    budget: DiscoveryBudget,
    on_image: Callable[[], None] | None = None,
) -> list[Any]:
    """Draw one image per seed, in batches, with the identity merged after ``start_merge_step``."""
    backbone = adapter.backbone
    guidance = backbone.guidance(budget.guidance_scale)
    sampling = Sampling(budget.width, budget.height, budget.steps, guidance)
    fused = None
    if identity is not None:
        fused = adapter.fuse(conditioning.cond.embeds, [class_position], identity[None])
    images: list[Any] = []
    for start in range(0, len(seeds), budget.batch_size):
        batch_seeds = seeds[start : start + budget.batch_size]
        count = len(batch_seeds)
        plain = conditioning.repeat(count)
        merged = None
        if fused is not None:
            merged = GuidancePair(plain.uncond, plain.cond.replace(embeds=fused.repeat(count, 1, 1)))
        # The authors use the text alone while i <= start_merge_step, the identity after.
        steps = MergedConditioning(plain, merged, budget.start_merge_step)

        def noise(model_input: torch.Tensor, t: torch.Tensor, i: int, steps=steps) -> torch.Tensor:
            return backbone.guided_noise(model_input, t, steps.at(i), guidance)

        generators = [make_generator(seed, str(adapter.device)) for seed in batch_seeds]
        for image in sample(backbone, plain, generators, sampling, noise=noise).images:
            images.append(image)
            if on_image is not None:
                on_image()
    return images


@torch.no_grad()
def discover_identity(
    adapter: PhotoMakerAdapter,
    prompt_with_trigger: str,
    budget: DiscoveryBudget,
    on_image: Callable[[], None] | None = None,
) -> DiscoveryResult:
    """Find an identity for a description (its search prompt, with PhotoMaker's trigger word)."""
    conditioning, positions = adapter.encode(
        [prompt_with_trigger], [budget.negative_prompt], width=budget.width, height=budget.height
    )
    identity: torch.Tensor | None = None
    kept: list[list[int]] = []
    with adapter.lora(True), freeu(adapter.pipe.unet, FREEU_SDXL if budget.freeu else None):
        for loop in range(budget.loops):
            seeds = [budget.seed + loop * budget.candidates + j for j in range(budget.candidates)]
            images = draw_candidates(adapter, conditioning, positions[0], identity, seeds, budget, on_image)
            embeddings = adapter.embed(images)
            result = svd_filter(embeddings, budget.svd_rank, budget.svd_keep_ratio, budget.svd_iterations)
            identity = result.identity.float()
            kept.append(result.indices.tolist())
        preview_seeds = [budget.seed + budget.loops * budget.candidates + j for j in range(budget.preview_images)]
        previews = draw_candidates(adapter, conditioning, positions[0], identity, preview_seeds, budget)
    assert identity is not None
    return DiscoveryResult(identity=identity.cpu(), previews=previews, kept=kept)


def identity_from_photos(adapter: PhotoMakerAdapter, photos: list[Any]) -> torch.Tensor:
    """An identity from a person's photos: the mean of their ID embeddings (as discovery averages)."""
    return adapter.embed(photos).mean(dim=0).cpu()

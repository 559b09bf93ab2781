"""Iterative Identity Discovery (IdentityStory §3.2): find a character's identity from its description.

Loop: draw m candidates with the identity-preserving generator (PhotoMaker's LoRA on; the first loop has
no identity yet, later loops merge the current identity from ``start_merge_step`` on), embed them with
PhotoMaker's ID encoder, keep the consistent ones with the iterative SVD filter, and average them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.identity.svd_filter import svd_filter
from storycast.pipelines.sdxl import (
    GuidancePair,
    TextConditioning,
    decode_latents,
    fresh_scheduler,
    guided_noise,
    initial_latents,
    time_ids,
)
from storycast.utils.torch_utils import make_generator

FREEU = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}  # the authors' FreeU factors for candidates


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


@contextlib.contextmanager
def freeu(unet: Any, enabled: bool) -> Iterator[None]:
    """FreeU (Si et al. 2024) on the UNet inside the block when ``enabled``."""
    if not enabled:
        yield
        return
    unet.enable_freeu(**FREEU)
    try:
        yield
    finally:
        unet.disable_freeu()


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
    pipe = adapter.pipe
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    shape = (unet.config.in_channels, budget.height // pipe.vae_scale_factor, budget.width // pipe.vae_scale_factor)
    images: list[Any] = []
    for start in range(0, len(seeds), budget.batch_size):
        batch_seeds = seeds[start : start + budget.batch_size]
        count = len(batch_seeds)
        scheduler = fresh_scheduler(pipe, budget.steps)
        generators = [make_generator(seed, str(device)) for seed in batch_seeds]
        latents = initial_latents(scheduler, shape, generators, dtype=dtype, device=device)
        plain = GuidancePair(conditioning.uncond.repeat(count), conditioning.cond.repeat(count))
        merged = plain
        if identity is not None:
            fused = adapter.fuse(conditioning.cond.embeds, [class_position], identity[None])
            merged = GuidancePair(plain.uncond, TextConditioning(fused.repeat(count, 1, 1), plain.cond.pooled))
        size_ids = time_ids(budget.height, budget.width, 2 * count, dtype=dtype, device=device)
        for i, t in enumerate(scheduler.timesteps):
            # The authors use the text alone while i <= start_merge_step, the identity after.
            pair = merged if i > budget.start_merge_step else plain
            model_input = scheduler.scale_model_input(latents, t)
            noise = guided_noise(unet, model_input, t, pair, size_ids, budget.guidance_scale)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        for image in decode_latents(pipe, latents):
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
    conditioning, positions = adapter.encode([prompt_with_trigger], [budget.negative_prompt])
    identity: torch.Tensor | None = None
    kept: list[list[int]] = []
    with adapter.lora(True), freeu(adapter.pipe.unet, budget.freeu):
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

"""Re-denoising Identity Injection (IdentityStory §3.3), and the authors' formulation as a reference.

Stage 1 draws the frame from its prompt with the plain SDXL UNet. Stage 2 starts again from the same
noise; up to the sweet-spot step s it would repeat stage 1 exactly, so it starts from stage 1's latents
at step s - 1. From there, inside each character's progressively dilated mask, the noise comes from an
identity pass (PhotoMaker LoRA on, the region prompt with the class token fused with the identity);
outside every mask it is stage 1's own guided noise, which was kept. Cost: 2T UNet evaluations for
stage 1 and 2k(T - s + 1) for stage 2, against 4T + 4T + 2k(T - s + 1) in the authors' code, for the
same output up to float rounding (:func:`reference_redenoise` is their formulation, for tests and
benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.masks.ops import progressive_masks, resize_masks_nearest
from storycast.pipelines.sdxl import (
    ControlInput,
    GuidancePair,
    TextConditioning,
    cfg_combine,
    fresh_scheduler,
    guided_noise,
    predict_noise,
)

StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class InjectionSchedule:
    """The numbers of one frame's re-denoising.

    Attributes:
        num_steps: T.
        sweet_spot_step: s; 0-based steps i with i + 1 >= s are re-denoised.
        guidance_scale: Classifier-free guidance of both stages.
        max_dilation: Progressive dilation at the last step, in image pixels (already scaled).
        identity_strength: See ``IdentityStorySettings.identity_strength``.
        fuse_mode: "repeated" (the authors' code) or "once".
    """

    num_steps: int
    sweet_spot_step: int
    guidance_scale: float
    max_dilation: int
    identity_strength: float = 1.0
    fuse_mode: Literal["repeated", "once"] = "repeated"

    def __post_init__(self) -> None:
        if not 1 <= self.sweet_spot_step <= self.num_steps:
            raise ValueError(
                f"sweet_spot_step must be between 1 and the number of steps ({self.num_steps}), "
                f"got {self.sweet_spot_step}. Fix: set sweet_spot_step lower, or draw with more steps."
            )

    @property
    def first_injection_step(self) -> int:
        return self.sweet_spot_step - 1

    @property
    def injection_steps(self) -> int:
        return self.num_steps - self.first_injection_step


@dataclass
class RegionInput:
    """One character's identity pass: its region prompt's conditioning (cond not yet fused), the position
    of its class token, and its identity."""

    character_id: str
    conditioning: GuidancePair
    class_position: int
    identity: torch.Tensor


@dataclass
class StageOne:
    """Stage 1's result: final latents, the latents entering step s - 1, and the guided noise of steps
    s - 1 .. T - 1 (what stage 2 keeps outside the masks)."""

    latents: torch.Tensor
    start_latents: torch.Tensor
    guided: list[torch.Tensor]


@torch.no_grad()
def stage_one(
    pipe: Any,
    conditioning: GuidancePair,
    initial: torch.Tensor,
    schedule: InjectionSchedule,
    size_ids: torch.Tensor,
    on_step: StepCallback | None = None,
    control: ControlInput | None = None,
) -> StageOne:
    """Draw the frame from its prompt alone (2 UNet evaluations per step), keeping what stage 2 needs.

    A ControlNet, when given, conditions these plain passes; the identity passes of stage 2 run without it,
    as in the authors' code (their spatial ControlNet drives the base pipeline only).
    """
    scheduler = fresh_scheduler(pipe, schedule.num_steps)
    latents = initial
    start_latents = initial
    kept: list[torch.Tensor] = []
    for i, t in enumerate(scheduler.timesteps):
        if i == schedule.first_injection_step:
            start_latents = latents
        model_input = scheduler.scale_model_input(latents, t)
        noise = guided_noise(
            pipe.unet, model_input, t, conditioning, size_ids, schedule.guidance_scale, control=control
        )
        if i >= schedule.first_injection_step:
            kept.append(noise)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i)
    return StageOne(latents=latents, start_latents=start_latents, guided=kept)


def step_masks(
    clean: torch.Tensor, step: int, schedule: InjectionSchedule, latent_size: tuple[int, int]
) -> torch.Tensor:
    """(K, 1, h, w) float masks of injection step ``step`` at latent size: the cleaned image-size masks,
    progressively dilated and made disjoint (smallest first), then nearest-resized."""
    masks = progressive_masks(clean, step, schedule.num_steps, schedule.sweet_spot_step, schedule.max_dilation)
    return resize_masks_nearest(masks.float(), latent_size).unsqueeze(1)


@torch.no_grad()
def stage_two(
    pipe: Any,
    adapter: PhotoMakerAdapter,
    stage1: StageOne,
    regions: Sequence[RegionInput],
    clean_masks: torch.Tensor,
    schedule: InjectionSchedule,
    size_ids: torch.Tensor,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Re-denoise from step s - 1 with the characters' identity passes inside their masks.

    Args:
        pipe: The SDXL pipeline.
        adapter: PhotoMaker on the same pipeline (its LoRA is switched on here).
        stage1: Stage 1's result.
        regions: One identity pass per character, in the order of ``clean_masks``.
        clean_masks: (K, H, W) bool cleaned masks at image size.
        schedule: The frame's numbers.
        size_ids: SDXL size ids with one row (repeated here as needed).
        on_step: Called with each 0-based step index.

    Returns:
        The final latents (1, C, h, w).
    """
    count = len(regions)
    if clean_masks.shape[0] != count:
        raise ValueError(f"got {count} regions but {clean_masks.shape[0]} masks")
    scheduler = fresh_scheduler(pipe, schedule.num_steps)
    scheduler.set_begin_index(schedule.first_injection_step)
    latents = stage1.start_latents
    latent_size = tuple(latents.shape[-2:])
    clean = clean_masks.to(latents.device)
    uncond = TextConditioning.cat([r.conditioning.uncond for r in regions])
    pooled = torch.cat([r.conditioning.cond.pooled for r in regions])
    positions = [r.class_position for r in regions]
    identities = torch.stack([r.identity.reshape(-1) for r in regions])
    cond_embeds = torch.cat([r.conditioning.cond.embeds for r in regions])
    if schedule.fuse_mode == "once":
        cond_embeds = adapter.fuse(cond_embeds, positions, identities, schedule.identity_strength)
    region_ids = size_ids[:1].repeat(2 * count, 1)

    with adapter.lora(True):
        for step, i in enumerate(range(schedule.first_injection_step, schedule.num_steps)):
            t = scheduler.timesteps[i]
            if schedule.fuse_mode == "repeated":
                # The authors fuse into the same tensor at every step, so the k-th injection step sees
                # the class token fused k times; "once" fuses a fresh copy a single time.
                cond_embeds = adapter.fuse(cond_embeds, positions, identities, schedule.identity_strength)
            conditioning = GuidancePair(uncond, TextConditioning(cond_embeds, pooled))
            model_input = scheduler.scale_model_input(latents, t)
            region_noise = guided_noise(
                pipe.unet, model_input.expand(count, -1, -1, -1), t, conditioning, region_ids, schedule.guidance_scale
            )
            masks = step_masks(clean, i, schedule, latent_size).to(region_noise.dtype)
            union = masks.sum(dim=0)
            blended = stage1.guided[step] * (1 - union) + (region_noise * masks).sum(dim=0, keepdim=True)
            latents = scheduler.step(blended, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i)
    return latents


@torch.no_grad()
def reference_redenoise(
    pipe: Any,
    adapter: PhotoMakerAdapter,
    conditioning: GuidancePair,
    regions: Sequence[RegionInput],
    clean_masks: torch.Tensor,
    initial: torch.Tensor,
    schedule: InjectionSchedule,
    size_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' formulation, for equivalence tests and cost comparisons (not used to draw).

    Two full runs over a batch of two copies of the frame: stage 1 caches its per-half noise at every step;
    stage 2 starts from the initial noise again, runs the plain UNet on both copies at every step and, from
    step s - 1 on, replaces copy B's noise by stage 1's cached noise outside the masks plus each character's
    identity pass inside its mask, before guidance. Returns (stage 1 latents, stage 2 latents).
    """
    base = GuidancePair(conditioning.uncond.repeat(2), conditioning.cond.repeat(2)).batch()
    four_ids = size_ids[:1].repeat(4, 1)
    two_ids = size_ids[:1].repeat(2, 1)

    scheduler = fresh_scheduler(pipe, schedule.num_steps)
    latents = initial.repeat(2, 1, 1, 1)
    cached: list[torch.Tensor] = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        noise = predict_noise(pipe.unet, torch.cat([model_input, model_input]), t, base, four_ids)
        cached.append(noise)
        latents = scheduler.step(cfg_combine(*noise.chunk(2), schedule.guidance_scale), t, latents, return_dict=False)[
            0
        ]
    stage1_latents = latents[0:1]

    scheduler = fresh_scheduler(pipe, schedule.num_steps)
    latents = initial.repeat(2, 1, 1, 1)
    region_embeds = [r.conditioning.cond.embeds for r in regions]
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        noise = predict_noise(pipe.unet, torch.cat([model_input, model_input]), t, base, four_ids)
        if i + 1 >= schedule.sweet_spot_step:
            masks = step_masks(clean_masks.to(latents.device), i, schedule, tuple(latents.shape[-2:])).to(noise.dtype)
            union = masks.sum(dim=0).clamp(max=1)
            replaced = torch.cat([cached[i][0:1], cached[i][2:3]]) * (1 - union)
            for k, region in enumerate(regions):
                if schedule.fuse_mode == "repeated" or i + 1 == schedule.sweet_spot_step:
                    region_embeds[k] = adapter.fuse(
                        region_embeds[k], [region.class_position], region.identity[None], schedule.identity_strength
                    )
                pair = GuidancePair(
                    region.conditioning.uncond, TextConditioning(region_embeds[k], region.conditioning.cond.pooled)
                )
                copy_b = torch.cat([model_input[1:2], model_input[1:2]])
                with adapter.lora(True):
                    region_noise = predict_noise(pipe.unet, copy_b, t, pair.batch(), two_ids)
                replaced = replaced + region_noise * masks[k]
            noise = noise.clone()
            noise[1], noise[3] = replaced[0], replaced[1]
        latents = scheduler.step(cfg_combine(*noise.chunk(2), schedule.guidance_scale), t, latents, return_dict=False)[
            0
        ]
    return stage1_latents, latents[1:2]

"""Re-denoising Identity Injection (IdentityStory §3.3), and the authors' formulation as a reference.

Stage 1 draws the frame from its prompt with the plain SDXL UNet (through the family seam, so the stages are
calls of the one batch sampler; on FLUX, plain FLUX, see :mod:`.flux_injection`). Stage 2 starts again from the same
noise; up to the sweet-spot step s it would repeat stage 1 exactly, so it starts from stage 1's latents
at step s - 1. From there, inside each character's progressively dilated mask, the noise comes from an
identity pass (PhotoMaker LoRA on, the region prompt with the class token fused with the identity);
outside every mask it is stage 1's own guided noise, which was kept. Cost: 2T UNet evaluations for
stage 1 and 2k(T - s + 1) for stage 2, against 4T + 4T + 2k(T - s + 1) in the authors' code, for the
same output up to float rounding (:func:`reference_redenoise` is their formulation, for tests and
benchmarks).

:func:`redenoise` is stage 2's loop for any identity-preserving generator: its :class:`IdentityPasses` give the
characters' region predictions (PhotoMaker v1 here, :class:`PhotoMakerPasses`; PuLID-FLUX in
:mod:`.flux_injection`), and the blend with stage 1's kept noise inside the progressive masks is the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.masks.ops import progressive_masks, resize_masks_nearest
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.denoise import DenoiseStep, denoise
from storycast.pipelines.families.base import Family
from storycast.pipelines.guidance import Guidance, cfg_combine, split_guidance_batch
from storycast.pipelines.noise import ControlInput
from storycast.pipelines.sampler import Sampling, sample

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
        family_guidance: The family's own guidance of both stages (FLUX's embedded guidance); None: classifier-free
            guidance at ``guidance_scale`` (SDXL's).
    """

    num_steps: int
    sweet_spot_step: int
    guidance_scale: float
    max_dilation: int
    identity_strength: float = 1.0
    fuse_mode: Literal["repeated", "once"] = "repeated"
    family_guidance: Guidance | None = None

    def __post_init__(self) -> None:
        # The progressive dilation grows over steps s..T (masks.ops.progressive_kernel): s < T.
        if not 1 <= self.sweet_spot_step < self.num_steps:
            raise ValueError(
                f"sweet_spot_step must be between 1 and the number of steps - 1 ({self.num_steps - 1}), "
                f"got {self.sweet_spot_step}. Fix: set sweet_spot_step lower, or draw with more steps."
            )

    @property
    def first_injection_step(self) -> int:
        return self.sweet_spot_step - 1

    @property
    def injection_steps(self) -> int:
        return self.num_steps - self.first_injection_step

    @property
    def guidance(self) -> Guidance:
        """The guidance of both stages: the family's, or classifier-free at ``guidance_scale`` (SDXL's)."""
        if self.family_guidance is not None:
            return self.family_guidance
        return Guidance(scale=self.guidance_scale)

    def sampling(self, backbone: Family, latents: torch.Tensor) -> Sampling:
        """The sampling of a stage starting from ``latents``."""
        width, height = backbone.image_size(latents)
        return Sampling(width, height, self.num_steps, self.guidance)


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


def stage_one(
    backbone: Family,
    conditioning: GuidancePair,
    initial: torch.Tensor,
    schedule: InjectionSchedule,
    *,
    on_step: StepCallback | None = None,
    control: ControlInput | None = None,
) -> StageOne:
    """Draw the frame from its prompt alone (2 UNet evaluations per step), keeping what stage 2 needs.

    A ControlNet, when given, conditions these plain passes; the identity passes of stage 2 run without it,
    as in the authors' code (their spatial ControlNet drives the base pipeline only).
    """
    kept: list[torch.Tensor] = []
    entering: list[torch.Tensor] = []

    def plain(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return backbone.guided_noise(model_input, t, conditioning, schedule.guidance, control=control)

    def keep(step: DenoiseStep) -> None:
        if step.index == schedule.first_injection_step:
            entering.append(step.latents)
        if step.index >= schedule.first_injection_step:
            kept.append(step.noise)
        if on_step is not None:
            on_step(step.index)

    drawn = sample(
        backbone, conditioning, None, schedule.sampling(backbone, initial), noise=plain, latents=initial,
        on_step=keep, decode=False,
    )  # fmt: skip
    return StageOne(latents=drawn.latents, start_latents=entering[0], guided=kept)


def step_masks(
    clean: torch.Tensor, step: int, schedule: InjectionSchedule, latent_size: tuple[int, int]
) -> torch.Tensor:
    """(K, 1, h, w) float masks of injection step ``step`` at latent size: the cleaned image-size masks,
    progressively dilated and made disjoint (smallest first), then nearest-resized."""
    masks = progressive_masks(clean, step, schedule.num_steps, schedule.sweet_spot_step, schedule.max_dilation)
    return resize_masks_nearest(masks.float(), latent_size).unsqueeze(1)


class _FusedIdentities:
    """The region rows' cond embeddings with each character's identity fused into its class token: once, or
    again at every injection step as the authors' code does (the k-th step then sees it fused k times)."""

    def __init__(self, adapter: PhotoMakerAdapter, regions: Sequence[RegionInput], schedule: InjectionSchedule):
        self.adapter = adapter
        self.schedule = schedule
        self.positions = [r.class_position for r in regions]
        self.identities = torch.stack([r.identity.reshape(-1) for r in regions])
        self.embeds = torch.cat([r.conditioning.cond.embeds for r in regions])
        if schedule.fuse_mode == "once":
            self._fuse()

    def _fuse(self) -> None:
        self.embeds = self.adapter.fuse(self.embeds, self.positions, self.identities, self.schedule.identity_strength)

    def for_step(self) -> torch.Tensor:
        if self.schedule.fuse_mode == "repeated":
            self._fuse()
        return self.embeds


class IdentityPasses(Protocol):
    """The characters' identity passes of stage 2 for one identity-preserving generator.

    ``install()`` is on for the whole stage (a LoRA switched on, an ID branch attached); ``noise`` gives the K
    characters' guided predictions (K, C, h, w) of the step's latents (1, C, h, w), in the order of the masks."""

    count: int

    def install(self) -> contextlib.AbstractContextManager[Any]: ...

    def noise(self, model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor: ...


class PhotoMakerPasses:
    """PhotoMaker v1's identity passes (SDXL): the LoRA on, each region prompt with its class token fused with the
    character's identity (:class:`_FusedIdentities`), the K regions as one batch."""

    def __init__(
        self,
        backbone: Family,
        adapter: PhotoMakerAdapter,
        regions: Sequence[RegionInput],
        schedule: InjectionSchedule,
        fuse_lora: bool = False,
    ):
        self.backbone = backbone
        self.adapter = adapter
        self.schedule = schedule
        self.fuse_lora = fuse_lora
        self.count = len(regions)
        self.rows = GuidancePair.cat([r.conditioning for r in regions])
        self.fused = _FusedIdentities(adapter, regions, schedule)

    def install(self) -> contextlib.AbstractContextManager[Any]:
        return self.adapter.fused_lora() if self.fuse_lora else self.adapter.lora(True)

    def noise(self, model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        pair = GuidancePair(self.rows.uncond, self.rows.cond.replace(embeds=self.fused.for_step()))
        return self.backbone.guided_noise(model_input.expand(self.count, -1, -1, -1), t, pair, self.schedule.guidance)


@torch.no_grad()
def stage_two(
    backbone: Family,
    adapter: PhotoMakerAdapter,
    stage1: StageOne,
    regions: Sequence[RegionInput],
    clean_masks: torch.Tensor,
    schedule: InjectionSchedule,
    *,
    on_step: StepCallback | None = None,
    fuse_lora: bool = False,
) -> torch.Tensor:
    """Re-denoise from step s - 1 with the characters' PhotoMaker identity passes inside their masks.

    Args:
        backbone: The SDXL family of the pipeline.
        adapter: PhotoMaker on the same pipeline (its LoRA is switched on here).
        stage1: Stage 1's result.
        regions: One identity pass per character, in the order of ``clean_masks``.
        clean_masks: (K, H, W) bool cleaned masks at image size.
        schedule: The frame's numbers.
        on_step: Called with each 0-based step index.
        fuse_lora: Merge the LoRA into the weights for the stage instead of running it beside them (speed).

    Returns:
        The final latents (1, C, h, w).
    """
    if clean_masks.shape[0] != len(regions):
        raise ValueError(f"got {len(regions)} regions but {clean_masks.shape[0]} masks")
    passes = PhotoMakerPasses(backbone, adapter, regions, schedule, fuse_lora)
    return redenoise(backbone, stage1, passes, clean_masks, schedule, on_step=on_step)


@torch.no_grad()
def redenoise(
    backbone: Family,
    stage1: StageOne,
    passes: IdentityPasses,
    clean_masks: torch.Tensor,
    schedule: InjectionSchedule,
    *,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Stage 2 for any identity-preserving generator: from stage 1's latents at step s - 1, inside each character's
    progressively dilated mask the noise of its identity pass, outside every mask stage 1's kept noise.

    Args:
        backbone: The family of the pipeline.
        stage1: Stage 1's result.
        passes: The characters' identity passes, in the order of ``clean_masks``.
        clean_masks: (K, H, W) bool cleaned masks at image size.
        schedule: The frame's numbers.
        on_step: Called with each 0-based step index.

    Returns:
        The final latents (1, C, h, w).
    """
    if clean_masks.shape[0] != passes.count:
        raise ValueError(f"got {passes.count} identity passes but {clean_masks.shape[0]} masks")
    latents = stage1.start_latents
    latent_size = tuple(latents.shape[-2:])
    clean = clean_masks.to(latents.device)

    def blended(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        region_noise = passes.noise(model_input, t, i)
        masks = step_masks(clean, i, schedule, latent_size).to(region_noise.dtype)
        union = masks.sum(dim=0)
        kept = stage1.guided[i - schedule.first_injection_step]
        return kept * (1 - union) + (region_noise * masks).sum(dim=0, keepdim=True)

    drawn = sample(
        backbone,
        None,  # the blended prediction reads the regions' conditionings and stage 1's noise
        None,
        schedule.sampling(backbone, latents),
        noise=blended,
        latents=latents,
        start=schedule.first_injection_step,
        installs=[passes.install],
        on_step=None if on_step is None else lambda step: on_step(step.index),
        decode=False,
    )
    return drawn.latents


@torch.no_grad()
def reference_redenoise(
    backbone: Family,
    adapter: PhotoMakerAdapter,
    conditioning: GuidancePair,
    regions: Sequence[RegionInput],
    clean_masks: torch.Tensor,
    initial: torch.Tensor,
    schedule: InjectionSchedule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' formulation, for equivalence tests and cost comparisons (not used to draw).

    Two full runs over a batch of two copies of the frame: stage 1 caches its per-half noise at every step;
    stage 2 starts from the initial noise again, runs the plain UNet on both copies at every step and, from
    step s - 1 on, replaces copy B's noise by stage 1's cached noise outside the masks plus each character's
    identity pass inside its mask, before guidance. Returns (stage 1 latents, stage 2 latents).
    """
    two_copies = conditioning.repeat(2).batch()
    cached: list[torch.Tensor] = []

    def predict(model_input: torch.Tensor, t: torch.Tensor, rows: Any) -> torch.Tensor:
        return backbone.predict(model_input, t, rows, guidance=schedule.guidance)

    def both_copies(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return predict(torch.cat([model_input, model_input]), t, two_copies)

    def first_run(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        noise = both_copies(model_input, t)
        cached.append(noise)
        return cfg_combine(*split_guidance_batch(noise), schedule.guidance_scale)

    def scheduler() -> Any:
        width, height = backbone.image_size(initial)
        return backbone.scheduler(schedule.num_steps, width=width, height=height)

    stage1 = denoise(scheduler(), initial.repeat(2, 1, 1, 1), first_run)

    region_embeds = [r.conditioning.cond.embeds for r in regions]

    def second_run(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        noise = both_copies(model_input, t)
        if i + 1 >= schedule.sweet_spot_step:
            masks = step_masks(clean_masks.to(noise.device), i, schedule, tuple(noise.shape[-2:])).to(noise.dtype)
            union = masks.sum(dim=0).clamp(max=1)
            replaced = torch.cat([cached[i][0:1], cached[i][2:3]]) * (1 - union)
            for k, region in enumerate(regions):
                if schedule.fuse_mode == "repeated" or i + 1 == schedule.sweet_spot_step:
                    region_embeds[k] = adapter.fuse(
                        region_embeds[k], [region.class_position], region.identity[None], schedule.identity_strength
                    )
                pair = GuidancePair(
                    region.conditioning.uncond, region.conditioning.cond.replace(embeds=region_embeds[k])
                )
                copy_b = torch.cat([model_input[1:2], model_input[1:2]])
                with adapter.lora(True):
                    region_noise = predict(copy_b, t, pair.batch())
                replaced = replaced + region_noise * masks[k]
            noise = noise.clone()
            noise[1], noise[3] = replaced[0], replaced[1]
        return cfg_combine(*split_guidance_batch(noise), schedule.guidance_scale)

    stage2 = denoise(scheduler(), initial.repeat(2, 1, 1, 1), second_run)
    return stage1[0:1], stage2[1:2]

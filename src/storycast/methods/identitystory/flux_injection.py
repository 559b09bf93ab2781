"""Re-denoising Identity Injection on FLUX through PuLID-FLUX (our extension of IdentityStory, see
docs/methods/identitystory.md "On FLUX").

Stage 1 is plain FLUX (:func:`.injection.stage_one`, the ID branch attached but given no identity, so FLUX computes
exactly what it does alone). Stage 2 is :func:`.injection.redenoise`, the loop SDXL uses: from stage 1's latents at
step s - 1, inside each character's progressively dilated mask the noise of its identity pass, outside every mask
stage 1's kept noise. A FLUX identity pass (:class:`PulidPasses`) is one transformer evaluation of the character's
region prompt with PuLID-FLUX's ID branch acting on that row with the character's ID tokens; the K characters of a
frame are one batch of K rows, each with its own tokens.

Cost per frame with embedded guidance (FLUX.1-dev): T evaluations for stage 1 and K (T - s + 1) for stage 2, against
T for vanilla FLUX; :func:`reference_redenoise` is the naive full formulation (stage 2 drawn again from the noise,
the plain prediction at every step, one character at a time), for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.identity.pulid_discovery import PulidIdentitySpace, branch_acting
from storycast.identity.pulid_flux_branch import IDTarget
from storycast.methods.identitystory.injection import InjectionSchedule, StageOne, step_masks
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.denoise import denoise


@dataclass
class PulidRegion:
    """One character's identity pass on FLUX.

    Attributes:
        character_id: The character.
        conditioning: Its region prompt's rows (one row per guidance half).
        id_tokens: (K, D) its PuLID ID tokens.
        uncond_tokens: (K, D) PuLID's unconditional ID tokens, for the uncond rows of true CFG; None without it.
    """

    character_id: str
    conditioning: GuidancePair
    id_tokens: torch.Tensor
    uncond_tokens: torch.Tensor | None = None


def region_targets(regions: Sequence[PulidRegion], halves: int, id_weight: float) -> list[list[IDTarget]]:
    """The ID branch's targets of a batch of the regions' rows, laid out as ``Family.guided_noise`` lays the rows
    out ([uncond x K, cond x K] with true CFG): each row its own character's tokens, on every token of the row (the
    masks act on the noise, as the paper's do, not inside the branch)."""
    cond = [[IDTarget(r.id_tokens, weight=id_weight)] for r in regions]
    if halves == 1:
        return cond
    uncond = [[] if r.uncond_tokens is None else [IDTarget(r.uncond_tokens, weight=id_weight)] for r in regions]
    return uncond + cond


class PulidPasses:
    """The characters' identity passes on FLUX: their region prompts as one batch of K rows, PuLID's ID branch
    acting on each row with its character's tokens for the whole of stage 2 (:class:`.injection.IdentityPasses`)."""

    def __init__(
        self,
        space: PulidIdentitySpace,
        regions: Sequence[PulidRegion],
        schedule: InjectionSchedule,
        id_weight: float,
    ):
        self.backbone = space.backbone
        self.space = space
        self.schedule = schedule
        self.count = len(regions)
        self.rows = GuidancePair.cat([r.conditioning for r in regions])
        self.targets = region_targets(regions, schedule.guidance.halves, id_weight)

    def install(self) -> contextlib.AbstractContextManager[Any]:
        return branch_acting(self.space, self.targets)

    def noise(self, model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.backbone.guided_noise(
            model_input.expand(self.count, -1, -1, -1), t, self.rows, self.schedule.guidance
        )


@torch.no_grad()
def reference_redenoise(
    space: PulidIdentitySpace,
    conditioning: GuidancePair,
    regions: Sequence[PulidRegion],
    clean_masks: torch.Tensor,
    initial: torch.Tensor,
    schedule: InjectionSchedule,
    id_weight: float,
) -> tuple[torch.Tensor, StageOne]:
    """The naive full formulation on FLUX, for equivalence tests and cost comparisons (not used to draw).

    Stage 1 from ``initial`` with the frame's prompt, every step's prediction kept. Stage 2 from ``initial`` again
    over all T steps: the frame's own prediction at every step; from step s - 1 on it is replaced by stage 1's
    kept prediction outside every mask plus, inside each character's mask, that character's identity pass made
    alone (one evaluation per character, the branch given only its tokens). Returns (stage 2 latents, stage 1).
    """
    backbone, guidance = space.backbone, schedule.guidance
    kept: list[torch.Tensor] = []

    def scheduler() -> Any:
        width, height = backbone.image_size(initial)
        return backbone.scheduler(schedule.num_steps, width=width, height=height)

    def plain(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return backbone.guided_noise(model_input, t, conditioning, guidance)

    def first_run(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        kept.append(plain(model_input, t, i))
        return kept[-1]

    stage1_latents = denoise(scheduler(), initial, first_run)

    def second_run(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        noise = plain(model_input, t, i)
        if i + 1 < schedule.sweet_spot_step:
            return noise
        masks = step_masks(clean_masks.to(noise.device), i, schedule, tuple(noise.shape[-2:])).to(noise.dtype)
        replaced = kept[i] * (1 - masks.sum(dim=0).clamp(max=1))
        for k, region in enumerate(regions):
            with branch_acting(space, region_targets([region], guidance.halves, id_weight)):
                region_noise = backbone.guided_noise(model_input, t, region.conditioning, guidance)
            replaced = replaced + region_noise * masks[k]
        return replaced

    stage2 = denoise(scheduler(), initial, second_run)
    first = schedule.first_injection_step
    stage1 = StageOne(stage1_latents, torch.empty(0), kept[first:])
    return stage2, stage1

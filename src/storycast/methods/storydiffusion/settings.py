"""Settings of ``storydiffusion``, with the authors' defaults.

Sources (HVision-NKU/StoryDiffusion@8de45e4): the low-VRAM app ``gradio_app_sdxl_specific_id_low_vram.py``
(the one the README recommends) for id_length, sampling rates, steps, guidance, resolution, the scheduler and the
PhotoMaker merge; ``SpatialAttnProcessor2_0`` there for the gate; every variant for FreeU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from storycast.adapters.photomaker import PhotoMakerSettings
from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, ResolveContext, check_range, setting

if TYPE_CHECKING:
    from storycast.attention.consistent import CsaGate

UNET_FAMILIES = ("sd15", "sdxl")

# Names of the sampling rates by up-block self-attention level, highest resolution first: the token-grid side
# at the family's native size (64 x 64 and 32 x 32 at 1024 px on SDXL; 64, 32 and 16 at 512 px on SD 1.5).
RATE_NAMES = ("sa64", "sa32", "sa16")
SAMPLING_SEED_OFFSET = 7919
"""Offset from a group's first frame seed to the seed of its token sampling and gating (a prime, so that the
attention's random stream is not the frame's noise stream)."""


@dataclass(frozen=True)
class ConsistentAttentionSettings(MethodSettings):
    """Consistent Self-Attention on the up-block self-attention layers."""

    sa64: float = setting(
        0.5,
        "Share of the identity frames' tokens sampled at the highest-resolution up-block self-attention layers "
        "(64 x 64 tokens at 1024 px on SDXL; the low-VRAM app's 0.5).",
    )
    sa32: float = setting(
        0.5, "The same at the next level (32 x 32 tokens at 1024 px on SDXL, at 512 px on SD 1.5; the app's 0.5)."
    )
    sa16: float = setting(
        0.3,
        "The same at SD 1.5's 16 x 16-token level (SDXL has none); the authors released no SD 1.5 code, 0.3 is "
        "the default of their commented-out 16 x 16 slider in app.py.",
    )
    sampling: Literal["bernoulli", "fixed"] = setting(
        "bernoulli",
        "'bernoulli': each token kept with the rate's probability, as the authors do (sizes vary per step); "
        "'fixed': exactly round(rate x tokens) random tokens (static shapes, for compiled kernels).",
    )
    plain_steps: int = setting(1, "Steps at the start drawn with plain self-attention (the authors' 1).")
    early_threshold: float = setting(
        0.3, "Before gate_switch_step, a layer call applies CSA when a uniform draw exceeds this (the authors' 0.3)."
    )
    late_threshold: float = setting(0.1, "The same from gate_switch_step on (the authors' 0.1).")
    gate_switch_step: int = setting(
        20, "Step where the threshold changes (the authors' 20, absolute: not scaled with the step count)."
    )
    bank_device: Literal["model", "cpu"] = setting(
        "model",
        "Where the identity frames' sampled tokens are kept between steps: on the model's device (the authors'), "
        "or in CPU memory to spare GPU memory at some speed.",
    )
    blocks: tuple[str, ...] | None = setting(
        None,
        "Blocks whose self-attention shares tokens. None: the up blocks on the UNet families (the authors' 36 "
        "layers on SDXL); on FLUX, where the authors released no code, the single-stream blocks (our choice: the "
        "later half of the network, as the up blocks are of a UNet; joint attention there shares image tokens, each "
        "keeping its rotary position).",
        flat="csa_blocks",
    )

    def validate(self) -> None:
        for name in ("sa64", "sa32", "sa16", "early_threshold", "late_threshold"):
            check_range(name, getattr(self, name), 0, 1)
        check_range("plain_steps", self.plain_steps, 0)
        check_range("gate_switch_step", self.gate_switch_step, 0)

    def resolve(self, context: ResolveContext) -> ConsistentAttentionSettings:
        if self.blocks is not None:
            return self
        return dataclasses.replace(self, blocks=("up",) if context.family in UNET_FAMILIES else ("single",))

    def gate(self) -> CsaGate:
        from storycast.attention.consistent import CsaGate

        return CsaGate(self.plain_steps, self.early_threshold, self.late_threshold, self.gate_switch_step)

    def rate(self, rank: int) -> float:
        """The rate of the ``rank``-th up-block self-attention level, highest resolution first."""
        return getattr(self, RATE_NAMES[min(rank, len(RATE_NAMES) - 1)])


@dataclass(frozen=True)
class StoryDiffusionSettings(MethodSettings):
    """Settings of StoryDiffusion."""

    id_length: int = setting(
        1,
        "Identity frames per character: the first id_length frames naming that character alone are drawn together "
        "and every other frame reads their tokens (the low-VRAM app's 1; its examples use 2-3, the notebook 4).",
    )
    identity_frames: Literal["story", "portraits"] = setting(
        "story",
        "'story': identity frames are story frames, as the authors choose them; 'portraits': each character's "
        "id_length identity images are drawn from its description alone (not saved as frames), for stories where "
        "characters never appear alone (the benchmark's multi-character stories).",
    )
    attention: ConsistentAttentionSettings = setting(
        factory=ConsistentAttentionSettings, help="Consistent Self-Attention."
    )
    scheduler: SchedulerName | None = setting(
        None,
        "Sampler. None: the checkpoint's own ('model'), as the low-VRAM app's default run draws with the pipeline it "
        "loaded at start (its DDIM line 584 is commented out); DDIM on the UNet families when a character has "
        "reference photos, as the app then reloads the pipeline and sets DDIM (line 767). FLUX: its flow-matching "
        "Euler, the only one it runs.",
    )
    freeu: bool | None = setting(
        None,
        "FreeU while drawing. None: on for the UNet families, as every variant of the authors' code (SDXL: s1 0.6, "
        "s2 0.4, b1 1.1, b2 1.2); off on FLUX, which has no UNet decoder to rescale.",
    )
    photomaker: PhotoMakerSettings = setting(
        factory=PhotoMakerSettings,
        help="PhotoMaker v1, used when characters have reference photos (SDXL only; the authors' 'Using Ref Images').",
    )
    style_strength: float = setting(
        0.2,
        "With reference photos: the share of the steps drawn from the text alone before the identity is merged "
        "(the app's 'style strength' 20 %; the merge step is capped at 30, as theirs).",
    )

    def validate(self) -> None:
        check_range("id_length", self.id_length, 1)
        check_range("style_strength", self.style_strength, 0, 1)

    def resolve(self, context: ResolveContext) -> StoryDiffusionSettings:
        resolved = super().resolve(context)
        unet = context.family in UNET_FAMILIES
        return dataclasses.replace(
            resolved,
            scheduler=self.scheduler or ("ddim" if unet and context.references else "model"),
            freeu=unet if self.freeu is None else self.freeu,
        )

    def merge_step(self, steps: int) -> int:
        """The step after which the reference identity conditions the frame (the authors' int(ratio x T), <= 30)."""
        from storycast.identity.photomaker_prompt import merge_step

        return merge_step(self.style_strength, steps)

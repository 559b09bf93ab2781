"""Settings of ``consistory``, each with its source: NVlabs/consistory at commit 8158d41, ``consistory_run.py``
(``run_batch_generation``, ``run_anchor_generation``, ``run_extra_generation``, ``load_pipeline``),
``consistory_pipeline.py``, ``consistory_utils.py`` and ``utils/ptp_utils.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, check_range, setting

DROPOUT_SEED_OFFSET = 6151
"""Offset from a group's first frame seed to the seed of its mask dropout (the attention's random stream is not
the frames' noise stream)."""


@dataclass(frozen=True)
class ConsiStorySettings(MethodSettings):
    """ConsiStory (Tewel et al., SIGGRAPH 2024): subject-driven shared attention and feature injection."""

    anchors: int = setting(
        2,
        "Frames drawn first, together, whose subjects every later frame attends to and takes features from "
        "(consistory_run n_achors=2; the README's anchor mode for long stories). A story needs at least this many.",
    )
    frames_per_group: int = setting(
        1,
        "Later frames drawn as one batch. They see only the anchors, never each other, so the images are those of "
        "one by one; a batch fills a GPU better (run_extra_generation takes a batch of prompts).",
    )
    mask_dropout: float = setting(
        0.5,
        "Share of another frame's subject tokens dropped at each step (mask_dropout=0.5; lower is more consistent, "
        "less varied in pose, the README says).",
    )
    share_attention: bool = setting(
        True, "Subject-driven shared self-attention in the up blocks, from step 1 (perform_sdsa=True).", flat="sdsa"
    )
    share_queries: bool = setting(
        True,
        "Blend each shared layer's query with the query of a vanilla pass during the first steps, for varied "
        "layouts (share_queries=True; one extra UNet evaluation at each of those steps).",
    )
    query_strength_start: float = setting(
        0.9, "Weight of the vanilla query at step 0 (QueryStore strength_start=0.9)."
    )
    query_strength_end: float = setting(
        0.81836735, "Weight of the vanilla query at the last blended step (QueryStore strength_end=0.81836735)."
    )
    query_steps: float = setting(
        0.1, "Blended steps: 0 .. floor(query_steps x T) (query_store t_range [0, n_steps // 10])."
    )
    injection: bool = setting(
        True,
        "Feature injection: a second pass blending each frame's subject with its DIFT correspondences in the "
        "anchors (perform_injection=True; off: one pass, half the evaluations).",
    )
    injection_start: float = setting(
        0.1, "First injected step, as a share of T (inject_range_alpha (n_steps // 10, n_steps // 3, 0.8))."
    )
    injection_end: float = setting(1 / 3, "Last injected step, as a share of T (n_steps // 3), included.")
    injection_alpha: float = setting(
        0.8, "Weight of the source's output at an injected pixel (inject_range_alpha's 0.8)."
    )
    dift_timestep: int = setting(
        261,
        "Timestep whose first-up-block output gives the DIFT features (DIFTLatentStore steps=[261]: DDIM step 36 "
        "of 50); with other step counts, the step whose timestep is closest.",
    )
    dift_after_freeu: bool = setting(
        True,
        "DIFT features as the authors' correspondences read them: the first up block's output after the next "
        "block's FreeU has scaled the first half of its channels by b2 = 1.2 in place (DIFTLatentStore keeps a view "
        "of the output; diffusers' apply_freeu scales in place). false: the block's output as it left the block, "
        "unscaled (FreeU's intent for the backbone, not for features). The same either way with freeu=false.",
    )
    mask_steps: int = setting(
        20,
        "Steps whose cross-attention maps are averaged into the subject masks, the last ones "
        "(aggregate_last_steps_attention keeps x[-20:]).",
    )
    mask_level: int = setting(
        2,
        "Resolution level of the cross-attention maps that make the masks (2: 32 x 32 on SDXL at 1024 px, "
        "AttentionStore attn_res (32, 32)).",
    )
    injection_level: int = setting(
        1,
        "Resolution level of the injected self-attention layers, in the down and up blocks (1: 64 x 64 on SDXL at "
        "1024 px, FeatureInjector inject_res [64], inject_unet_parts ['up', 'down']).",
    )
    freeu: bool = setting(True, "FreeU (s1=0.6, s2=0.4, b1=1.1, b2=1.2) while drawing (load_pipeline enables it).")
    scheduler: SchedulerName = setting("ddim", "Sampler (load_pipeline sets DDIMScheduler).")
    anchor_device: Literal["model", "cpu"] = setting(
        "model",
        "Where the anchors' tokens, features and outputs are kept between frames: the model's device, or CPU memory "
        "(cache_cpu_offloading).",
    )

    def validate(self) -> None:
        check_range("anchors", self.anchors, 1)
        check_range("frames_per_group", self.frames_per_group, 1)
        check_range("mask_dropout", self.mask_dropout, 0, 1)
        check_range("query_steps", self.query_steps, 0, 1)
        check_range("injection_start", self.injection_start, 0, 1)
        check_range("injection_end", self.injection_end, 0, 1)
        check_range("injection_alpha", self.injection_alpha, 0, 1)
        check_range("mask_steps", self.mask_steps, 1)
        check_range("mask_level", self.mask_level, 0)
        check_range("injection_level", self.injection_level, 0)
        check_range("dift_timestep", self.dift_timestep, 0)

    def last_query_step(self, num_steps: int) -> int:
        """The last blended step, floor(query_steps x T) (n_steps // 10 at the default)."""
        return math.floor(self.query_steps * num_steps + 1e-9)

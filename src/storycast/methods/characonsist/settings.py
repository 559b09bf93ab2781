"""Settings of ``characonsist``, with the authors' defaults.

Sources (Murray-Wang/CharaConsist@759018c8b367ec2a08bfc4e96387c697a80a042d):
``models/pipeline_characonsist.py`` (P) for the steps, the merge, the similarity threshold and the mask step;
``models/attention_processor_characonsist.py`` (A) for the layers and where the bank is kept; ``inference.py``
(I) and ``README.md`` (R) for what the released commands switch on. The authors' step indices are steps of a
50-step run (P line 46's ``num_inference_steps=50``, which I never changes); a field left ``None`` takes the
authors' index scaled to the run's step count (identical at 50 steps), ``docs/methods/characonsist.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from storycast.errors import SettingsError
from storycast.settings import MethodSettings, ResolveContext, check_range, setting

AUTHORS_STEPS = 50
"""The step count the authors' step indices belong to (P line 46)."""
AUTHORS_STEP_INDICES = {
    "attention_start": 1,  # P line 68, attn_start_step
    "attention_end": 41,  # P line 69, attn_end_step
    "mask_step": 10,  # P line 75, save_mask_point_step
    "merge_start": 1,  # P line 70, interpolate_start_step
    "merge_decay": 11,  # P line 71, interpolate_decay_step
    "merge_end": 31,  # P line 72, interpolate_end_step
}


def scaled_step(index: int, steps: int) -> int:
    """The authors' step ``index`` of 50 at the same point of a ``steps``-step run (round half up)."""
    return int(index * steps / AUTHORS_STEPS + 0.5)


@dataclass(frozen=True)
class CharaConsistSettings(MethodSettings):
    """Settings of CharaConsist (point-tracking attention, adaptive token merge, foreground/background control)."""

    share_foreground: bool = setting(
        True,
        "Point-tracking attention: a frame's character tokens also attend to its identity frame's tokens at the "
        "matched points, those keys re-positioned to the frame's points (the authors' method; off only to ablate).",
    )
    share_background: bool = setting(
        False,
        "Every frame keeps its identity frame's background: the frame's background tokens also attend to the "
        "identity frame's background tokens at the same places (I's --share_bg, off unless given, line 9; R's "
        "fixed-background example passes it).",
    )
    background_frames: tuple[int, ...] = setting(
        (),
        "Frames (0-based story indices) that keep their identity frame's background while share_background is off: "
        "per-frame background control (the authors' gen-mix notebook mixes kept and varied backgrounds).",
    )
    merge: bool = setting(
        True,
        "Adaptive token merge: matched character tokens' attention outputs move towards the identity frame's, by "
        "merge_weight x their similarity (R's commands pass --use_interpolate; P line 65's default).",
    )
    merge_weight: float = setting(0.8, "Largest merge weight, 0 to 1 (P line 73, interpolate_weight).")
    similarity_threshold: float = setting(
        0.5,
        "Cosine similarity (of attention outputs, averaged over the single-stream layers) a matched pair must "
        "exceed, -1 to 1 (P line 74, sim_thr).",
    )
    attention_start: int | None = setting(
        None, "First step of the shared attention, at least 1 (P line 68: 1). None: scaled from 50 steps."
    )
    attention_end: int | None = setting(
        None, "Step the shared attention stops before (P line 69: 41). None: scaled from 50 steps."
    )
    mask_step: int | None = setting(
        None,
        "Step whose attention gives the masks and the matches (P line 75: 10); the frame's first pass stops after "
        "it. None: scaled from 50 steps.",
    )
    merge_start: int | None = setting(
        None, "First step of the token merge, at least 1 (P line 70: 1). None: scaled from 50 steps."
    )
    merge_decay: int | None = setting(
        None, "Step the merge weight starts its cosine decay (P line 71: 11). None: scaled from 50 steps."
    )
    merge_end: int | None = setting(None, "Step the merge stops before (P line 72: 31). None: scaled from 50 steps.")
    foreground_every: int = setting(
        2,
        "Point-tracking attention and the merge act in every n-th single-stream block, from block 0 "
        "(A line 394: fg_share_freq=2, block_ind % 2 == 0).",
    )
    background_every: int = setting(
        1, "Background sharing acts in every n-th single-stream block (A line 394: bg_share_freq=1, all of them)."
    )
    save_masks: bool = setting(
        False,
        "Save each frame's last foreground mask beside it as <frame>_mask.png (black: background; grey levels: the "
        "characters it names, in order), as I's --save_mask saves them.",
    )
    bank_device: Literal["cpu", "model"] = setting(
        "cpu",
        "Where the identity frame's keys, values and attention outputs are kept: CPU memory, as the authors "
        "(A lines 328-329, 365: .cpu()), or the model's device (faster, costs accelerator memory).",
    )

    def validate(self) -> None:
        check_range("merge_weight", self.merge_weight, 0, 1)
        check_range("similarity_threshold", self.similarity_threshold, -1, 1)
        check_range("foreground_every", self.foreground_every, 1)
        check_range("background_every", self.background_every, 1)
        for name in ("attention_start", "merge_start"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(
                    f"{name}={value}: the masks a step's shared attention reads are made at an earlier step, so it "
                    f"starts at step 1 at the earliest. Fix: --set {name}=1 (the authors'), or leave it unset."
                )
        for name in ("attention_end", "mask_step", "merge_decay", "merge_end"):
            check_range(name, getattr(self, name), 0)
        for low, high in (
            ("attention_start", "attention_end"),
            ("merge_start", "merge_decay"),
            ("merge_decay", "merge_end"),
        ):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise SettingsError(f"{low}={a} is after {high}={b}. Fix: set {low} <= {high}.")
        if any(frame < 0 for frame in self.background_frames):
            raise SettingsError(f"background_frames={list(self.background_frames)}: frame indices start at 0.")

    def resolve(self, context: ResolveContext) -> CharaConsistSettings:
        steps = context.generation.steps
        if steps is None:
            return self
        scaled = {
            name: scaled_step(index, steps)
            if name not in ("attention_start", "merge_start")
            else max(1, scaled_step(index, steps))
            for name, index in AUTHORS_STEP_INDICES.items()
            if getattr(self, name) is None
        }
        # Rounding a short run's steps can put a window's end before its start (merge_decay 11 of 50 is 0 of 2
        # while merge_start is at least 1): a scaled end is moved up to its start, keeping the authors' order.
        for low, high in (
            ("attention_start", "attention_end"),
            ("merge_start", "merge_decay"),
            ("merge_decay", "merge_end"),
        ):
            if high in scaled:
                scaled[high] = max(scaled[high], scaled.get(low, getattr(self, low)) or 0)
        return dataclasses.replace(self, **scaled)

    def check_steps(self, steps: int) -> None:
        """Refuse step indices a ``steps``-step run does not reach (resolved settings)."""
        if self.mask_step is not None and self.mask_step >= steps:
            raise SettingsError(
                f"mask_step={self.mask_step}: a {steps}-step run has steps 0 to {steps - 1}, so no masks or matches "
                f"would be made. Fix: --set mask_step={steps - 1} or less, or leave it unset (scaled from 50 steps)."
            )
        for name in ("attention_end", "merge_end"):
            value = getattr(self, name)
            if value is not None and value > steps:
                raise SettingsError(
                    f"{name}={value} is past the run's {steps} steps. Fix: --set {name}={steps} or less, or leave it "
                    f"unset (scaled from 50 steps)."
                )

    @property
    def matches_points(self) -> bool:
        """Whether frames need matched points (a first pass to the mask step, the identity's outputs kept)."""
        return self.share_foreground or self.merge

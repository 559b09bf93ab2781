"""Step caching (``ModelSpec.cache``, ``--cache``): diffusers' cache hooks on FLUX's transformer, switched on for
one draw and off after it. Lossy and opt-in: a cached draw skips work of some steps, reusing what an earlier step
of the same draw computed, so its pixels differ from the uncached draw's (``benchmarks/cache_drift.py`` measures
by how much); the run's model identity names the cache, so a cached frame is another frame.

The presets, each diffusers 0.42.1's configuration with its defaults (``diffusers/hooks/<file>.py``, line of the
default), one number settable after a colon:

- ``first-block[:THRESHOLD]``: First Block Cache (``FirstBlockCacheConfig``, ``first_block_cache.py:48``,
  threshold 0.05): the first block runs every step; when its output residual changed by less than THRESHOLD
  (relative mean absolute difference) since the last fully computed step, the other blocks are skipped and their
  cached residual is added instead.
- ``pab[:SKIP]``: Pyramid Attention Broadcast (``PyramidAttentionBroadcastConfig``; the timestep range
  (100, 800), ``pyramid_attention_broadcast.py:78``): between those timesteps, each block's attention is computed
  every SKIP-th call and broadcast in between. SKIP defaults to 2, what diffusers falls back to when none is set
  (``pyramid_attention_broadcast.py:227``) and its own example's (line 208).
- ``faster[:SKIP]``: FasterCache (``FasterCacheConfig``, ``faster_cache.py:135``, block skip range 2, timestep
  range (-1, 681)): attention outputs of skipped calls extrapolated from the last two computed; the unconditional
  batch half is skipped too when true CFG guides the draw (``is_guidance_distilled`` otherwise, FLUX.1-dev's
  embedded guidance).
- ``taylorseer[:INTERVAL]``: TaylorSeer (``TaylorSeerCacheConfig``, ``taylorseer_cache.py:82``, interval 5):
  block outputs predicted by a Taylor expansion over steps, recomputed every INTERVAL-th step.
- ``mag[:THRESHOLD]``: MagCache (``MagCacheConfig``, ``mag_cache.py:110``, threshold 0.06): steps skipped while the
  accumulated error predicted from magnitude ratios stays under THRESHOLD; the ratios are diffusers' calibration of
  FLUX.1-dev (``FLUX_MAG_RATIOS``), interpolated to the draw's step count, so on another FLUX transformer (random
  weights, a fine-tune) the skipped steps are not the calibrated ones.

Why on for one draw: the hooks keep per-call state (the last step's residuals, attention outputs, Taylor factors)
in the transformer. Enabling the cache when a draw starts and disabling it (which removes the hooks and their
state) when it ends means that no group's cached tensors ever feed another group's steps; within a draw, the
whole batch is one cache state (a skip decided for the batch skips every frame of it). Methods whose draws write
tokens that other draws read per step and layer draw those passes uncached (``sample(..., cache=False)``); a
method that has not said it is safe under a cache is refused it before any model loads
(``StoryMethod.step_cache_safe``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storycast.errors import SettingsError

if TYPE_CHECKING:  # ModelSpec parses --cache from light commands: nothing heavy at import
    import torch

CACHE_DEFAULTS: dict[str, float] = {
    "first-block": 0.05,
    "pab": 2,
    "faster": 2,
    "taylorseer": 5,
    "mag": 0.06,
}
"""Each preset's one number (see the module docstring for what it is and where the default comes from)."""
FASTER_ATTENTION_WEIGHT = 0.5
"""FasterCache's weight of the extrapolated attention difference when no callback is given (diffusers 0.42.1,
``hooks/faster_cache.py:532``)."""
INTEGER_VALUES = ("pab", "faster", "taylorseer")
"""Presets whose number counts calls or steps."""


@dataclass(frozen=True)
class StepCache:
    """A step cache preset and its number.

    Attributes:
        kind: One of ``CACHE_DEFAULTS``' names.
        value: Its threshold, skip range or interval.
    """

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> StepCache | None:
        """``KIND`` or ``KIND:VALUE`` (``--cache``); None for "none"."""
        kind, sep, value = text.strip().partition(":")
        if kind == "none" and not sep:
            return None
        if kind not in CACHE_DEFAULTS:
            raise SettingsError(
                f"cache '{text}' is not known. Fix: use none or one of {', '.join(CACHE_DEFAULTS)}, optionally with "
                f"a number after a colon, e.g. --cache first-block:0.08."
            )
        if not sep:
            return cls(kind, CACHE_DEFAULTS[kind])
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        integral = kind in INTEGER_VALUES
        if not number > 0 or (integral and (number != int(number) or number < 2)):
            what = "an integer of at least 2" if integral else "a positive number"
            raise SettingsError(
                f"cache '{text}': the value after the colon must be {what}. Fix: e.g. --cache "
                f"{kind}:{CACHE_DEFAULTS[kind]:g}."
            )
        return cls(kind, number)

    @property
    def label(self) -> str:
        """The canonical ``KIND:VALUE`` (the run manifest's and model identity's name of the cache)."""
        return f"{self.kind}:{self.value:g}"

    def config(self, *, steps: int, guided: bool, clock: StepClock) -> Any:
        """diffusers' configuration of this preset for a draw of ``steps`` steps (``guided``: true CFG's
        [uncond, cond] batch), whose hooks read the current timestep from ``clock``."""
        from diffusers import hooks

        if self.kind == "first-block":
            return hooks.FirstBlockCacheConfig(threshold=self.value)
        if self.kind == "pab":
            return hooks.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=int(self.value), current_timestep_callback=clock.current
            )
        if self.kind == "faster":
            return hooks.FasterCacheConfig(
                spatial_attention_block_skip_range=int(self.value),
                current_timestep_callback=clock.current,
                is_guidance_distilled=not guided,
                # The weight diffusers falls back to (faster_cache.py:532), given so that it does not warn each draw.
                attention_weight_callback=lambda _module: FASTER_ATTENTION_WEIGHT,
            )
        if self.kind == "taylorseer":
            return hooks.TaylorSeerCacheConfig(cache_interval=int(self.value))
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return hooks.MagCacheConfig(threshold=self.value, num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS)

    @contextlib.contextmanager
    def draw(self, denoiser: Any, *, steps: int, guided: bool) -> Iterator[StepClock]:
        """The cache on ``denoiser`` for one draw, removed (with all it holds) after it, whatever happens.

        Yields the :class:`StepClock` the sampler tells each step (the timestep the hooks read). Every evaluation
        of the draw runs in one cache context ("cond"): a batch is one denoiser call here, its rows together.
        """
        if getattr(denoiser, "is_cache_enabled", False):
            raise RuntimeError(
                "the denoiser already has a step cache enabled; a draw enables its own and removes it after"
            )
        clock = StepClock()
        denoiser.enable_cache(self.config(steps=steps, guided=guided, clock=clock))
        try:
            with denoiser.cache_context("cond"):
                yield clock
        finally:
            denoiser.disable_cache()


class StepClock:
    """The current timestep of a draw, as the cache hooks of PAB and FasterCache ask for it (a step-aware state
    of the denoising loop, told each step before the evaluation)."""

    def __init__(self) -> None:
        self.timestep = float("inf")

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        self.timestep = float(timestep)

    def current(self) -> float:
        return self.timestep

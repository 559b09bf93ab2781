"""One batch sampler: the frames of a batch drawn over a family's protocol, written once for every method.

Every method draws a batch the same way: initial latents from each frame's seed, a scheduler for the image size,
a noise function per step, attention processors and adapters switched on for the draw and off after it, progress,
the denoising loop, the decode. :func:`sample` is that sequence; a method supplies only what is its own, its
noise function (guidance blends, identity passes) and what it installs (processors, LoRAs, FreeU), as the
samplers of k-diffusion take a model and a callback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.denoise import DenoiseStep, NoiseFn, denoise
from storycast.pipelines.families.base import Family
from storycast.pipelines.guidance import Guidance
from storycast.pipelines.noise import count_evaluations

Install = contextlib.AbstractContextManager[Any] | Callable[[], contextlib.AbstractContextManager[Any]]
"""A context manager on for the draw (a processor handle, a LoRA switch, FreeU), or a callable making one."""
Progress = Callable[[int, int], None]
"""``progress(completed_steps, total_steps)``."""


@dataclass(frozen=True)
class Sampling:
    """What a batch is drawn with besides its conditioning and seeds.

    Attributes:
        width: Image width in pixels.
        height: Image height in pixels.
        steps: Denoising steps.
        guidance: The family's guidance (:meth:`Family.guidance`).
        scheduler: The sampler's name (one of the family's ``scheduler_kinds``; "model": the model's own).
    """

    width: int
    height: int
    steps: int
    guidance: Guidance
    scheduler: str = "model"

    @classmethod
    def of(cls, backbone: Family, generation: Any, scheduler: str = "model") -> Sampling:
        """The sampling of resolved generation settings (width, height, steps, guidance_scale, and
        true_cfg_scale where set) on ``backbone``."""
        guidance = backbone.guidance(generation.guidance_scale, getattr(generation, "true_cfg_scale", None))
        return cls(generation.width, generation.height, generation.steps, guidance, scheduler)


@dataclass
class Sampled:
    """A drawn batch.

    Attributes:
        latents: The final latents (B, C, h, w).
        images: The decoded images (empty when not decoded).
        evaluations: Denoiser evaluations spent, one per batch row (a guided step of one image counts 2).
    """

    latents: torch.Tensor
    images: list[Any] = field(default_factory=list)
    evaluations: int = 0


def sample(
    backbone: Family,
    conditioning: GuidancePair | None,
    generators: Sequence[torch.Generator] | None,
    sampling: Sampling,
    *,
    noise: NoiseFn | None = None,
    installs: Sequence[Install] = (),
    states: Sequence[Any] = (),
    progress: Progress | None = None,
    on_step: Callable[[DenoiseStep], None] | None = None,
    latents: torch.Tensor | None = None,
    scheduler: Any = None,
    start: int = 0,
    stop: int | None = None,
    step_generators: Sequence[torch.Generator] | None = None,
    decode: bool = True,
    cache: bool = True,
) -> Sampled:
    """Draw one batch: a row per generator, each from its own seed's noise.

    Args:
        backbone: The loaded model's family.
        conditioning: The batch's rows, encoded with ``sampling.guidance`` (its halves); may be None when ``noise``
            is given (a noise function that blends conditionings of its own).
        generators: One per row: the initial noise of each (as the stock pipelines draw it); None when ``latents``
            are given.
        sampling: Size, steps, guidance and sampler.
        noise: The noise function of every step; default: the guided prediction of ``conditioning``.
        installs: Switched on in order for the draw and off in reverse after it, whatever happens.
        states: Per-call attention states: told the batch's layout (guidance halves, text tokens ahead of the
            image tokens in joint attention) and the step before every evaluation.
        progress: ``progress(done, total)`` at the start and after every step.
        on_step: Called after every step with its latents and noise.
        latents: Start from these latents instead of the generators' noise (a stage that starts late).
        scheduler: A scheduler with its timesteps set (default: the family's for ``sampling``).
        start: First step; stop: the step to stop before (default: the end).
        step_generators: Passed to stochastic schedulers' steps (ancestral, DDPM).
        decode: Decode the final latents to images.
        cache: Draw with the backbone's step cache where it has one (``ModelSpec.cache``: lossy, opt-in), enabled
            for this draw alone and removed after it, so that nothing cached crosses into another draw. False:
            every block at every step (a pass whose attention writes what other draws read per step and layer).
    """
    guidance = sampling.guidance
    size = {"width": sampling.width, "height": sampling.height}
    scheduler = (
        scheduler if scheduler is not None else backbone.scheduler(sampling.steps, kind=sampling.scheduler, **size)
    )
    if latents is None:
        if generators is None:
            raise ValueError("sample needs the generators of the initial noise, or the latents to start from")
        latents = backbone.initial_latents(scheduler, generators, **size)
    if conditioning is not None and len(conditioning) != latents.shape[0]:
        raise ValueError(f"the conditioning has {len(conditioning)} rows for a batch of {latents.shape[0]} latents")
    for state in states:
        _tell_layout(state, latents.shape[0], guidance, conditioning)
    if noise is None:
        if conditioning is None:
            raise ValueError("sample needs a conditioning, or a noise function of its own")

        def noise(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            return backbone.guided_noise(model_input, t, conditioning, guidance)

    total = len(scheduler.timesteps)

    def after_step(step: DenoiseStep) -> None:
        if on_step is not None:
            on_step(step)
        if progress is not None:
            progress(step.index + 1, total)

    if progress is not None:
        progress(start, total)
    with contextlib.ExitStack() as stack:
        counter = stack.enter_context(count_evaluations(backbone.denoiser))
        for install in installs:
            stack.enter_context(install() if callable(install) else install)
        step_state = list(states)
        if cache and backbone.step_cache is not None:
            steps = len(scheduler.timesteps[start:stop])
            clock = backbone.step_cache.draw(backbone.denoiser, steps=steps, guided=guidance.halves == 2)
            step_state.append(stack.enter_context(clock))
        final = denoise(
            scheduler,
            latents,
            noise,
            start=start,
            stop=stop,
            on_step=after_step,
            step_state=step_state,
            generator=step_generators,
        )
    images = backbone.decode(final) if decode else []
    return Sampled(final, images, counter.evaluations)


def _tell_layout(state: Any, rows: int, guidance: Guidance, conditioning: GuidancePair | None) -> None:
    """An attention state learns the batch it reads: guidance halves and the text tokens of joint attention."""
    if hasattr(state, "frames") and state.frames != rows:
        raise ValueError(f"an attention state made for {state.frames} frame(s) was given a batch of {rows}")
    if hasattr(state, "guidance"):
        state.guidance = guidance.halves == 2
    if hasattr(state, "text_tokens") and conditioning is not None:
        state.text_tokens = conditioning.cond.text_tokens

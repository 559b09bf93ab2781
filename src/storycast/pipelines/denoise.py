"""The denoising loop, written once, in the shape of k-diffusion's samplers.

A method's stages are calls of :func:`denoise` with different noise functions (plain guidance, an
identity pass blended inside masks, a batch of frames sharing attention) and different start and stop
steps; the loop itself, the scheduler handling and the step index the attention processors read are
here and nowhere else. Schedulers and initial noise come from the model's family
(:mod:`storycast.pipelines.families`), prepared as diffusers' pipelines prepare them, so a seed gives the
stock pipeline's starting noise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

NoiseFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``noise_fn(model_input, timestep, step_index) -> noise``: the (guided) prediction of the denoiser (noise, or
a flow-matching velocity) for the latents at one step; ``model_input`` is already scaled by the scheduler."""


@dataclass(frozen=True)
class DenoiseStep:
    """One finished step, as the ``on_step`` callback sees it.

    Attributes:
        index: 0-based step index in the scheduler's timesteps.
        timestep: The step's timestep.
        latents: Latents entering the step.
        noise: The noise prediction used.
        next_latents: Latents after the scheduler's step.
    """

    index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    next_latents: torch.Tensor


class StepAware(Protocol):
    """Per-call state that must know the current step (attention processors' state)."""

    def begin_step(self, index: int, timestep: torch.Tensor) -> None: ...


def _accepts(function: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(function).parameters


@torch.no_grad()
def denoise(
    scheduler: Any,
    latents: torch.Tensor,
    noise_fn: NoiseFn,
    *,
    start: int = 0,
    stop: int | None = None,
    on_step: Callable[[DenoiseStep], None] | None = None,
    step_state: StepAware | Sequence[StepAware] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run steps ``start .. stop - 1`` of ``scheduler`` from ``latents`` and return the latents after them.

    Args:
        scheduler: A diffusers scheduler with its timesteps set (a family's ``scheduler``); it keeps a step
            index, so each trajectory needs its own.
        latents: Latents entering step ``start`` (the initial noise when ``start`` is 0).
        noise_fn: The noise prediction of one step.
        start: First step (stage 2 of a re-denoising method starts late).
        stop: Step to stop before (default: the end).
        on_step: Called after every step.
        step_state: Told the step index before every noise prediction (never inferred by counting calls); one
            state or several (each told in order).
        generator: Passed to schedulers whose step is stochastic (ancestral, DDPM).
    """
    timesteps = scheduler.timesteps
    stop = len(timesteps) if stop is None else stop
    if not 0 <= start <= stop <= len(timesteps):
        raise ValueError(f"steps {start}..{stop} are outside the scheduler's {len(timesteps)} steps")
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    states = [] if step_state is None else list(step_state) if isinstance(step_state, Sequence) else [step_state]
    step_kwargs = {"generator": generator} if generator is not None and _accepts(scheduler.step, "generator") else {}
    scaled_input = hasattr(scheduler, "scale_model_input")
    for index in range(start, stop):
        timestep = timesteps[index]
        for state in states:
            state.begin_step(index, timestep)
        # Schedulers over Karras sigmas scale the denoiser's input; flow-matching ones take the latents as they are.
        model_input = scheduler.scale_model_input(latents, timestep) if scaled_input else latents
        noise = noise_fn(model_input, timestep, index)
        next_latents = scheduler.step(noise, timestep, latents, return_dict=False, **step_kwargs)[0]
        if on_step is not None:
            on_step(DenoiseStep(index, timestep, latents, noise, next_latents))
        latents = next_latents
    return latents

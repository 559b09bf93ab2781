"""The denoising loop, written once, in the shape of k-diffusion's samplers.

A method's stages are calls of :func:`denoise` with different noise functions (plain guidance, an
identity pass blended inside masks, a batch of frames sharing attention) and different start and stop
steps; the loop itself, the scheduler handling and the step index the attention processors read are
here and nowhere else. Schedulers and initial noise are prepared as diffusers' pipelines prepare them,
so a seed gives the same starting noise as ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

NoiseFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``noise_fn(model_input, timestep, step_index) -> noise``: the (guided) noise prediction of the latents
at one step; ``model_input`` is already scaled by the scheduler."""


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
        scheduler: A diffusers scheduler with its timesteps set (:func:`make_scheduler`); it keeps a step
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
    for index in range(start, stop):
        timestep = timesteps[index]
        for state in states:
            state.begin_step(index, timestep)
        model_input = scheduler.scale_model_input(latents, timestep)
        noise = noise_fn(model_input, timestep, index)
        next_latents = scheduler.step(noise, timestep, latents, return_dict=False, **step_kwargs)[0]
        if on_step is not None:
            on_step(DenoiseStep(index, timestep, latents, noise, next_latents))
        latents = next_latents
    return latents


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
"""Scheduler names a setting may use; "model" keeps the model's own scheduler."""


def make_scheduler(template: Any, num_steps: int, device: Any, kind: str = "model") -> Any:
    """A new scheduler with ``num_steps`` timesteps on ``device``, configured like ``template`` (the loaded
    pipeline's scheduler); ``kind`` switches the algorithm (``SCHEDULERS``) keeping the noise schedule."""
    import diffusers

    if kind == "model":
        cls = type(template)
    elif kind in SCHEDULERS:
        cls = getattr(diffusers, SCHEDULERS[kind])
    else:
        raise ValueError(f"scheduler {kind!r} is not known; use 'model' or one of {', '.join(SCHEDULERS)}")
    scheduler = cls.from_config(template.config)
    scheduler.set_timesteps(num_steps, device=device)
    return scheduler


def latent_shape(pipe: Any, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of one image's latents for a pipeline."""
    return (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


def initial_latents(
    scheduler: Any, shape: tuple[int, ...], generators: Sequence[torch.Generator], *, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """Initial noise, one row per generator, scaled by the scheduler's initial sigma.

    Drawn the way diffusers' pipelines draw it (``randn_tensor`` with one generator per row), so a seed
    gives the same starting noise here as in the stock pipelines. ``shape`` is (C, h, w).
    """
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((len(generators), *shape), generator=list(generators), device=device, dtype=dtype)
    return noise * scheduler.init_noise_sigma

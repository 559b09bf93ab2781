"""Noise prediction: one UNet evaluation of a batch, guided or not, with an optional ControlNet.

These are the ``noise_fn`` building blocks of :func:`storycast.pipelines.denoise.denoise`; they take a
conditioning of any family (:mod:`storycast.pipelines.conditioning`) and keep no state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from storycast.pipelines.conditioning import GuidancePair, TextConditioning
from storycast.pipelines.guidance import cfg_combine, rescale_guidance, split_guidance_batch


@dataclass
class ControlInput:
    """A ControlNet and its condition for one image.

    Attributes:
        model: A diffusers ``ControlNetModel`` for this UNet.
        image: The condition, (1, 3, H, W) in [0, 1] at image size (see :func:`control_image_tensor`).
        scale: ``conditioning_scale`` of the ControlNet's residuals.
    """

    model: Any
    image: torch.Tensor
    scale: float = 1.0


def control_image_tensor(image: Any, width: int, height: int, *, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """A PIL condition image as ControlNets take it: (1, 3, H, W) in [0, 1], resized to the frame.

    Prepared as diffusers' ControlNet pipelines do (``control_image_processor.preprocess``): a
    ``VaeImageProcessor(do_convert_rgb=True, do_normalize=False)`` resizes with its default Lanczos
    filter, then converts to RGB. ``width`` and ``height`` must be multiples of 8, which that
    processor would otherwise round down.
    """
    from diffusers.image_processor import VaeImageProcessor

    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ValueError(f"width and height must be positive multiples of 8, got {width} x {height}.")
    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    return processor.preprocess(image, height=height, width=width).to(device=device, dtype=dtype)


def predict_noise(
    unet: Any,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: TextConditioning,
    cross_attention_kwargs: dict[str, Any] | None = None,
    control: ControlInput | None = None,
) -> torch.Tensor:
    """One UNet evaluation of an already scheduler-scaled batch (with a ControlNet's residuals if given)."""
    inputs = conditioning.unet_inputs()
    residuals: dict[str, Any] = {}
    if control is not None:
        down, mid = control.model(
            model_input,
            timestep,
            controlnet_cond=control.image.expand(model_input.shape[0], -1, -1, -1),
            conditioning_scale=control.scale,
            return_dict=False,
            **inputs,
        )
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(
        model_input,
        timestep,
        cross_attention_kwargs=cross_attention_kwargs,
        return_dict=False,
        **inputs,
        **residuals,
    )[0]


def guided_noise(
    unet: Any,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: GuidancePair,
    guidance_scale: float,
    *,
    guidance_rescale: float = 0.0,
    cross_attention_kwargs: dict[str, Any] | None = None,
    control: ControlInput | None = None,
) -> torch.Tensor:
    """Classifier-free guided noise for a batch of B latents: one UNet call on 2B rows, laid out as
    [uncond x B, cond x B] (what the attention processors' CFG layout assumes).

    ``model_input`` is (B, C, h, w), already scaled by the scheduler; ``conditioning`` has B rows.
    """
    noise = predict_noise(
        unet,
        torch.cat([model_input, model_input]),
        timestep,
        conditioning.batch(),
        cross_attention_kwargs,
        control,
    )
    uncond, cond = split_guidance_batch(noise)
    return rescale_guidance(cfg_combine(uncond, cond, guidance_scale), cond, guidance_rescale)


class UNetCallCounter:
    """Counts UNet evaluations, one per batch row (a guided step of one image counts 2)."""

    def __init__(self) -> None:
        self.evaluations = 0

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.evaluations += int(sample.shape[0])


@contextlib.contextmanager
def count_unet_evaluations(unet: torch.nn.Module) -> Iterator[UNetCallCounter]:
    """Count the UNet's evaluations inside the block (a forward pre-hook, removed on exit)."""
    counter = UNetCallCounter()
    handle = unet.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()

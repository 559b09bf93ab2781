"""What noise predictions take besides the conditioning (a ControlNet's input), and a counter of denoiser
evaluations. The predictions themselves are the families' (:mod:`storycast.pipelines.families`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


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


class EvaluationCounter:
    """Counts denoiser evaluations, one per batch row (a guided step of one image counts 2)."""

    def __init__(self) -> None:
        self.evaluations = 0

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        # The first input: a UNet's ``sample``, a transformer's ``hidden_states``.
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.evaluations += int(sample.shape[0])


@contextlib.contextmanager
def count_evaluations(denoiser: torch.nn.Module) -> Iterator[EvaluationCounter]:
    """Count the denoiser's (UNet's or transformer's) evaluations inside the block (a forward pre-hook, removed on
    exit)."""
    counter = EvaluationCounter()
    handle = denoiser.register_forward_pre_hook(counter, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()

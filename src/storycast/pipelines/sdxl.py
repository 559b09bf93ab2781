"""SDXL sampling parts: text conditioning, guided noise prediction, latents and decoding.

Methods that need their own denoising loop (IdentityStory's two stages, discovery with identity merging)
compose these instead of forking ``StableDiffusionXLPipeline.__call__``. They take the components of a
loaded diffusers pipeline and keep no state between calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TextConditioning:
    """SDXL text conditioning of a batch: per-token embeddings (B, 77, D) and pooled embeddings (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(parts: Sequence[TextConditioning]) -> TextConditioning:
        return TextConditioning(torch.cat([p.embeds for p in parts]), torch.cat([p.pooled for p in parts]))

    def repeat(self, times: int) -> TextConditioning:
        return TextConditioning(self.embeds.repeat(times, 1, 1), self.pooled.repeat(times, 1))


@dataclass
class GuidancePair:
    """Unconditional and conditional text conditioning for classifier-free guidance (same batch size)."""

    uncond: TextConditioning
    cond: TextConditioning

    def batch(self) -> TextConditioning:
        """The UNet batch: all uncond rows, then all cond rows (diffusers' order)."""
        return TextConditioning.cat([self.uncond, self.cond])


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], negative_prompts: Sequence[str]) -> GuidancePair:
    """Encode prompts and their negatives with both SDXL text encoders (diffusers' ``encode_prompt``)."""
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=list(prompts),
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=list(negative_prompts),
    )
    return GuidancePair(TextConditioning(negative_embeds, negative_pooled), TextConditioning(embeds, pooled))


def time_ids(height: int, width: int, batch_size: int, *, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """SDXL's size conditioning: (original h, w, crop top, left, target h, w), uncropped, per row."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.repeat(batch_size, 1)


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
    """A PIL condition image as ControlNets take it: RGB, resized to the frame, (1, 3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return array.to(device=device, dtype=dtype)


def predict_noise(
    unet: Any,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    text: TextConditioning,
    size_ids: torch.Tensor,
    cross_attention_kwargs: dict[str, Any] | None = None,
    control: ControlInput | None = None,
) -> torch.Tensor:
    """One UNet evaluation of an already scheduler-scaled batch (with a ControlNet's residuals if given)."""
    added = {"text_embeds": text.pooled, "time_ids": size_ids}
    residuals: dict[str, Any] = {}
    if control is not None:
        down, mid = control.model(
            model_input,
            timestep,
            encoder_hidden_states=text.embeds,
            controlnet_cond=control.image.expand(model_input.shape[0], -1, -1, -1),
            conditioning_scale=control.scale,
            added_cond_kwargs=added,
            return_dict=False,
        )
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(
        model_input,
        timestep,
        encoder_hidden_states=text.embeds,
        added_cond_kwargs=added,
        cross_attention_kwargs=cross_attention_kwargs,
        return_dict=False,
        **residuals,
    )[0]


def guided_noise(
    unet: Any,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: GuidancePair,
    size_ids: torch.Tensor,
    guidance_scale: float,
    cross_attention_kwargs: dict[str, Any] | None = None,
    control: ControlInput | None = None,
) -> torch.Tensor:
    """Classifier-free guided noise for a batch of B latents: one UNet call on 2B rows.

    ``model_input`` is (B, C, h, w), already scaled by the scheduler; ``size_ids`` has 2B rows.
    """
    noise = predict_noise(
        unet,
        torch.cat([model_input, model_input]),
        timestep,
        conditioning.batch(),
        size_ids,
        cross_attention_kwargs,
        control,
    )
    return cfg_combine(*noise.chunk(2), guidance_scale)


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``u + w (c - u)``."""
    return uncond + guidance_scale * (cond - uncond)


def initial_latents(
    scheduler: Any, shape: tuple[int, ...], generators: Sequence[torch.Generator], *, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """Initial noise, one row per generator, scaled by the scheduler's initial sigma.

    Drawn the way diffusers' pipelines draw it (``randn_tensor`` with one generator per row), so a seed
    gives the same starting noise here as in ``StableDiffusionXLPipeline``. ``shape`` is (C, h, w).
    """
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((len(generators), *shape), generator=list(generators), device=device, dtype=dtype)
    return noise * scheduler.init_noise_sigma


def fresh_scheduler(pipe: Any, num_steps: int) -> Any:
    """A new scheduler of the pipeline's kind with ``num_steps`` timesteps (schedulers keep a step index,
    so each denoising trajectory gets its own)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_steps, device=pipe._execution_device)
    return scheduler


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Any]:
    """Latents -> PIL images, upcasting an fp16 SDXL VAE to fp32 for the decode as diffusers does."""
    vae = pipe.vae
    needs_upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if needs_upcast:
        vae.to(torch.float32)
    try:
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        images = vae.decode(scaled, return_dict=False)[0]
    finally:
        if needs_upcast:
            vae.to(torch.float16)
    return pipe.image_processor.postprocess(images, output_type="pil")

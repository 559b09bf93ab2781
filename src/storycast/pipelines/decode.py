"""Latents to images, as diffusers' pipelines decode them."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Any]:
    """Latents -> PIL images, upcasting an fp16 VAE that asks for it (SDXL's) to fp32 for the decode."""
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

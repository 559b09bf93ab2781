"""Classifier-free guidance as pure functions: tensors in, tensors out."""

from __future__ import annotations

import torch


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``u + w (c - u)``."""
    return uncond + guidance_scale * (cond - uncond)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules...", §3.4; diffusers'
    ``rescale_noise_cfg``): match the guided prediction's per-sample std to the conditional one's, then
    blend ``rescale`` of that with ``1 - rescale`` of the guided prediction. ``rescale`` 0 is a no-op."""
    if rescale == 0:
        return guided
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return rescale * rescaled + (1 - rescale) * guided


def split_guidance_batch(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A UNet output over [uncond rows, cond rows] split into its two halves."""
    if noise.shape[0] % 2:
        raise ValueError(f"a guidance batch has an even number of rows, got {noise.shape[0]}")
    uncond, cond = noise.chunk(2)
    return uncond, cond

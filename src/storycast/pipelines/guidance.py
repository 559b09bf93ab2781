"""Classifier-free guidance as pure functions: tensors in, tensors out."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Guidance:
    """How each denoiser evaluation of a sampling run is guided, as a family resolves it from the generation
    settings.

    Attributes:
        scale: Classifier-free guidance over a batch of [uncond rows, cond rows] (SD's guidance scale; FLUX's
            "true CFG"); None: the cond rows alone, unguided or guided by ``embedded``.
        embedded: A guidance-distilled model's guidance value, given to the model as an input (FLUX.1-dev's 3.5);
            None for models that take none.
        rescale: Guidance rescale of :func:`rescale_guidance` (0: off).
    """

    scale: float | None
    embedded: float | None = None
    rescale: float = 0.0

    @property
    def halves(self) -> int:
        """Guidance halves of the denoiser batch: 2 ([uncond, cond]) with classifier-free guidance, else 1."""
        return 1 if self.scale is None else 2

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        """The guided prediction of a denoiser output over ``halves`` halves."""
        if self.scale is None:
            return noise
        uncond, cond = split_guidance_batch(noise)
        return rescale_guidance(cfg_combine(uncond, cond, self.scale), cond, self.rescale)

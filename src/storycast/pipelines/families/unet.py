"""What SD 1.5 and SDXL share: a UNet predicting noise, classifier-free guidance by doubling the batch, the
DDPM-family schedulers, and a VAE decode with its scaling factor."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import torch

from storycast.pipelines.conditioning import GuidancePair, TextConditioning
from storycast.pipelines.families.base import Family
from storycast.pipelines.guidance import Guidance

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
"""Samplers of the UNet families by the name a setting uses; "model" keeps the model's own."""


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


class UNetFamily(Family):
    """A Stable Diffusion UNet family (SD 1.5, SDXL)."""

    denoiser_name = "unet"
    scheduler_kinds: ClassVar[tuple[str, ...]] = ("model", *SCHEDULERS)

    @classmethod
    def matches_checkpoint(cls, keys: Collection[str]) -> bool:
        raise NotImplementedError

    def guidance(self, guidance_scale: float, true_cfg_scale: float | None = None) -> Guidance:
        """Classifier-free guidance at ``guidance_scale`` on every row pair (storycast doubles the batch at any
        scale, where diffusers' pipelines skip the unconditional rows at a scale of 1 or less); a UNet distilled
        with its guidance as an input (LCM's ``time_cond_proj_dim``) takes ``guidance_scale - 1`` embedded instead,
        as ``StableDiffusionXLPipeline`` gives it."""
        if true_cfg_scale is not None:
            raise ValueError(
                f"true_cfg_scale is for families with embedded guidance (FLUX); {self.name}'s guidance_scale is "
                f"already classifier-free guidance"
            )
        if self.denoiser.config.get("time_cond_proj_dim") is not None:
            return Guidance(scale=None, embedded=guidance_scale - 1.0)
        return Guidance(scale=guidance_scale)

    def scheduler(self, steps: int, *, width: int, height: int, kind: str = "model") -> Any:
        return make_scheduler(self.pipe.scheduler, steps, self.device, kind)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        factor = self.pipe.vae_scale_factor
        return (self.denoiser.config.in_channels, height // factor, width // factor)

    def encode(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None] | None,
        *,
        width: int,
        height: int,
        guidance: Guidance | None = None,
    ) -> GuidancePair:
        negatives = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
        if len(prompts) != len(negatives):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        pair = self.encode_pair(list(prompts), [n if n is not None else "" for n in negatives], width, height)
        if guidance is not None and guidance.halves == 1:
            return GuidancePair(None, pair.cond)
        missing = [n is None for n in negatives]
        if any(missing) and self.zeros_without_negative:
            assert pair.uncond is not None
            pair = GuidancePair(pair.uncond.without_text(missing), pair.cond)
        return pair

    @property
    def zeros_without_negative(self) -> bool:
        """Whether the pipeline makes zero unconditional embeddings when called without a negative prompt (SDXL
        base's ``force_zeros_for_empty_prompt``; SD 1.5's pipeline encodes the empty prompt)."""
        return bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))

    def encode_pair(self, prompts: list[str], negatives: list[str], width: int, height: int) -> GuidancePair:
        """Both halves, as the family's pipeline encodes them."""
        raise NotImplementedError

    def predict(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: TextConditioning,
        *,
        guidance: Guidance,
        attention_kwargs: dict[str, Any] | None = None,
        control: Any = None,
    ) -> torch.Tensor:
        """One UNet evaluation (with a ControlNet's residuals if given, and the embedded guidance of a UNet that
        takes one)."""
        inputs = conditioning.denoiser_inputs()
        extra: dict[str, Any] = {}
        if guidance.embedded is not None:
            extra["timestep_cond"] = self._guidance_embedding(guidance.embedded, model_input.shape[0])
        if control is not None:
            down, mid = control.model(
                model_input,
                timestep,
                controlnet_cond=control.image.expand(model_input.shape[0], -1, -1, -1),
                conditioning_scale=control.scale,
                return_dict=False,
                **inputs,
            )
            extra.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return self.denoiser(
            model_input, timestep, cross_attention_kwargs=attention_kwargs, return_dict=False, **inputs, **extra
        )[0]

    def _guidance_embedding(self, value: float, rows: int) -> torch.Tensor:
        dim = self.denoiser.config.time_cond_proj_dim
        scale = torch.full((rows,), value)
        return self.pipe.get_guidance_scale_embedding(scale, embedding_dim=dim).to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Any]:
        """Latents -> PIL images, upcasting an fp16 VAE that asks for it (SDXL's) to fp32 for the decode."""
        vae = self.pipe.vae
        needs_upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcast:
            vae.to(torch.float32)
        try:
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor
            images = vae.decode(scaled, return_dict=False)[0]
        finally:
            if needs_upcast:
                vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(images, output_type="pil")

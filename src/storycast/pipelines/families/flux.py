"""FLUX.1 (Black Forest Labs): a rectified-flow transformer over packed 2x2 latent patches, with joint
text-image attention in double-stream blocks, then single-stream blocks.

What differs from the UNet families, each mirrored from diffusers' ``FluxPipeline`` (diffusers 0.42,
``pipelines/flux/pipeline_flux.py``) so that a seed gives its pixels:

- prompts: CLIP-L's pooled embedding and T5's per-token embeddings up to a maximum sequence length (512 for
  FLUX.1-dev, 256 for FLUX.1-schnell), text positions all zero;
- timesteps: flow matching's sigmas ``linspace(1, 1/T, T)``, shifted by ``mu`` from the image's sequence length
  (:func:`flow_shift`);
- latents: 16 channels at 1/8 of the image size, drawn unpacked as the pipeline draws them; here they stay
  unpacked between steps (the scheduler's Euler step is elementwise, so packing commutes with it) and are packed
  into 2x2 patches for the transformer alone (:func:`pack_latents`), its output unpacked again;
- the denoiser call: ``timestep / 1000``, image positions (0, row, column) of the patch grid, and for
  FLUX.1-dev the guidance value as an input (guidance distillation); classifier-free guidance over a negative
  prompt ("true CFG") is an option, one batch of [uncond, cond] rows here where the pipeline makes two calls;
- decoding: ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from storycast.pipelines.conditioning import FluxConditioning, GuidancePair, TextConditioning
from storycast.pipelines.families.base import Family
from storycast.pipelines.guidance import Guidance

DEV_SEQUENCE_LENGTH = 512
SCHNELL_SEQUENCE_LENGTH = 256
"""T5 tokens per prompt: FluxPipeline's default (512) for FLUX.1-dev; 256, the most FLUX.1-schnell takes (its model
card and diffusers' FLUX docs)."""


def flow_shift(
    image_tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """``mu`` of flow matching's resolution-dependent timestep shift, linear in the image's token count from
    ``base_shift`` at ``base_tokens`` to ``max_shift`` at ``max_tokens`` (FLUX.1's ``calculate_shift``; the
    defaults are FLUX.1-dev's scheduler config)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return image_tokens * slope + (base_shift - slope * base_tokens)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens, one per 2x2 patch in row-major order
    (``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`: (B, h/2 * w/2, 4C) -> (B, C, h, w), ``height`` and ``width`` the
    latent size."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def image_positions(
    rows: int, columns: int, *, device: Any = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(rows x columns, 3) rotary positions of the patch grid: (0, row, column) per patch, row-major
    (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=device, dtype=dtype)


class Flux(Family):
    """FLUX.1 [dev] and [schnell] (``FluxPipeline``).

    Args:
        pipe: A ``FluxPipeline``.
        device: Where the models run.
        max_sequence_length: T5 tokens per prompt; default: 512 for a guidance-distilled transformer (dev), 256
            otherwise (schnell), at most the T5 tokenizer's own maximum.
    """

    name = "flux"
    pipeline_class_name = "FluxPipeline"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline")
    config_repo = "black-forest-labs/FLUX.1-dev"
    denoiser_name = "transformer"
    scheduler_kinds: ClassVar[tuple[str, ...]] = ("model",)
    size_multiple = 16
    auto_dtype = "bf16"
    needs_negative_prompts = False
    step_caches = True

    def __init__(self, pipe: Any, device: Any, max_sequence_length: int | None = None):
        super().__init__(pipe, device)
        default = DEV_SEQUENCE_LENGTH if self.guidance_embedded else SCHNELL_SEQUENCE_LENGTH
        tokenizer_limit = getattr(pipe.tokenizer_2, "model_max_length", default) or default
        self.max_sequence_length = max_sequence_length or min(default, int(tokenizer_limit))

    @classmethod
    def matches_checkpoint(cls, keys: Collection[str]) -> bool:
        # Black Forest Labs' layout ("double_blocks.N.img_attn...") or diffusers' ("single_transformer_blocks.N..."),
        # with or without a "model.diffusion_model." prefix.
        return any("double_blocks.0.img_attn" in k or "single_transformer_blocks.0." in k for k in keys)

    @staticmethod
    def checkpoint_guidance(keys: Collection[str]) -> bool:
        """Whether a FLUX checkpoint's transformer takes a guidance input (dev) or not (schnell)."""
        return any("guidance_in." in k or "guidance_embedder." in k for k in keys)

    @property
    def guidance_embedded(self) -> bool:
        """FLUX.1-dev takes its guidance as an input; FLUX.1-schnell takes none."""
        return bool(self.denoiser.config.guidance_embeds)

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer_2

    def guidance(self, guidance_scale: float, true_cfg_scale: float | None = None) -> Guidance:
        """FLUX.1-dev's ``guidance_scale`` is given to the transformer; FLUX.1-schnell takes none (its
        ``guidance_scale`` must be 0). ``true_cfg_scale`` > 1 adds classifier-free guidance over the negative
        prompt (``FluxPipeline``'s ``true_cfg_scale``)."""
        if not self.guidance_embedded and guidance_scale:
            raise ValueError(
                f"this FLUX transformer takes no guidance (timestep-distilled, as FLUX.1-schnell), but guidance_scale "
                f"is {guidance_scale}; set it to 0, or use true_cfg_scale for classifier-free guidance"
            )
        cfg = true_cfg_scale if true_cfg_scale is not None and true_cfg_scale > 1 else None
        return Guidance(scale=cfg, embedded=guidance_scale if self.guidance_embedded else None)

    @torch.no_grad()
    def encode(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None] | None,
        *,
        width: int,
        height: int,
        guidance: Guidance | None = None,
    ) -> GuidancePair:
        cond = self._encode(list(prompts))
        if guidance is None or guidance.halves == 1:
            return GuidancePair(None, cond)
        negatives = list(negative_prompts) if negative_prompts is not None else [""] * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        # FluxPipeline runs true CFG only with a negative prompt (the planner refuses true_cfg_scale without one):
        # no negative prompt is the empty one.
        return GuidancePair(self._encode([n if n is not None else "" for n in negatives]), cond)

    def _encode(self, prompts: list[str]) -> FluxConditioning:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return FluxConditioning(embeds, pooled)

    def scheduler(self, steps: int, *, width: int, height: int, kind: str = "model") -> Any:
        if kind != "model":
            raise ValueError(
                f"scheduler {kind!r} is not a FLUX sampler; FLUX runs its flow-matching Euler scheduler ('model')"
            )
        template = self.pipe.scheduler
        scheduler = type(template).from_config(template.config)
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        _, h, w = self.latent_shape(width, height)
        config = scheduler.config
        mu = flow_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        if sigmas is None:
            scheduler.set_timesteps(steps, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return scheduler

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        # The VAE's 8x and the 2x2 packing: latent sides are even (FluxPipeline.prepare_latents).
        factor = self.pipe.vae_scale_factor * 2
        return (self.denoiser.config.in_channels // 4, 2 * (height // factor), 2 * (width // factor))

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
        if control is not None:
            raise ValueError("ControlNets are not supported on FLUX yet")
        rows, _, height, width = model_input.shape
        embedded = None
        if guidance.embedded is not None:
            embedded = torch.full([1], guidance.embedded, device=model_input.device, dtype=torch.float32)
            embedded = embedded.expand(rows)
        text_ids = torch.zeros(conditioning.text_tokens, 3, device=model_input.device, dtype=conditioning.embeds.dtype)
        image_ids = image_positions(
            height // 2, width // 2, device=model_input.device, dtype=conditioning.embeds.dtype
        )
        output = self.denoiser(
            hidden_states=pack_latents(model_input),
            timestep=timestep.expand(rows).to(model_input.dtype) / 1000,
            guidance=embedded,
            txt_ids=text_ids,
            img_ids=image_ids,
            joint_attention_kwargs=attention_kwargs,
            return_dict=False,
            **conditioning.denoiser_inputs(),
        )[0]
        return unpack_latents(output, height, width)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Any]:
        vae = self.pipe.vae
        scaled = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")

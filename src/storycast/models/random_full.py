"""Full-size SDXL and SD 1.5 architectures with random weights, built from their configs in code.

For measuring real speed and memory where the weights cannot be downloaded (benchmarks on a GPU with
no network). The configs are those of ``stabilityai/stable-diffusion-xl-base-1.0`` and
``stable-diffusion-v1-5/stable-diffusion-v1-5``; the text encoders use the tiny tokenizer's vocabulary,
so their token-embedding tables are smaller than the real ones (49,408 rows), which changes memory by
well under 1%. The images are noise: use these for timing, never for quality.
"""

from __future__ import annotations

from typing import Any

from storycast.models.tiny import tiny_tokenizer
from storycast.utils.torch_utils import seeded

SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
                 "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip


def _text_config(tokenizer: Any, sizes: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def random_full_components(family: str, *, device: str = "cpu", dtype: Any = None, seed: int = 0) -> dict[str, Any]:
    """Pipeline components of the real architecture of ``family`` ("sdxl" or "sd15"), random weights,
    created directly on ``device`` (fast on a GPU) and cast to ``dtype``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    dtype = dtype or torch.float32
    tokenizer = tiny_tokenizer()
    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    with seeded(seed), torch.device(device):
        if family == "sdxl":
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
            components = {
                "text_encoder": CLIPTextModel(_text_config(tokenizer, CLIP_L)),
                "text_encoder_2": CLIPTextModelWithProjection(_text_config(tokenizer, OPENCLIP_BIGG)),
                "tokenizer_2": tiny_tokenizer(),
                "image_encoder": None,
                "feature_extractor": None,
            }
        elif family == "sd15":
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**VAE, sample_size=512)
            components = {
                "text_encoder": CLIPTextModel(_text_config(tokenizer, {**CLIP_L, "hidden_act": "quick_gelu"})),
                "safety_checker": None,
                "feature_extractor": None,
                "image_encoder": None,
                "requires_safety_checker": False,
            }
        else:
            raise ValueError(f"family must be 'sdxl' or 'sd15', got {family!r}")
    # Schedulers hold CPU tensors: built outside the device context.
    if family == "sdxl":
        components["scheduler"] = EulerDiscreteScheduler(**schedule, timestep_spacing="leading")
    else:
        components["scheduler"] = PNDMScheduler(**schedule, skip_prk_steps=True, set_alpha_to_one=False)
    components.update(unet=unet, vae=vae, tokenizer=tokenizer)
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            # As torch modules: diffusers' ModelMixin.to(dtype=...) warns about float32 modules these have none of.
            torch.nn.Module.to(module, dtype=dtype).eval()
    return components

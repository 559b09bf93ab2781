"""Tiny random-weight SDXL and SD 1.5 components, built from configs in code.

They keep the real architectures' structure (UNet levels with and without attention, two text
encoders for SDXL, a VAE that downsamples by 8, the real schedulers) at a few thousand times
less compute, so every code path runs offline on a CPU. Construction is seeded: the same seed
gives bit-identical weights on every run, without touching the global random state.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from storycast.utils.torch_utils import seeded

TOKENIZER_PACKAGE = "storycast.models"
TOKENIZER_FOLDER = "tiny_tokenizer"
TEXT_HIDDEN = 32
TEXT_PROJECTION = 32
TIME_EMBED_DIM = 8


def tiny_tokenizer() -> Any:
    """The CLIP-style BPE tokenizer shipped with the package (about 1,900 tokens, 77 positions)."""
    from transformers import CLIPTokenizer

    folder = resources.files(TOKENIZER_PACKAGE) / TOKENIZER_FOLDER
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(str(path))


def tiny_text_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_PROJECTION,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # Four levels: the real 8x downsampling, so a 128 px image has 16x16 latents.
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """Components of a ``StableDiffusionXLPipeline``: SDXL's block layout at toy widths."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=2 * TEXT_HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            # SDXL's added conditioning: 6 time ids and the pooled text embedding of encoder 2.
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_PROJECTION,
            norm_num_groups=8,
        )
    with seeded(seed + 1):
        vae = _vae()
    vae.register_to_config(force_upcast=False)
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    with seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizer))
    # The same schedule as stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd15_components(seed: int = 0) -> dict[str, Any]:
    """Components of a ``StableDiffusionPipeline``: SD 1.5's four levels at toy widths."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=4,
            cross_attention_dim=TEXT_HIDDEN,
            norm_num_groups=8,
        )
    with seeded(seed + 1):
        vae = _vae()
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    # The same schedule as stable-diffusion-v1-5's scheduler_config.json.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_components(family: str = "sdxl", seed: int = 0) -> dict[str, Any]:
    """Components of the tiny pipeline of ``family`` ("sdxl" or "sd15")."""
    if family == "sdxl":
        return tiny_sdxl_components(seed)
    if family == "sd15":
        return tiny_sd15_components(seed)
    raise ValueError(f"family must be 'sdxl' or 'sd15', got {family!r}")


def tiny_pipeline(family: str = "sdxl", seed: int = 0) -> Any:
    """A complete tiny text-to-image pipeline of the given family, on the CPU in fp32."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    components = tiny_components(family, seed)
    return (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline)(**components)

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


def _text_config(tokenizer: Any) -> Any:
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
        text_encoder = CLIPTextModel(_text_config(tokenizer))
    with seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
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
        text_encoder = CLIPTextModel(_text_config(tokenizer))
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


def tiny_photomaker_weights(unet: Any, seed: int = 0, rank: int = 4, config: Any = None) -> dict[str, dict[str, Any]]:
    """A random PhotoMaker v1 adapter for an SDXL UNet, in the official file layout.

    ``{"id_encoder": ..., "lora_weights": ...}`` with an ID encoder of ``config`` (default
    ``PhotoMakerConfig.tiny()``, whose 64-d ID embedding matches the tiny SDXL text width; the full-size
    ``vit_l14()`` for full-size random models) and a LoRA of ``rank`` on every attention projection under
    the official key names (``unet.<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight``).
    """
    from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder

    with seeded(seed + 10):
        encoder = PhotoMakerIDEncoder(config or PhotoMakerConfig.tiny())
        lora = _random_photomaker_lora(unet, rank)
    return {"id_encoder": encoder.state_dict(), "lora_weights": lora}


def _random_photomaker_lora(unet: Any, rank: int) -> dict[str, Any]:
    """A random LoRA of ``rank`` on every attention projection of ``unet``, under the key names of PhotoMaker's
    files (``unet.<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight``), drawn from torch's global RNG."""
    import torch

    from storycast.attention.layers import attention_layers

    lora: dict[str, torch.Tensor] = {}
    for layer in attention_layers(unet):
        module = layer.module
        projections = {
            "q": module.to_q,
            "k": module.to_k,
            "v": module.to_v,
            "out": module.to_out[0],
        }
        for short, linear in projections.items():
            prefix = f"unet.{layer.name}.processor.to_{short}_lora"
            lora[f"{prefix}.down.weight"] = torch.randn(rank, linear.in_features) * 0.1
            lora[f"{prefix}.up.weight"] = torch.randn(linear.out_features, rank) * 0.1
    return lora


def tiny_ip_adapter_plus_weights(unet: Any, embedding_dim: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Random IP-Adapter-Plus weights for ``unet`` in the official file layout: ``{"image_proj": <resampler>,
    "ip_adapter": {"<id>.to_{k,v}_ip.weight"}}``, ids 1, 3, 5... over the cross-attention layers in
    ``unet.attn_processors`` order (as ``h94/IP-Adapter``'s files). The resampler has the official depth (4)
    and head width (64), one head, 4 queries, and reads ``embedding_dim``-wide image features."""
    import torch

    from storycast.identity.id_injector import cross_attention_layers
    from storycast.identity.resampler import Resampler, ResamplerConfig

    width = unet.config.cross_attention_dim
    config = ResamplerConfig(
        dim=width, depth=4, dim_head=64, heads=1, num_queries=4, embedding_dim=embedding_dim, output_dim=width
    )
    with seeded(seed + 40):
        resampler = Resampler(config)
        layers: dict[str, torch.Tensor] = {}
        for number, (_, hidden, context) in enumerate(cross_attention_layers(unet)):
            for part in ("to_k_ip", "to_v_ip"):
                layers[f"{2 * number + 1}.{part}.weight"] = torch.randn(hidden, context) / context**0.5
    return {"image_proj": resampler.state_dict(), "ip_adapter": layers}


def tiny_ip_adapter_weights(unet: Any, embedding_dim: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Random IP-Adapter weights (the global-embedding "ip-adapter_sdxl" kind, not Plus) for ``unet`` in the
    official file layout: ``{"image_proj": {"proj.weight", "proj.bias", "norm.weight", "norm.bias"},
    "ip_adapter": {"<id>.to_{k,v}_ip.weight"}}``, ids 1, 3, 5... over the cross-attention layers in
    ``unet.attn_processors`` order (as ``h94/IP-Adapter``'s ``ip-adapter_sdxl.bin``). The projection maps one
    ``embedding_dim``-wide image embedding to 4 tokens of the UNet's cross-attention width (IP-Adapter's
    ``ImageProjModel``; diffusers reads it as ``ImageProjection``), so diffusers' ``load_ip_adapter`` reads it as it
    reads the real file."""
    import torch

    from storycast.identity.id_injector import cross_attention_layers

    width = unet.config.cross_attention_dim
    tokens = 4  # IP-Adapter's clip_extra_context_tokens
    with seeded(seed + 50):
        proj = torch.nn.Linear(embedding_dim, tokens * width)
        norm = torch.nn.LayerNorm(width)
        torch.nn.init.normal_(norm.weight, mean=1.0, std=0.1)  # not the identity, so the norm's weights matter
        torch.nn.init.normal_(norm.bias, std=0.1)
        image_proj = {f"proj.{k}": v for k, v in proj.state_dict().items()}
        image_proj.update({f"norm.{k}": v for k, v in norm.state_dict().items()})
        layers: dict[str, torch.Tensor] = {}
        for number, (_, hidden, context) in enumerate(cross_attention_layers(unet)):
            for part in ("to_k_ip", "to_v_ip"):
                layers[f"{2 * number + 1}.{part}.weight"] = torch.randn(hidden, context) / context**0.5
    return {"image_proj": image_proj, "ip_adapter": layers}


def random_vit_bigg_image_encoder(seed: int = 0) -> Any:
    """OpenCLIP ViT-bigG/14's vision tower with random weights (the geometry of ``h94/IP-Adapter``'s
    ``sdxl_models/image_encoder``: width 1664, 48 layers, 16 heads, 224 px, patch 14, a 1280-d projection), for
    the full-size random-weight presets that benchmarks time."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=1664,
        intermediate_size=8192,
        num_attention_heads=16,
        num_hidden_layers=48,
        image_size=224,
        patch_size=14,
        projection_dim=1280,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    with seeded(seed + 60):
        return CLIPVisionModelWithProjection(config).eval()


def tiny_photomaker_v2_weights(
    unet: Any, seed: int = 0, rank: int = 4, config: Any = None
) -> dict[str, dict[str, Any]]:
    """A random PhotoMaker v2 adapter for an SDXL UNet, in the official file layout of ``photomaker-v2.bin``.

    ``{"id_encoder": ..., "lora_weights": ...}`` with a v2 ID encoder of ``config`` (default
    ``PhotoMakerV2Config.tiny()``: the tiny tower and 64-d ID width of the tiny SDXL, a 512-d ArcFace input; the
    full-size ``vit_l14()`` for full-size random models), so its keys are v1's plus ``qformer_perceiver.*``, and
    the same LoRA layout as :func:`tiny_photomaker_weights`.
    """
    from storycast.identity.photomaker_v2 import PhotoMakerV2Config, PhotoMakerV2IDEncoder

    with seeded(seed + 11):
        encoder = PhotoMakerV2IDEncoder(config or PhotoMakerV2Config.tiny())
        lora = _random_photomaker_lora(unet, rank)
    return {"id_encoder": encoder.state_dict(), "lora_weights": lora}

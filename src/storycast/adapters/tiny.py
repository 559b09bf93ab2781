"""Random adapter weights in the official file layouts (PhotoMaker v1 and v2, IP-Adapter and IP-Adapter-Plus) and
IP-Adapter's image encoder with random weights, for the tiny and random-weight presets: the same loaders read
them as they read the real files. Construction is seeded, as the tiny models' is (:mod:`storycast.models.tiny`).
"""

from __future__ import annotations

from typing import Any

from storycast.utils.torch_utils import seeded


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


def random_pulid_flux_weights(
    transformer: Any, seed: int = 0, *, tiny: bool = True, intervals: tuple[int, int] = (2, 4)
):
    """Random PuLID-FLUX weights in the official file layout (``pulid_encoder.*``, ``pulid_ca.<n>.*``) for a FLUX
    transformer's block counts and width, and a random EVA02 vision tower's ``visual.*`` state dict: tiny
    geometries for the tiny preset, the official ones (EVA02-CLIP-L-14-336) for the full-size random preset.

    Returns ``(pulid_state_dict, eva_state_dict, pulid_config, eva_config)``.
    """
    from dataclasses import replace

    from storycast.identity.eva_clip import EvaVisionConfig, EvaVisionTower
    from storycast.identity.pulid_flux import PuLIDFlux, PuLIDFluxConfig

    c = transformer.config
    width = c.num_attention_heads * c.attention_head_dim
    double, single = intervals
    if tiny:
        eva_config = EvaVisionConfig.tiny()
        base = PuLIDFluxConfig.tiny(clip_embed_dim=eva_config.embed_dim, vit_width=eva_config.width)
    else:
        eva_config, base = EvaVisionConfig.l14_336(), PuLIDFluxConfig.official()
    config = replace(
        base.for_transformer(c.num_layers, c.num_single_layers, width), double_interval=double, single_interval=single
    )
    with seeded(seed + 20):
        pulid = PuLIDFlux(config)
    with seeded(seed + 21):
        eva = EvaVisionTower(eva_config)
    return pulid.state_dict(), {f"visual.{k}": v for k, v in eva.state_dict().items()}, config, eva_config

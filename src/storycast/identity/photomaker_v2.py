"""PhotoMaker v2 ID encoder (TencentARC/PhotoMaker ``photomaker/model_v2.py``,
``PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken``; ``photomaker/resampler.py``), our code.

v2 keeps v1's CLIP ViT-L/14 tower and fuse module and adds an InsightFace ArcFace embedding of each photo.
Parameter names follow the official module, so the ``id_encoder`` part of ``photomaker-v2.bin`` loads with
``strict=True``:

- ``vision_model.*``, ``visual_projection.weight`` (hidden -> 768), ``visual_projection_2.weight``
  (hidden -> 1280) and ``fuse_module.*``: as in v1 (:mod:`storycast.identity.photomaker`). The official class
  derives from ``CLIPVisionModelWithProjection``, so the file holds both projections and the tower's
  ``post_layernorm``, but v2's forward uses none of them: it reads the tower's last hidden state (all 257
  tokens, before ``post_layernorm``);
- ``qformer_perceiver.token_proj.{0,2}.{weight,bias}``: Linear(512 -> 4 x 512) -> GELU -> Linear(-> 2 x 2048),
  the ArcFace embedding turned into ``num_tokens`` = 2 tokens; ``qformer_perceiver.token_norm``: a LayerNorm
  on each token;
- ``qformer_perceiver.perceiver_resampler.*``: ``FacePerceiverResampler``: ``proj_in`` (hidden 1024 -> 2048),
  4 perceiver layers (``layers.{i}.0``: attention with 16 heads of 128; ``layers.{i}.1``: feed-forward x4),
  ``proj_out`` and ``norm_out``. The 2 tokens are its latents, the CLIP hidden states its features.

ID tokens of one photo (2, 2048) = ``t + resampler(t, clip_hidden)`` with ``t = token_norm(token_proj(arcface))``
(the official ``QFormerPerceiver``, ``use_residual=True``). Each token is fused into its own copy of the class
token (:func:`~storycast.identity.photomaker.fuse_class_tokens`); the class token is repeated
``num_images x num_tokens`` times in the prompt (:func:`~storycast.identity.photomaker_prompt.expand_class_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from storycast.identity.photomaker import (
    FuseModule,
    PhotoMakerConfig,
    build_clip_vision_tower,
    fuse_class_tokens,
)
from storycast.identity.resampler import PerceiverAttention, feed_forward


@dataclass(frozen=True)
class PhotoMakerV2Config(PhotoMakerConfig):
    """Geometry of the PhotoMaker v2 ID encoder: v1's vision tower and projections, and the ArcFace branch.

    Attributes:
        face_embed_dim: Width of the ArcFace embedding (InsightFace ``buffalo_l``: 512).
        num_tokens: ID tokens per photo (2).
        token_ratio: Hidden width of ``token_proj`` over ``face_embed_dim`` (4: 512 -> 2048).
        resampler_depth: Perceiver layers (4).
        resampler_dim_head: Width of one attention head (128; heads = ID width / 128 = 16).
        resampler_ff_mult: Width multiplier of the perceiver's feed-forward blocks (4).
    """

    face_embed_dim: int = 512
    num_tokens: int = 2
    token_ratio: int = 4
    resampler_depth: int = 4
    resampler_dim_head: int = 128
    resampler_ff_mult: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.id_embed_dim % self.resampler_dim_head:
            raise ValueError(
                f"PhotoMakerV2Config: the ID width {self.id_embed_dim} (projection_dim + projection_dim_2) must be "
                f"divisible by resampler_dim_head={self.resampler_dim_head}."
            )

    @classmethod
    def vit_l14(cls) -> PhotoMakerV2Config:
        """The official PhotoMaker v2 geometry (2 ID tokens of 2048 per photo, from a 512-d ArcFace embedding)."""
        return cls()

    @classmethod
    def tiny(cls) -> PhotoMakerV2Config:
        """A random-weight test size: v1's tiny tower (64-d ID width), the real 512-d ArcFace input (what the
        tiny face pack gives) and 4 heads of 16 in the resampler."""
        return cls(**asdict(PhotoMakerConfig.tiny()), resampler_dim_head=16)

    @property
    def resampler_heads(self) -> int:
        """Attention heads of the resampler: ``cross_attention_dim // 128`` in the official code."""
        return self.id_embed_dim // self.resampler_dim_head


class FacePerceiverResampler(nn.Module):
    """Given latents (n, T, dim) attend to image features (n, L, embedding_dim) (official ``FacePerceiverResampler``:
    IP-Adapter's resampler without learned latents)."""

    def __init__(
        self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int, output_dim: int, ff_mult: int
    ):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:  # type: ignore[misc]
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    """ArcFace embeddings (n, face_embed_dim) and CLIP hidden states (n, L, hidden) -> ID tokens (n, T, D)
    (official ``QFormerPerceiver``, with its residual)."""

    def __init__(self, config: PhotoMakerV2Config):
        super().__init__()
        self.num_tokens = config.num_tokens
        self.dim = config.id_embed_dim
        hidden = config.face_embed_dim * config.token_ratio
        self.token_proj = nn.Sequential(
            nn.Linear(config.face_embed_dim, hidden), nn.GELU(), nn.Linear(hidden, self.dim * self.num_tokens)
        )
        self.token_norm = nn.LayerNorm(self.dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=self.dim,
            depth=config.resampler_depth,
            dim_head=config.resampler_dim_head,
            heads=config.resampler_heads,
            embedding_dim=config.hidden_size,
            output_dim=self.dim,
            ff_mult=config.resampler_ff_mult,
        )

    def forward(self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        tokens = self.token_norm(self.token_proj(face_embeds).reshape(-1, self.num_tokens, self.dim))
        return tokens + self.perceiver_resampler(tokens, clip_hidden)


class PhotoMakerV2IDEncoder(nn.Module):
    """PhotoMaker v2 ID encoder: CLIP vision tower, ArcFace token branch, fuse module (see module docstring)."""

    version = "v2"

    def __init__(self, config: PhotoMakerV2Config | None = None):
        super().__init__()
        self.config = config or PhotoMakerV2Config.vit_l14()
        if not isinstance(self.config, PhotoMakerV2Config):
            raise TypeError(f"PhotoMakerV2IDEncoder needs a PhotoMakerV2Config, got {type(self.config).__name__}.")
        self.vision_model = build_clip_vision_tower(self.config)
        self.visual_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        self.visual_projection_2 = nn.Linear(self.config.hidden_size, self.config.projection_dim_2, bias=False)
        self.fuse_module = FuseModule(self.config.id_embed_dim)
        self.qformer_perceiver = QFormerPerceiver(self.config)

    def embed(self, pixel_values: torch.Tensor, face_embeds: torch.Tensor) -> torch.Tensor:
        """ID tokens (n, num_tokens, D) of CLIP-normalised photos (n, 3, image_size, image_size) and their ArcFace
        embeddings (n, face_embed_dim), the raw ones InsightFace calls ``face.embedding`` (not L2-normalised)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixel_values must have shape (n, 3, {size}, {size}), got {tuple(pixel_values.shape)}. Fix: "
                "preprocess with storycast.identity.image_embedding.clip_preprocess."
            )
        if face_embeds.shape != (pixel_values.shape[0], self.config.face_embed_dim):
            raise ValueError(
                f"face_embeds must have shape ({pixel_values.shape[0]}, {self.config.face_embed_dim}): one ArcFace "
                f"embedding per photo, got {tuple(face_embeds.shape)}."
            )
        weight = self.qformer_perceiver.token_norm.weight
        hidden = self.vision_model(pixel_values=pixel_values.to(weight.device, weight.dtype)).last_hidden_state
        return self.qformer_perceiver(face_embeds.to(weight.device, weight.dtype), hidden)

    def forward(self, pixel_values: torch.Tensor, face_embeds: torch.Tensor) -> torch.Tensor:
        return self.embed(pixel_values, face_embeds)

    def fuse(
        self,
        prompt_embeds: torch.Tensor,
        id_embeds: torch.Tensor,
        class_tokens: torch.Tensor | Sequence[int],
    ) -> torch.Tensor:
        """:func:`~storycast.identity.photomaker.fuse_class_tokens` with this encoder's fuse module."""
        return fuse_class_tokens(self.fuse_module, prompt_embeds, id_embeds, class_tokens)

"""PhotoMaker v1 ID encoder (Li et al., CVPR 2024; TencentARC/PhotoMaker ``photomaker/model.py``), our code.

Structure and parameter names follow the official module so that the ``id_encoder`` part of
``photomaker-v1.bin`` loads with ``strict=True``:

- ``vision_model.*``: a CLIP ViT-L/14 vision tower (224 px, hidden 1024, 24 layers, 16 heads, patch 14),
  the stock ``transformers`` one;
- ``visual_projection.weight`` (hidden -> 768) and ``visual_projection_2.weight`` (hidden -> 1280), both
  bias-free; the ID embedding of an image is ``[proj(pooled) ; proj_2(pooled)]``, 2048-d;
- ``fuse_module.{mlp1,mlp2}.{layernorm,fc1,fc2}.{weight,bias}`` and ``fuse_module.layer_norm.{weight,bias}``:
  ``fused = LN(mlp2(mlp1([text ; id]) + text))`` where ``mlp1`` maps 2D -> D -> D (no residual) and ``mlp2``
  maps D -> D -> D with a residual; each MLP is LayerNorm -> Linear -> GELU -> Linear.

The fused embedding replaces the class word's token embedding (e.g. of "woman") in the SDXL prompt embedding
(77 x 2048 = CLIP-L 768 ; OpenCLIP-bigG 1280), see :func:`fuse_class_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig


@dataclass(frozen=True)
class PhotoMakerConfig:
    """Geometry of the PhotoMaker v1 ID encoder.

    Attributes:
        hidden_size: Width of the CLIP vision transformer (ViT-L/14: 1024).
        intermediate_size: Width of its MLPs (4096).
        num_attention_heads: Attention heads per layer (16).
        num_hidden_layers: Transformer layers (24).
        image_size: Input side in pixels (224).
        patch_size: Patch side in pixels (14).
        projection_dim: Output of ``visual_projection`` (768, the CLIP-L text width).
        projection_dim_2: Output of ``visual_projection_2`` (1280, the OpenCLIP-bigG text width).
        hidden_act: Activation of the vision MLPs (CLIP: "quick_gelu").
        layer_norm_eps: Epsilon of the vision LayerNorms (1e-5).
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    projection_dim_2: int = 1280
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in ("hidden_act", "layer_norm_eps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PhotoMakerConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"PhotoMakerConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.image_size < self.patch_size:
            raise ValueError(f"PhotoMakerConfig.image_size={self.image_size} must be >= patch_size={self.patch_size}.")

    @classmethod
    def vit_l14(cls) -> PhotoMakerConfig:
        """The official PhotoMaker v1 geometry (ID embedding 768 + 1280 = 2048)."""
        return cls()

    @classmethod
    def tiny(cls) -> PhotoMakerConfig:
        """A random-weight test size: hidden 32, 2 layers, 32 px; projections 24 + 40 = 64-d ID embedding
        (the 768 : 1280 split scaled down)."""
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
            projection_dim=24,
            projection_dim_2=40,
        )

    @property
    def id_embed_dim(self) -> int:
        """Width of the ID embedding and of the prompt embedding it is fused into (2048 for SDXL)."""
        return self.projection_dim + self.projection_dim_2

    def vision_config(self) -> CLIPVisionConfig:
        """The ``transformers.CLIPVisionConfig`` of the vision tower (built in code, nothing downloaded)."""
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_hidden_layers=self.num_hidden_layers,
            image_size=self.image_size,
            patch_size=self.patch_size,
            projection_dim=self.projection_dim,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )


class FuseMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, with an optional residual (official ``MLP``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool):
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError(f"a residual MLP needs in_dim == out_dim, got {in_dim} and {out_dim}.")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    """Fuses a class-token text embedding with an ID embedding, both D-wide (official ``FuseModule``)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.mlp1 = FuseMLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = FuseMLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, text_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        """``LN(mlp2(mlp1([text ; id]) + text))`` on (..., D) tensors of one shape (official ``fuse_fn``)."""
        stacked = torch.cat([text_embeds, id_embeds], dim=-1)
        fused = self.mlp1(stacked) + text_embeds
        return self.layer_norm(self.mlp2(fused))


def build_clip_vision_tower(config: PhotoMakerConfig) -> nn.Module:
    """The stock CLIP vision transformer whose parameter names are ``embeddings.*``, ``pre_layrnorm.*``,
    ``encoder.layers.N.*`` and ``post_layernorm.*``, and whose output has ``pooler_output``.

    transformers 4.x wraps it as ``CLIPVisionModel.vision_model``; 5.x has it as ``CLIPVisionModel`` itself.
    """
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel(config.vision_config())
    inner = getattr(tower, "vision_model", None)
    return inner if isinstance(inner, nn.Module) else tower


class PhotoMakerIDEncoder(nn.Module):
    """PhotoMaker v1 ID encoder: CLIP vision tower, two projections, fuse module (see module docstring)."""

    version = "v1"

    def __init__(self, config: PhotoMakerConfig | None = None):
        super().__init__()
        self.config = config or PhotoMakerConfig.vit_l14()
        self.vision_model = build_clip_vision_tower(self.config)
        self.visual_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        self.visual_projection_2 = nn.Linear(self.config.hidden_size, self.config.projection_dim_2, bias=False)
        self.fuse_module = FuseModule(self.config.id_embed_dim)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ID embeddings (n, D) of CLIP-normalised images (n, 3, image_size, image_size): the concatenation
        ``[visual_projection(pooled) ; visual_projection_2(pooled)]`` (the official ``get_final_id_embeds``)."""
        expected = (3, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (n, {', '.join(map(str, expected))}), got "
                f"{tuple(pixel_values.shape)}. Fix: preprocess with storycast.identity.image_embedding."
            )
        weight = self.visual_projection.weight
        pooled = self.vision_model(pixel_values=pixel_values.to(weight.device, weight.dtype)).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embed(pixel_values)

    def fuse(
        self,
        prompt_embeds: torch.Tensor,
        id_embeds: torch.Tensor,
        class_tokens: torch.Tensor | Sequence[int],
    ) -> torch.Tensor:
        """:func:`fuse_class_tokens` with this encoder's fuse module."""
        return fuse_class_tokens(self.fuse_module, prompt_embeds, id_embeds, class_tokens)


def class_tokens_mask(class_tokens: torch.Tensor | Sequence[int], batch_size: int, seq_len: int) -> torch.Tensor:
    """(batch_size, seq_len) bool mask from a bool mask of shape (seq_len,) or (batch_size, seq_len), or from
    token positions (a sequence of ints or a 1-D integer tensor) shared by every row."""
    if isinstance(class_tokens, torch.Tensor) and class_tokens.dtype == torch.bool:
        if class_tokens.shape == (seq_len,):
            return class_tokens.unsqueeze(0).expand(batch_size, seq_len)
        if class_tokens.shape == (batch_size, seq_len):
            return class_tokens
        raise ValueError(
            f"class_tokens mask must have shape ({seq_len},) or ({batch_size}, {seq_len}), "
            f"got {tuple(class_tokens.shape)}."
        )
    if isinstance(class_tokens, torch.Tensor):
        if class_tokens.ndim != 1 or class_tokens.is_floating_point():
            raise ValueError("class_tokens positions must be a 1-D integer tensor or a bool mask.")
        positions = class_tokens.tolist()
    else:
        positions = list(class_tokens)
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < seq_len for p in positions):
        raise ValueError(f"class_tokens positions must be integers in [0, {seq_len}), got {positions}.")
    mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    mask[:, positions] = True
    return mask


def fuse_class_tokens(
    fuse_module: FuseModule,
    prompt_embeds: torch.Tensor,
    id_embeds: torch.Tensor,
    class_tokens: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """Replace the class-token embeddings of ``prompt_embeds`` by ``fuse_module(text, id)``; a new tensor.

    Every other position is returned bit-identical. The official pipeline fuses the cond prompt only, at the
    one position of the class word (the token before the trigger word, after the trigger is removed).

    Args:
        fuse_module: The encoder's :class:`FuseModule`.
        prompt_embeds: (B, L, D) SDXL prompt embeddings (D = 2048 for SDXL).
        id_embeds: The identity: (D,) or (1, D) for every class token of every row; (B, D) one per row; or
            (B, K, D) one per class token, K = number of class tokens in each row, in token order.
        class_tokens: Bool mask (L,) or (B, L), or token positions shared by all rows. A row with no class
            token is left unchanged (e.g. the uncond half of a guidance batch).
    """
    if prompt_embeds.ndim != 3:
        raise ValueError(f"prompt_embeds must have shape (B, L, D), got {tuple(prompt_embeds.shape)}.")
    batch_size, seq_len, dim = prompt_embeds.shape
    if dim != fuse_module.embed_dim:
        raise ValueError(f"prompt_embeds width {dim} does not match the fuse module's {fuse_module.embed_dim}.")
    if id_embeds.shape[-1] != dim:
        raise ValueError(f"id_embeds must end in dimension {dim}, got shape {tuple(id_embeds.shape)}.")
    mask = class_tokens_mask(class_tokens, batch_size, seq_len).to(prompt_embeds.device)
    counts = mask.sum(dim=1)
    total = int(counts.sum())
    if total == 0:
        return prompt_embeds.clone()
    if id_embeds.ndim == 1 or (id_embeds.ndim == 2 and id_embeds.shape[0] == 1):
        per_token = id_embeds.reshape(1, dim).expand(total, dim)
    elif id_embeds.ndim == 2 and id_embeds.shape[0] == batch_size:
        per_token = id_embeds.to(prompt_embeds.device).repeat_interleave(counts, dim=0)
    elif id_embeds.ndim == 3 and id_embeds.shape[0] == batch_size:
        if not bool((counts == id_embeds.shape[1]).all()):
            raise ValueError(
                f"id_embeds has {id_embeds.shape[1]} embeddings per row but the rows have {counts.tolist()} "
                "class tokens. Fix: give one embedding per class token, or a (B, D) / (D,) identity."
            )
        per_token = id_embeds.reshape(-1, dim)
    else:
        raise ValueError(
            f"id_embeds must have shape ({dim},), ({batch_size}, {dim}) or ({batch_size}, K, {dim}), got "
            f"{tuple(id_embeds.shape)}. Fix: a stored (1, 1, 1, {dim}) identity can be passed as "
            "identity.reshape(-1)."
        )
    weight = fuse_module.layer_norm.weight
    text = prompt_embeds[mask].to(weight.device, weight.dtype)
    fused = fuse_module(text, per_token.to(weight.device, weight.dtype))
    out = prompt_embeds.clone()
    out[mask] = fused.to(out.device, out.dtype)
    return out

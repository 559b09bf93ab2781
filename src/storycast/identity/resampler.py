"""The perceiver resampler of IP-Adapter-Plus (Ye et al. 2023, ``ip_adapter/resampler.py``), our code.

It turns an image encoder's patch features (CLIP ViT-H/14's penultimate hidden states, 257 x 1280) into a
few identity tokens in the UNet's cross-attention width (16 x 768 on SD 1.5). Storynizor's ID-Injector
uses the same architecture (``docs/methods/storynizor.md``), so the public IP-Adapter-Plus(-Face) weights
load into it. Parameter names follow the official module, so ``image_proj`` of those files loads with
``strict=True``:

- ``latents`` (1, queries, dim): the learned queries; ``proj_in`` (features -> dim), ``proj_out``
  (dim -> output) and ``norm_out``;
- ``layers.{i}.0``: a perceiver attention (``norm1`` on the features, ``norm2`` on the latents, bias-free
  ``to_q``, ``to_kv``, ``to_out``) whose keys and values come from [features ; latents];
- ``layers.{i}.1``: LayerNorm -> bias-free Linear (x ff_mult) -> GELU -> bias-free Linear, each block
  with a residual.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResamplerConfig:
    """Geometry of the resampler (defaults: IP-Adapter-Plus on SD 1.5, ``IPAdapterPlus.init_proj``).

    Attributes:
        dim: Width of the latents (768).
        depth: Perceiver layers (4).
        dim_head: Width of one attention head (64).
        heads: Attention heads (12).
        num_queries: Identity tokens produced (16).
        embedding_dim: Width of the image features (CLIP ViT-H/14: 1280).
        output_dim: Width of the identity tokens: the UNet's cross-attention width (768).
        ff_mult: Width multiplier of the feed-forward blocks (4).
    """

    dim: int = 768
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 768
    ff_mult: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ResamplerConfig.{name} must be a positive integer, got {value!r}.")

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], dim_head: int = 64) -> ResamplerConfig:
        """The geometry of a resampler state dict in the official layout. The head count is not in the shapes:
        it is the attention width over ``dim_head`` (IP-Adapter always uses 64)."""
        latents = state["latents"]
        depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
        inner = state["layers.0.0.to_q.weight"].shape[0]
        return cls(
            dim=int(latents.shape[-1]),
            depth=depth,
            dim_head=dim_head,
            heads=max(1, inner // dim_head),
            num_queries=int(latents.shape[1]),
            embedding_dim=int(state["proj_in.weight"].shape[1]),
            output_dim=int(state["proj_out.weight"].shape[0]),
            ff_mult=max(1, state["layers.0.1.1.weight"].shape[0] // int(latents.shape[-1])),
        )


class PerceiverAttention(nn.Module):
    """Latents attend to [features ; latents] (official ``PerceiverAttention``)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features = self.norm1(features)
        latents = self.norm2(latents)
        batch, length, _ = latents.shape
        query = self.to_q(latents)
        key, value = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, self.heads, self.dim_head).transpose(1, 2)

        # The official code scales q and k by dim_head ** -0.25 each (more stable in fp16 than one
        # dim_head ** -0.5) and takes the softmax in float32.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (heads(query) * scale) @ (heads(key) * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ heads(value)).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, bias-free linears (official ``FeedForward``; indices 0, 1, 3)."""
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class Resampler(nn.Module):
    """Image features (B, L, embedding_dim) -> identity tokens (B, num_queries, output_dim)."""

    def __init__(self, config: ResamplerConfig | None = None):
        super().__init__()
        self.config = config = config or ResamplerConfig()
        self.latents = nn.Parameter(torch.randn(1, config.num_queries, config.dim) / config.dim**0.5)
        self.proj_in = nn.Linear(config.embedding_dim, config.dim)
        self.proj_out = nn.Linear(config.dim, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(config.dim, config.dim_head, config.heads),
                    feed_forward(config.dim, config.ff_mult),
                ]
            )
            for _ in range(config.depth)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        features = self.proj_in(features)
        for attention, ff in self.layers:  # type: ignore[misc]
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

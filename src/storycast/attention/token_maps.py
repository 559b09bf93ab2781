"""Cross-attention maps of chosen prompt tokens, gathered while a UNet denoises.

Used to locate characters without a detector: the map of a character's class word ("woman") marks where
the model draws her. The processor is diffusers' ``AttnProcessor2_0`` computation with the attention
probabilities made explicit, so that the chosen tokens' columns can be kept; its output equals the stock
processor's up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.layers import ProcessorHandle, install_processors, select_layers


class TokenMapStore:
    """Per-call state: the running sum of the chosen tokens' attention maps.

    Maps are averaged over heads, summed over layers and steps, and kept at ``size`` x ``size``.
    Only the conditional half of a guidance batch (the last ``rows`` rows) is recorded.

    Args:
        token_indices: Rows of token positions to record, one list per image row:
            ``token_indices[b][k]`` is the position of the k-th token of interest in row b's prompt.
        size: Side of the stored maps.
        rows: How many rows at the end of the batch are recorded (the cond half).
    """

    def __init__(self, token_indices: Sequence[Sequence[int]], size: int, rows: int | None = None):
        self.token_indices = torch.as_tensor([list(r) for r in token_indices], dtype=torch.long)
        self.size = size
        self.rows = rows if rows is not None else len(token_indices)
        self.maps: torch.Tensor | None = None
        self.count = 0
        self.enabled = True

    def add(self, probs: torch.Tensor, heads: int) -> None:
        """``probs``: (rows*heads, queries, keys) attention probabilities of the recorded rows."""
        queries = probs.shape[1]
        side = math.isqrt(queries)
        if side * side != queries:
            return  # non-square latent: maps are only gathered for square images
        probs = probs.reshape(-1, heads, queries, probs.shape[-1]).mean(dim=1)
        index = self.token_indices.to(probs.device)
        picked = torch.gather(probs, 2, index[:, None, :].expand(-1, queries, -1))  # (rows, queries, tokens)
        picked = picked.permute(0, 2, 1).reshape(probs.shape[0], -1, side, side).float()
        if side != self.size:
            picked = F.interpolate(picked, size=(self.size, self.size), mode="bilinear", align_corners=False)
        self.maps = picked if self.maps is None else self.maps + picked
        self.count += 1

    def mean_maps(self) -> torch.Tensor:
        """(rows, tokens, size, size) mean map; zeros if nothing was recorded."""
        if self.maps is None:
            return torch.zeros(len(self.token_indices), self.token_indices.shape[1], self.size, self.size)
        return self.maps / self.count


class TokenMapProcessor:
    """``AttnProcessor2_0`` for cross attention, recording the chosen tokens' maps into a store."""

    def __init__(self, store: TokenMapStore):
        self.store = store

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(dim=-1).to(value.dtype)
        if self.store.enabled:
            recorded = probs[batch_size - self.store.rows :]
            self.store.add(recorded.reshape(-1, *recorded.shape[2:]), heads)
        hidden_states = torch.matmul(probs, value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, heads * head_dim)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def record_token_maps(unet: Any, store: TokenMapStore, levels: Sequence[int]) -> ProcessorHandle:
    """Install recording processors on the cross-attention layers at ``levels``; the handle restores them."""
    layers = select_layers(unet, kind="cross", levels=levels)
    return install_processors(unet, {layer.processor_key: TokenMapProcessor(store) for layer in layers})

"""Cross-attention maps of chosen prompt tokens, gathered while a UNet or FLUX denoises.

Used to locate characters without a detector: the map of a character's class word ("woman") marks where
the model draws her. On a UNet the recorder is the base processor with explicit attention probabilities, whose
chosen tokens' columns it keeps; its output equals the stock processor's up to float rounding. On FLUX's joint
attention (:class:`JointTokenMapProcessor`) the map is the text-to-image part of the attention: each image query's
softmax over the text keys alone, as a UNet's cross-attention is a softmax over its text tokens; the layer itself
computes exactly the stock joint attention. Maps are gathered at any latent aspect ratio: each layer's token grid
follows from its token count and the latent size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.layers import ProcessorHandle, install_processors, select_layers
from storycast.attention.processor import StoryAttnProcessor


def token_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of a layer's token grid: the latent size divided by the layer's downsampling, which follows
    from the layer's token count. None when no power-of-two downsampling of the latent gives ``tokens``."""
    height, width = latent_size
    factor = 1
    while height // factor and width // factor:
        if (height // factor) * (width // factor) == tokens and height % factor == 0 and width % factor == 0:
            return height // factor, width // factor
        factor *= 2
    return None


class TokenMapStore:
    """Per-call state: the running sum of the chosen tokens' attention maps.

    Maps are averaged over heads, summed over layers and steps, and kept at ``size``. Only the conditional
    half of a guidance batch (the last ``rows`` rows) is recorded.

    Args:
        token_indices: Rows of token positions to record, one list per image row:
            ``token_indices[b][k]`` is the position of the k-th token of interest in row b's prompt.
        size: (height, width) of the stored maps (an int for square maps).
        rows: How many rows at the end of the batch are recorded (the cond half).
        latent_size: (height, width) of the latents, from which every layer's token grid follows; None for
            square latents.
    """

    def __init__(
        self,
        token_indices: Sequence[Sequence[int]],
        size: int | tuple[int, int],
        rows: int | None = None,
        latent_size: tuple[int, int] | None = None,
    ):
        self.token_indices = torch.as_tensor([list(r) for r in token_indices], dtype=torch.long)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.rows = rows if rows is not None else len(token_indices)
        self.latent_size = latent_size
        self.maps: torch.Tensor | None = None
        self.count = 0
        self.enabled = True

    def _grid(self, queries: int) -> tuple[int, int] | None:
        if self.latent_size is not None:
            return token_grid(queries, self.latent_size)
        side = math.isqrt(queries)
        return (side, side) if side * side == queries else None

    def add(self, probs: torch.Tensor, heads: int) -> None:
        """``probs``: (rows*heads, queries, keys) attention probabilities of the recorded rows."""
        queries = probs.shape[1]
        grid = self._grid(queries)
        if grid is None:
            return  # a layer whose grid the latent size cannot explain (not one of this UNet's levels)
        probs = probs.reshape(-1, heads, queries, probs.shape[-1]).mean(dim=1)
        index = self.token_indices.to(probs.device)
        picked = torch.gather(probs, 2, index[:, None, :].expand(-1, queries, -1))  # (rows, queries, tokens)
        picked = picked.permute(0, 2, 1).reshape(probs.shape[0], -1, *grid).float()
        if grid != self.size:
            picked = F.interpolate(picked, size=self.size, mode="bilinear", align_corners=False)
        self.maps = picked if self.maps is None else self.maps + picked
        self.count += 1

    def reset(self) -> None:
        """Forget what was recorded (a new step's maps start from nothing)."""
        self.maps = None
        self.count = 0

    def mean_maps(self) -> torch.Tensor:
        """(rows, tokens, height, width) mean map; zeros if nothing was recorded."""
        if self.maps is None:
            return torch.zeros(len(self.token_indices), self.token_indices.shape[1], *self.size)
        return self.maps / self.count


class TokenMapProcessor(StoryAttnProcessor):
    """The base processor for cross attention, recording the chosen tokens' maps into a store (none: it records
    nothing and runs the fused kernel, for subclasses installed on layers that are not recorded)."""

    def __init__(self, store: TokenMapStore | None, state: Any = None):
        super().__init__(state)
        self.store = store

    @property
    def needs_probabilities(self) -> bool:  # type: ignore[override]
        return self.store is not None and self.store.enabled

    def observe_probabilities(self, attn: Any, probabilities: torch.Tensor) -> None:
        assert self.store is not None
        recorded = probabilities[probabilities.shape[0] - self.store.rows :]
        self.store.add(recorded.reshape(-1, *recorded.shape[2:]), attn.heads)


def record_token_maps(unet: Any, store: TokenMapStore, levels: Sequence[int]) -> ProcessorHandle:
    """Install recording processors on the cross-attention layers at ``levels``; the handle restores them."""
    layers = select_layers(unet, kind="cross", levels=levels)
    return install_processors(unet, {layer.processor_key: TokenMapProcessor(store) for layer in layers})


def text_to_image_probabilities(query: torch.Tensor, key: torch.Tensor, rotary: Any, text: int) -> torch.Tensor:
    """(B, heads, N, text) attention of the N image queries to the ``text`` text keys of a joint-attention layer,
    softmax over the text keys alone, with the rotary positions the layer gives them.

    Args:
        query, key: (B, text + N, heads, head_dim) projections of the [text, image] sequence after the q/k norms,
            before rotary positions (what :meth:`StoryAttnProcessor.edit_joint_projections` sees).
        rotary: The (cos, sin) tables of the text + N positions, or None.
        text: Text tokens ahead of the image tokens.
    """
    if rotary is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    image_query = query[:, text:].transpose(1, 2).float()
    text_key = key[:, :text].transpose(1, 2).float()
    scores = torch.matmul(image_query, text_key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    return scores.softmax(dim=-1)


class JointTokenMapProcessor(StoryAttnProcessor):
    """FLUX's joint attention, unchanged, recording the image tokens' attention to the chosen text tokens
    (:func:`text_to_image_probabilities`) into a store. A single-stream layer needs ``state.text_tokens`` (the
    batch sampler sets it from the conditioning); a double-stream one knows its text from its inputs."""

    def __init__(self, store: TokenMapStore, state: Any = None):
        super().__init__(state)
        self.store = store

    def edit_joint_projections(
        self, attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: Any, text: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.store.enabled:
            recorded = slice(query.shape[0] - self.store.rows, None)
            probabilities = text_to_image_probabilities(query[recorded], key[recorded], rotary, text)
            self.store.add(probabilities.flatten(0, 1), attn.heads)
        return query, key, value  # read, not changed


def record_joint_token_maps(
    transformer: Any, store: TokenMapStore, blocks: Sequence[str] = ("double",), state: Any = None
) -> ProcessorHandle:
    """Install :class:`JointTokenMapProcessor` on FLUX's joint-attention layers of ``blocks`` ("double", "single";
    a single-stream block needs a ``state`` with ``text_tokens``); the handle restores them."""
    layers = select_layers(transformer, kind="joint", blocks=blocks)
    return install_processors(
        transformer, {layer.processor_key: JointTokenMapProcessor(store, state) for layer in layers}
    )

"""Identity-Preserving Cross-Attention (1Prompt1Story, Liu et al., ICLR 2025, §3.4), computed from the text.

On every cross-attention layer, at every step, the conditional rows attend to their own prompt's tokens and
to the identity prompt's start token and identity words; its end token and padding are left out. The
unconditional rows are plain cross-attention (byliutao/1Prompt1Story@34e22ac, ``unet/utils.py``, ``ipca`` and
``apply_embeds_mask``; ``Ipca_position`` covers every block, ``Ipca_start_step`` is 0).

The authors draw the identity prompt once through the whole pipeline to store every cross-attention layer's
keys and values at every step, then concatenate the stored 77 with the frame's 77 and hide the unwanted ones
with an additive ``log(mask)``. A cross-attention layer's keys and values depend on the text alone, so the
stored ones are the same at every step: here they are projected at call time from the identity prompt's
embeddings, by the layer's own ``to_k``/``to_v`` (:class:`StoryAttnProcessor` projects whatever
:meth:`~StoryAttnProcessor.key_tokens` returns), and only the kept tokens are gathered. No identity pass, no
bank, and no -inf columns. Their optional key dropout (``Ipca_dropout``, 0 by default) hides each identity
key from each query with that probability, drawn from the call's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from storycast.attention.layers import ProcessorHandle
from storycast.attention.processor import KeyTokens, StoryAttnProcessor, stack_rows
from storycast.attention.state import AttentionState


@dataclass
class IdentityPromptState(AttentionState):
    """Per-call state of IPCA (see :class:`~storycast.attention.state.AttentionState`).

    Attributes:
        identity: (frames, k, C) text embeddings of the identity prompt's kept tokens (start token and
            identity words), one set per frame, appended to the conditional rows' keys and values; None (or k
            = 0) gives plain cross-attention.
        dropout: Probability that a query does not see an identity key (the authors' ``Ipca_dropout``).
        start_step: First step with IPCA (the authors' ``Ipca_start_step``).
    """

    identity: torch.Tensor | None = None
    dropout: float = 0.0
    start_step: int = 0

    @property
    def active(self) -> bool:
        return self.identity is not None and self.identity.shape[1] > 0 and self.step >= self.start_step


class IdentityPromptAttention(StoryAttnProcessor):
    """Cross-attention whose conditional rows also attend to the identity prompt's kept tokens."""

    state: IdentityPromptState

    def __init__(self, state: IdentityPromptState):
        super().__init__(state)
        self._frame_tokens = 0

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        state = self.state
        self._frame_tokens = context.shape[1]
        if not state.active:
            return context
        assert state.identity is not None
        state.check_batch(context.shape[0])
        identity = state.identity.to(device=context.device, dtype=context.dtype)
        cond_start = state.row(state.halves - 1, 0)
        rows = [
            context[b] if b < cond_start else torch.cat([context[b], identity[b - cond_start]])
            for b in range(context.shape[0])
        ]
        return stack_rows(rows)

    def attention_bias(self, attn: Any, query: torch.Tensor, key_length: int) -> torch.Tensor | None:
        state = self.state
        extra = key_length - self._frame_tokens
        if state.dropout <= 0 or extra <= 0:
            return None
        if state.generator is None:
            raise ValueError("IPCA key dropout draws from the call's generator: give the state one")
        rows, queries = query.shape[0], query.shape[2]
        kept = torch.rand((rows, 1, queries, extra), generator=state.generator) >= state.dropout
        bias = torch.zeros((rows, 1, queries, key_length), dtype=query.dtype)
        bias[..., self._frame_tokens :] = torch.where(kept, 0.0, float("-inf")).to(query.dtype)
        return bias.to(query.device)


def install_identity_prompt_attention(unet: Any, state: IdentityPromptState) -> ProcessorHandle:
    """IPCA on every cross-attention layer of ``unet`` (the authors' 70 on SDXL); returns the restoring handle."""
    from storycast.attention.layers import install_processors, select_layers

    layers = select_layers(unet, kind="cross")
    return install_processors(unet, {layer.processor_key: IdentityPromptAttention(state) for layer in layers})

"""The base of storycast's attention processors: diffusers' ``AttnProcessor2_0``, with override points.

Every attention change a method makes is a subclass that overrides one or two of:

- :meth:`StoryAttnProcessor.key_tokens`: the tokens keys and values are made from (other frames'
  tokens, a bank, anchors), per row; ragged rows (different counts) are attended row by row;
- :meth:`StoryAttnProcessor.attention_bias`: an additive bias on the scores (masks);
- :meth:`StoryAttnProcessor.output_branch`: a term added to the attention output before ``to_out``
  (decoupled image attention);
- :meth:`StoryAttnProcessor.observe_probabilities`: sees the attention probabilities (map recorders),
  computed explicitly only for processors that set ``needs_probabilities``;
- :meth:`StoryAttnProcessor.edit_query` and :meth:`StoryAttnProcessor.edit_output`: the projected query, and
  the layer's output after ``to_out`` (query blending, feature injection).

With none overridden the processor computes exactly what ``AttnProcessor2_0`` does (a parity test holds
it to that): the projections are ``attn.to_q/to_k/to_v/to_out``, so LoRAs loaded through peft still
apply, and the attention is ``F.scaled_dot_product_attention``, so flash and memory-efficient kernels run.
Extra tokens are gathered, never hidden with -inf masks: memory grows with the tokens kept, not with all
the tokens there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.state import AttentionState

KeyTokens = torch.Tensor | Sequence[torch.Tensor]
"""(B, M, C) tokens for every row, or one (M_b, C) tensor per row."""


def stack_rows(rows: Sequence[torch.Tensor]) -> KeyTokens:
    """Per-row (M_b, C) tokens as one (B, M, C) tensor when every row has as many, else the list itself (the
    processor then attends row by row)."""
    if len({row.shape[0] for row in rows}) == 1:
        return torch.stack(list(rows))
    return list(rows)


class StoryAttnProcessor:
    """``AttnProcessor2_0`` with override points; the state is the call's :class:`AttentionState`."""

    needs_probabilities = False
    """Compute softmax(QK^T) explicitly and show it to :meth:`observe_probabilities` (slower, more memory)."""

    def __init__(self, state: AttentionState | None = None):
        self.state = state

    # -- override points ---------------------------------------------------------------------------

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        """The pre-projection tokens keys and values come from. Default: ``context`` (the layer's own tokens
        for self-attention, the text for cross-attention).

        Args:
            attn: The ``Attention`` module.
            hidden: (B, N, C) query-side tokens after the layer's norms.
            context: (B, M, C) what the stock processor makes keys and values from.
        """
        return context

    def attention_bias(self, attn: Any, query: torch.Tensor, key_length: int) -> torch.Tensor | None:
        """An additive bias on the scores, broadcastable to (B, heads, N, key_length); None for none."""
        return None

    def output_branch(
        self, attn: Any, query: torch.Tensor, hidden: torch.Tensor, attended: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to the attention output (B, N, heads x head_dim) before ``to_out``; None for none."""
        return None

    def observe_probabilities(self, attn: Any, probabilities: torch.Tensor) -> None:
        """Sees the (B, heads, N, M) attention probabilities when ``needs_probabilities`` is set."""

    def edit_query(self, attn: Any, query: torch.Tensor) -> torch.Tensor:
        """The (B, N, heads x head_dim) query after ``to_q``, as attention will use it. Default: unchanged."""
        return query

    def edit_output(self, attn: Any, output: torch.Tensor) -> torch.Tensor:
        """The (B, N, C) output after ``to_out``, before the residual and the reshape to an image. Default:
        unchanged."""
        return output

    # -- the stock computation ---------------------------------------------------------------------

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self.edit_query(attn, attn.to_q(hidden_states))
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states

        attended = self.attend(attn, query, hidden_states, context, attention_mask)
        branch = self.output_branch(attn, query, hidden_states, attended)
        if branch is not None:
            attended = attended + branch

        out = attn.to_out[0](attended)
        out = self.edit_output(attn, attn.to_out[1](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def attend(
        self,
        attn: Any,
        query: torch.Tensor,
        hidden: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of the projected ``query`` (B, N, inner) over :meth:`key_tokens`; (B, N, inner)."""
        tokens = self.key_tokens(attn, hidden, context)
        if isinstance(tokens, torch.Tensor):
            return self.attention(attn, query, tokens, attention_mask)
        if len(tokens) != query.shape[0]:
            raise ValueError(f"key_tokens gave {len(tokens)} rows of tokens for a batch of {query.shape[0]}")
        if attention_mask is not None:
            raise ValueError("a layer attention mask cannot be combined with per-row key tokens")
        rows = [self.attention(attn, query[b : b + 1], tokens[b][None], None) for b in range(len(tokens))]
        return torch.cat(rows)

    def attention(
        self, attn: Any, query: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Multi-head attention of ``query`` (B, N, inner) over keys and values projected from ``tokens``."""
        batch_size = query.shape[0]
        key = attn.to_k(tokens)
        value = attn.to_v(tokens)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        bias = self.attention_bias(attn, q, k.shape[2])
        if bias is not None:
            attention_mask = bias if attention_mask is None else attention_mask + bias
        if self.needs_probabilities:
            scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probabilities = scores.softmax(dim=-1).to(v.dtype)
            self.observe_probabilities(attn, probabilities)
            out = torch.matmul(probabilities, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)


class FrameSharingProcessor(StoryAttnProcessor):
    """A processor that shares tokens across the frames of a batch: it knows its layer (the key of what it stores
    per layer) and resolution level (what its random draws are shared by), and reads the batch as
    [guidance half, frame] (the state's layout).

    Args:
        state: The call's state.
        layer: The layer's name.
        level: The layer's resolution level.
    """

    def __init__(self, state: AttentionState, layer: str, level: int):
        super().__init__(state)
        self.layer = layer
        self.level = level

    def by_frame(self, hidden: torch.Tensor) -> torch.Tensor:
        """(halves, frames, tokens, channels) view of the (B, tokens, channels) batch, checked against the state."""
        state = self.state
        assert state is not None
        state.check_batch(hidden.shape[0])
        return hidden.reshape(state.halves, state.frames, *hidden.shape[1:])

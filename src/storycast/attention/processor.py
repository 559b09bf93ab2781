"""The base of storycast's attention processors: diffusers' ``AttnProcessor2_0`` and ``FluxAttnProcessor``, with
override points.

Every attention change a method makes is a subclass that overrides one or two of:

- :meth:`StoryAttnProcessor.key_tokens`: the tokens keys and values are made from (other frames'
  tokens, a bank, anchors), per row; ragged rows (different counts) are attended row by row;
- :meth:`StoryAttnProcessor.attention_bias`: an additive bias on the scores (masks);
- :meth:`StoryAttnProcessor.output_branch`: a term added to the attention output before ``to_out``
  (decoupled image attention);
- :meth:`StoryAttnProcessor.observe_probabilities`: sees the attention probabilities (map recorders),
  computed explicitly only for processors that set ``needs_probabilities``;
- :meth:`StoryAttnProcessor.edit_query` and :meth:`StoryAttnProcessor.edit_output`: the projected query, and
  the layer's output after ``to_out`` (query blending, feature injection);
- :meth:`StoryAttnProcessor.edit_joint_projections` (joint attention only): the [text, image] queries, keys and
  values of every head after projection and norms, before rotary positions, with the rotary table (value mixing
  between tokens; re-positioning borrowed keys; reading attention to chosen text tokens).

The processor has one body per kind of attention module, with the same override points:

- a UNet's ``Attention`` (self or cross attention): with none overridden it computes exactly what
  ``AttnProcessor2_0`` does; the tokens :meth:`StoryAttnProcessor.key_tokens` sees and returns are the layer's
  tokens before the key and value projections;
- FLUX's ``FluxAttention`` (joint attention over [text tokens, image tokens], in double-stream blocks with the
  text projected by its own weights, in single-stream blocks as one sequence): with none overridden it computes
  exactly what ``FluxAttnProcessor`` does. Here the override points act *after* projection, normalisation and
  rotary positions: the tokens ``key_tokens`` sees and returns are the image tokens' keys and values side by side
  (B, N, 2 x inner), so a token borrowed from another frame keeps that frame's rotary position; the layer's text
  tokens are always attended (every query, text or image, attends to the text and to the tokens returned);
  ``edit_query``, ``output_branch`` and ``edit_output`` see the image tokens alone.

Parity tests hold both bodies to diffusers' processors. The projections are the module's own linear layers, so
LoRAs loaded through peft still apply, and the attention is ``F.scaled_dot_product_attention``, so flash and
memory-efficient kernels run. Extra tokens are gathered, never hidden with -inf masks: memory grows with the tokens
kept, not with all the tokens there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.state import AttentionState

KeyTokens = torch.Tensor | Sequence[torch.Tensor]
"""(B, M, C) tokens for every row, or one (M_b, C) tensor per row."""

_JOINT_CLASSES: tuple[type, ...] | None = None


def is_joint(attn: Any) -> bool:
    """Whether ``attn`` is a joint text-image attention module (FLUX's), called with rotary positions."""
    global _JOINT_CLASSES
    if _JOINT_CLASSES is None:
        from diffusers.models.transformers.transformer_flux import FluxAttention

        _JOINT_CLASSES = (FluxAttention,)
    return isinstance(attn, _JOINT_CLASSES)


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

    def edit_joint_projections(
        self, attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: Any, text: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint attention (FLUX) only: the (B, L, heads, head_dim) queries, keys and values of the [text, image]
        sequence, its first ``text`` tokens the text, after the projections and the q/k norms and before rotary
        positions, with ``rotary`` (the (cos, sin) tables of the L positions, or None); called before
        :meth:`key_tokens`. What is returned is what the layer goes on with; a processor that only reads them (one
        that gives borrowed keys positions of its own keeps what it needs here) returns them as they are.
        Default: unchanged."""
        return query, key, value

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
    ) -> Any:
        if is_joint(attn):
            # FluxAttention passes its rotary embedding where a UNet's attention passes temb.
            return self.joint_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
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
        out = self.scaled_attention(attn, q, k, v, attention_mask, attn.scale)
        return out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

    def scaled_attention(
        self,
        attn: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """softmax(q k^T x scale + mask + :meth:`attention_bias`) v over (B, heads, L, head_dim) tensors; the
        probabilities made explicit (and shown to :meth:`observe_probabilities`) when ``needs_probabilities``."""
        bias = self.attention_bias(attn, q, k.shape[2])
        if bias is not None:
            attention_mask = bias if attention_mask is None else attention_mask + bias
        if self.needs_probabilities:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probabilities = scores.softmax(dim=-1).to(v.dtype)
            self.observe_probabilities(attn, probabilities)
            return torch.matmul(probabilities, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

    # -- the joint-attention body (FLUX) -------------------------------------------------------------

    def joint_attention(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        rotary: Any,
    ) -> Any:
        """``FluxAttnProcessor``'s computation with the override points (see the module docstring).

        A double-stream block gives the image tokens as ``hidden_states`` and the text as
        ``encoder_hidden_states``, and gets (image output, text output) back; a single-stream block gives one
        [text, image] sequence and gets one output, its text tokens counted by :meth:`text_tokens`.
        """
        query, key, value = _projected(attn, hidden_states, "to_q", "to_k", "to_v", "norm_q", "norm_k")
        if encoder_hidden_states is not None:
            text = encoder_hidden_states.shape[1]
            text_q, text_k, text_v = _projected(
                attn, encoder_hidden_states, "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"
            )
            query, key, value = (torch.cat(pair, dim=1) for pair in ((text_q, query), (text_k, key), (text_v, value)))
        else:
            text = self.text_tokens(attn)
        query, key, value = self.edit_joint_projections(attn, query, key, value, rotary, text)
        if rotary is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = apply_rotary_emb(query, rotary, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)
        batch, length, heads, head_dim = query.shape
        image_query = self.edit_query(attn, query[:, text:].flatten(2))
        query = torch.cat([query[:, :text], image_query.view(batch, length - text, heads, head_dim)], dim=1)
        own = torch.cat([key[:, text:].flatten(2), value[:, text:].flatten(2)], dim=-1)  # (B, N, [keys, values])
        tokens = self.key_tokens(attn, own, own)
        rows = tokens if not isinstance(tokens, torch.Tensor) else [tokens]
        if not isinstance(tokens, torch.Tensor) and len(tokens) != batch:
            raise ValueError(f"key_tokens gave {len(tokens)} rows of tokens for a batch of {batch}")
        if attention_mask is not None and not isinstance(tokens, torch.Tensor):
            raise ValueError("a layer attention mask cannot be combined with per-row key tokens")
        parts = []
        for number, part in enumerate(rows):
            # One batch, or one row at a time when rows keep different numbers of tokens.
            select = slice(None) if isinstance(tokens, torch.Tensor) else slice(number, number + 1)
            part = part if isinstance(tokens, torch.Tensor) else part[None]
            extra_k, extra_v = part.view(part.shape[0], part.shape[1], 2, heads, head_dim).unbind(2)
            k = torch.cat([key[select, :text], extra_k.to(key.dtype)], dim=1)
            v = torch.cat([value[select, :text], extra_v.to(value.dtype)], dim=1)
            out = self.scaled_attention(
                attn, query[select].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attention_mask,
                head_dim**-0.5,
            )  # fmt: skip
            parts.append(out.transpose(1, 2))
        attended = torch.cat(parts).flatten(2).to(query.dtype)
        image = attended[:, text:]
        image_hidden = hidden_states if encoder_hidden_states is not None else hidden_states[:, text:]
        branch = self.output_branch(attn, image_query, image_hidden, image)
        if branch is not None:
            image = image + branch
        if encoder_hidden_states is None:  # single-stream: the block projects the output itself
            return torch.cat([attended[:, :text], self.edit_output(attn, image)], dim=1)
        image = self.edit_output(attn, attn.to_out[1](attn.to_out[0](image.contiguous())))
        return image, attn.to_add_out(attended[:, :text].contiguous())

    def text_tokens(self, attn: Any) -> int:
        """Text tokens ahead of the image tokens in a single-stream block's sequence: the state's
        ``text_tokens`` (the batch sampler sets it from the conditioning); 0 for a processor without state,
        which then reads the whole sequence as its own tokens (the stock computation)."""
        if self.state is None:
            return 0
        text = getattr(self.state, "text_tokens", None)
        if text is None:
            raise ValueError(
                "a single-stream FLUX block's sequence is [text tokens, image tokens], and this processor's state does "
                "not say how many text tokens there are. Fix: draw through storycast.pipelines.sampler.sample, or set "
                "state.text_tokens to the conditioning's T5 length"
            )
        return int(text)


def _projected(attn: Any, tokens: torch.Tensor, q: str, k: str, v: str, norm_q: str, norm_k: str) -> tuple:
    """(B, L, heads, head_dim) queries, keys and values of ``tokens`` through the module's projections named
    ``q, k, v`` and its norms, as ``FluxAttnProcessor``'s projections (fused or not)."""
    fused = "to_qkv" if q == "to_q" else "to_added_qkv"
    if getattr(attn, "fused_projections", False) and hasattr(attn, fused):
        query, key, value = getattr(attn, fused)(tokens).chunk(3, dim=-1)
    else:
        query, key, value = getattr(attn, q)(tokens), getattr(attn, k)(tokens), getattr(attn, v)(tokens)
    query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
    return getattr(attn, norm_q)(query), getattr(attn, norm_k)(key), value


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

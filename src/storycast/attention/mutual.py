"""Mutual attention between two sets of tokens of one sequence, as pure functions.

Two tokens attend to each other *mutually* as much as the weaker of the two directions: ``min(P[a -> b], P[b ->
a])``, with ``P`` the attention probabilities averaged over heads (Story2Board's reciprocal attention, Dinkevich et
al. 2025, §3.3; DavidDinkevich/Story2Board@92ef110 ``story2board_attention_processor.py`` lines 84-90).
"""

from __future__ import annotations

import torch


def cross_probabilities(
    query: torch.Tensor, key: torch.Tensor, first: slice, second: slice, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged attention probabilities between two spans of one sequence.

    Args:
        query: (L, heads, head_dim) queries of one sequence.
        key: (L, heads, head_dim) keys of the same sequence.
        first, second: Two spans of token positions.
        scale: The scores' scale (``head_dim ** -0.5``).

    Returns:
        ``(first -> second, second -> first)``: (|first|, |second|) and (|second|, |first|) float32 probabilities,
        each row a softmax over *all* L keys (text included) averaged over heads, of which the other span's columns
        are kept. Heads are taken one at a time, so memory holds one head's (|first| + |second|) x L scores.
    """
    heads = query.shape[1]
    keys = key.float()
    forward = backward = None
    for head in range(heads):
        k = keys[:, head]
        a_to_b = ((query[first, head].float() @ k.T) * scale).softmax(-1)[:, second]
        b_to_a = ((query[second, head].float() @ k.T) * scale).softmax(-1)[:, first]
        forward = a_to_b if forward is None else forward + a_to_b
        backward = b_to_a if backward is None else backward + b_to_a
    assert forward is not None and backward is not None
    return forward / heads, backward / heads


def mutual_attention(first_to_second: torch.Tensor, second_to_first: torch.Tensor) -> torch.Tensor:
    """(|second|, |first|): for each token of the second span and each of the first, the smaller of the attention
    each pays the other (``min(P[b -> a], P[a -> b]^T)``); batched over leading dims."""
    return torch.minimum(second_to_first, first_to_second.transpose(-1, -2))

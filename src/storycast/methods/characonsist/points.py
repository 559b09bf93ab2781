"""CharaConsist's math as pure functions: foreground masks from text attention, point matching between a frame and
its identity frame, the identity keys moved to the matched points, the attention restriction between foreground and
background, and the adaptive token merge.

Each function names the place of the authors' code it follows (Murray-Wang/CharaConsist@759018c,
``models/attention_processor_characonsist.py`` and ``models/pipeline_characonsist.py``); ``docs/methods/
characonsist.md`` says where we generalise (several characters: one label per character instead of one
foreground).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from storycast.masks.ops import dilate, erode

BACKGROUND = 0
"""The label of background tokens; character k of a frame (in the order it names them) is label k + 1."""


def text_attention_maps(
    image_query: torch.Tensor, text_key: torch.Tensor, groups: Sequence[torch.Tensor]
) -> torch.Tensor:
    """(B, G, N): per group of text tokens, the mean over its tokens of the image tokens' attention to the prompt.

    The attention is the softmax over the prompt's real tokens (no padding, no end token) of the *unscaled* scores
    q k^T, summed over heads (``get_curr_attn_weights``, lines 146-152); the authors' two groups are the
    background text and the character (with its action). An empty group gives zeros.

    Args:
        image_query: (B, N, heads, head_dim) image queries, with their rotary positions.
        text_key: (B, T, heads, head_dim) keys of the prompt's T real tokens, with their rotary positions.
        groups: Per group, the positions (< T) of its text tokens.
    """
    scores = torch.einsum("bnhd,bthd->bhnt", image_query.float(), text_key.float())
    attention = scores.softmax(dim=-1).sum(dim=1)  # (B, N, T)
    maps = [
        attention[..., group.to(attention.device)].mean(dim=-1)
        if len(group)
        else attention.new_zeros(attention.shape[:2])
        for group in groups
    ]
    return torch.stack(maps, dim=1)


def clean_mask(mask: torch.Tensor) -> torch.Tensor:
    """Small holes and points removed: a 3 x 3 erosion, then a 5 x 5 dilation (``remove_small_holes_and_points``,
    lines 426-437, OpenCV's default borders: outside the grid neither erodes nor dilates)."""
    return dilate(erode(mask, 1), 2)


def foreground_labels(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N,) labels of a frame's image tokens from (G, N) maps (:func:`text_attention_maps` summed or averaged over
    layers), group 0 the background text and group k the k-th character.

    One character (the authors' case, ``get_curr_fg_mask``, lines 439-451): foreground where the background's
    attention is at most the character's, cleaned by :func:`clean_mask`. Several characters (our extension): each
    character's tokens are those where it draws the most attention of the characters and at least the background's,
    each cleaned alike; where cleaned masks overlap, the character named first keeps the token.
    """
    background, characters = maps[0], maps[1:]
    strongest = characters.argmax(dim=0)
    labels = torch.full_like(background, BACKGROUND, dtype=torch.long)
    for k in range(characters.shape[0] - 1, -1, -1):  # the first-named character written last wins overlaps
        raw = (background <= characters[k]) & (strongest == k)
        labels[clean_mask(raw.view(grid)).flatten()] = k + 1
    return labels


def cross_similarity(current: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """(B, N, N_id) cosine similarity of a frame's image attention outputs to the identity frame's
    (``get_curr_cross_sim``, lines 154-159)."""
    return torch.matmul(F.normalize(current.float(), dim=-1), F.normalize(identity.float(), dim=-1).transpose(-2, -1))


@dataclass(frozen=True)
class Matches:
    """Points of a frame matched to points of its identity frame.

    Attributes:
        identity: (M,) identity-frame token of each match (one identity token may serve several).
        current: (M,) the frame's token of each match, ascending.
        similarity: (N,) every frame token's best similarity to the identity frame.
    """

    identity: torch.Tensor
    current: torch.Tensor
    similarity: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.current.numel())


def match_points(
    similarity: torch.Tensor, identity_foreground: torch.Tensor, current_foreground: torch.Tensor, threshold: float
) -> Matches:
    """Each frame token's most similar identity token; a pair is kept where the frame token is foreground, its
    match is foreground in the identity frame, and their similarity exceeds ``threshold`` (``get_shared_fg_mask``,
    pipeline lines 28-36, after ``torch.max`` at line 245).

    Args:
        similarity: (N, N_id) layer-averaged :func:`cross_similarity`.
        identity_foreground: (N_id,) bool.
        current_foreground: (N,) bool.
        threshold: Similarity a pair must exceed.
    """
    best, index = similarity.max(dim=-1)
    keep = current_foreground.to(index.device) & identity_foreground.to(index.device)[index] & (best > threshold)
    return Matches(index[keep], torch.nonzero(keep).flatten(), best)


def merge_weights(weight: float, start: int, decay: int, end: int) -> dict[int, float]:
    """Step -> weight of the token merge: ``weight`` from ``start`` to ``decay``, then a half cosine down to 0 over
    ``decay`` to ``end`` (``get_interpolate_weight``, pipeline lines 17-26)."""
    span = end - decay
    decaying = [
        weight * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / span, dtype=torch.float64)).item())
        for k in range(span)
    ]
    weights = [weight] * (decay - start) + decaying
    return {step: weights[i] for i, step in enumerate(range(start, end))}


def merge_tokens(current: torch.Tensor, identity: torch.Tensor, matches: Matches, weight: float) -> torch.Tensor:
    """Adaptive token merge (``ada_tome``, lines 239-254): each matched frame token moves towards its identity
    token's attention output by ``weight`` x its similarity; the other tokens are unchanged.

    Args:
        current: (B, N, C) the frame's image attention output.
        identity: (B, N_id, C) the identity frame's, at the same layer and step.
        matches: The frame's matches to that identity frame.
        weight: The step's :func:`merge_weights` value.
    """
    alpha = (weight * matches.similarity[matches.current]).to(current.dtype).view(1, -1, 1)
    merged = current.clone()
    ours = current[:, matches.current]
    theirs = identity[:, matches.identity.to(identity.device)].to(current.dtype)
    merged[:, matches.current] = (1 - alpha) * ours + alpha * theirs
    return merged


def positioned_keys(keys: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    """(B, M, heads, head_dim) keys (before rotary positions) given the rotary positions of the image tokens
    ``at``: identity tokens placed at the frame's matched points, or background tokens at their own places
    (lines 205-219).

    Args:
        keys: Keys without positions.
        rotary: (cos, sin) tables of the frame's image tokens, (N, head_dim) each.
        at: (M,) image token of each key.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    cos, sin = rotary
    at = at.to(cos.device)
    return apply_rotary_emb(keys, (cos[at], sin[at]), sequence_dim=1)


def borrowed_bias(
    text: int, current_labels: torch.Tensor, borrowed_labels: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(1, 1, text + N, text + N + M) additive bias over [text, own image, borrowed] keys (``get_expand_attn_mask``
    and ``get_expanded_key_value``, lines 161-171 and 230-235): a frame token attends to a borrowed token only where
    their labels agree (background to background, a character's tokens to that character's); text tokens attend to
    none; the frame's own text and image keys stay open to every query.

    Args:
        text: Text tokens ahead of the image tokens.
        current_labels: (N,) labels of the frame's image tokens.
        borrowed_labels: (M,) labels of the borrowed tokens.
        dtype: The attention's dtype.
    """
    current_labels = current_labels.to(borrowed_labels.device)
    own = text + current_labels.numel()
    blocked = torch.ones(own, borrowed_labels.numel(), dtype=torch.bool, device=borrowed_labels.device)
    blocked[text:] = current_labels[:, None] != borrowed_labels[None, :]
    bias = torch.zeros(1, 1, own, own + borrowed_labels.numel(), dtype=dtype, device=borrowed_labels.device)
    bias[..., own:].masked_fill_(blocked, float("-inf"))
    return bias

"""Singular-Value Reweighting (1Prompt1Story, Liu et al., ICLR 2025, §3.3), as the authors' code runs it.

For a set I of token positions of one text encoder's per-token embeddings E (L x d), X = E[I]^T (d x |I|) is
decomposed, X = U diag(sigma) V^T, each singular value becomes ``sigma' = beta * sigma * exp(-alpha * sigma)``,
and U diag(sigma') V^T is written back into E[I] (byliutao/1Prompt1Story@34e22ac, ``unet/utils.py``,
``punish_wight``; in float64, as there). For frame i of a prompt holding phrases P_1..P_n:

1. each other phrase, in prompt order, is suppressed (alpha 0.01, beta 0.05: every singular value shrinks);
2. then P_i is expressed (alpha -0.01, beta 1.0: the larger singular values grow)

(the pipeline's ``encode_prompt``, ``unet/pipeline_stable_diffusion_xl.py``; the paper's figure draws the
express step first, the code runs it last). I is the phrase's positions and, in mode "svr", the end token and
the padding after it, which carry the whole prompt's meaning; every call sees the end rows as the calls before
left them. In mode "svr-eot" (their benchmark script's) I is the phrase alone, and each call first scales the
end and padding rows by 0.9. SDXL's embeddings are CLIP-L's (768) and OpenCLIP-bigG's (1280) side by side; each
encoder's part is reweighted on its own, with the same positions. The pooled embedding is left alone.

These are pure functions: tensors in, new tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from storycast.methods.oneprompt.reweighting import Reweighting

SvrMode = Literal["svr", "svr-eot", "off"]
END_DECAY = 0.9
"""Scale of the end and padding rows at each call in mode "svr-eot" (the authors' ``9e-1``)."""
SUPPRESS = Reweighting(0.01, 0.05)
ENHANCE = Reweighting(-0.01, 1.0)
"""The authors' (alpha, beta) of the suppressed and the expressed phrases (the settings' defaults)."""


def reweight_singular_values(
    embeds: torch.Tensor, positions: Sequence[int], alpha: float, beta: float
) -> torch.Tensor:
    """``embeds`` (L, d) with rows ``positions`` replaced by their singular-value reweighting (float64 inside).

    With alpha 0 and beta 1 the rows come back as they were (up to rounding); with alpha 0 they are scaled by
    beta. No positions: ``embeds`` unchanged.
    """
    index = torch.as_tensor(list(dict.fromkeys(positions)), dtype=torch.long, device=embeds.device)
    if index.numel() == 0:
        return embeds.clone()
    block = embeds.index_select(0, index).transpose(0, 1).to(torch.float64)  # X = E[I]^T, d x |I|
    u, sigma, vh = torch.linalg.svd(block, full_matrices=False)
    sigma = beta * sigma * torch.exp(-alpha * sigma)
    rebuilt = (u * sigma) @ vh
    out = embeds.clone()
    out[index] = rebuilt.transpose(0, 1).to(embeds.dtype)
    return out


def reweight_prompt(
    embeds: torch.Tensor,
    phrases: Sequence[Sequence[int]],
    express: int,
    end_positions: Sequence[int],
    *,
    mode: SvrMode = "svr",
    suppress: Reweighting = SUPPRESS,
    enhance: Reweighting = ENHANCE,
) -> torch.Tensor:
    """One encoder's (L, d) per-token embeddings after SVR for the frame whose phrase is ``phrases[express]``.

    Args:
        embeds: (L, d) embeddings of the frame's prompt.
        phrases: Token positions of every phrase of the prompt, in prompt order (empty: not found).
        express: The frame's own phrase.
        end_positions: The end token and the padding after it.
        mode: "svr" (end rows in every index set), "svr-eot" (end rows scaled by 0.9 at each call instead)
            or "off".
        suppress: Applied to every other phrase, in prompt order, first.
        enhance: Applied to the frame's phrase, last.
    """
    if mode == "off":
        return embeds.clone()
    if mode not in ("svr", "svr-eot"):
        raise ValueError(f"SVR mode must be 'svr', 'svr-eot' or 'off', got {mode!r}")
    work = embeds.detach().to("cpu", torch.float64, copy=True)  # small matrices; float64 everywhere (MPS has none)
    ends = list(end_positions)
    calls = [(phrases[i], suppress) for i in range(len(phrases)) if i != express]
    calls.append((phrases[express], enhance))
    for positions, weights in calls:
        if mode == "svr-eot":
            if ends:
                work[ends] = work[ends] * END_DECAY
            chosen = list(positions)
        else:
            chosen = [*positions, *ends]
        work = reweight_singular_values(work, chosen, weights.alpha, weights.beta)
    return work.to(embeds.device, embeds.dtype)


def reweight_encoders(
    embeds: torch.Tensor,
    widths: Sequence[int],
    phrases: Sequence[Sequence[int]],
    express: int,
    end_positions: Sequence[int],
    *,
    mode: SvrMode = "svr",
    suppress: Reweighting = SUPPRESS,
    enhance: Reweighting = ENHANCE,
) -> torch.Tensor:
    """SVR of (B, L, D) or (L, D) embeddings that are several encoders' side by side (``widths`` sum to D),
    each part on its own (:func:`reweight_prompt`, same arguments), every row of the batch alike."""
    if sum(widths) != embeds.shape[-1]:
        raise ValueError(f"encoder widths {list(widths)} do not add up to the embedding width {embeds.shape[-1]}")
    if embeds.ndim == 3:
        rows = [reweight_encoders(row, widths, phrases, express, end_positions, mode=mode, suppress=suppress,
                                  enhance=enhance) for row in embeds]  # fmt: skip
        return torch.stack(rows)
    parts = torch.split(embeds, list(widths), dim=-1)
    reweighted = [
        reweight_prompt(part, phrases, express, end_positions, mode=mode, suppress=suppress, enhance=enhance)
        for part in parts
    ]
    return torch.cat(reweighted, dim=-1)

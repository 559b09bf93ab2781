"""Which text tokens of a frame's prompt are its background and which its characters (the masks' text groups)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from storycast.attention.character_masks import word_token_positions


def token_groups(
    tokenizer: Any, prompt: str, phrases: Sequence[str], max_length: int
) -> tuple[int, tuple[torch.Tensor, ...]]:
    """The prompt's real token count and its text groups: the background's positions, then each character's.

    The authors write every prompt as "background # character # action" and count the tokens of the first part
    (``bg_len``) and of the whole (``real_len``, without the end token: ``inference.py`` lines 68-84); their
    foreground group is the character with its action. A storycast frame marks no background part, so here a
    character's group is its description's tokens where the prompt holds them, and the background group every
    other real token (``docs/methods/characonsist.md``). A phrase the tokenizer cannot find gives an empty group
    (that character then draws no foreground).

    Args:
        tokenizer: The T5 tokenizer.
        prompt: The frame's prompt.
        phrases: The text of each character the frame names, in order (its description, or its class word).
        max_length: T5 tokens the model reads.
    """
    ids = tokenizer(prompt, max_length=max_length, truncation=True).input_ids
    real = len(ids) - 1  # the end token is not attended to in the masks
    characters = [
        torch.tensor([p for p in positions if p < real], dtype=torch.long)
        for positions in word_token_positions(tokenizer, prompt, list(phrases))
    ]
    taken = set().union(*(group.tolist() for group in characters)) if characters else set()
    background = torch.tensor([p for p in range(real) if p not in taken], dtype=torch.long)
    return real, (background, *characters)

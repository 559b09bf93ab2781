"""Storynizor's Shuffling Reference Strategy (SRS) and IP-Adapter's conditioning drop, as pure functions.

SRS: in a group of frames of the same character(s), frame i is conditioned on the reference crop of another
frame of the same character: a uniformly random derangement, redrawn every step, drawn per character over the
frames that show that character, so the injector learns identity rather than pose. A character shown in one
frame only keeps its own reference (single-image data, trained with strong augmentation instead).

Drop (IP-Adapter's ``tutorial_train_plus.py``): each row independently drops the image condition with
probability p_image, else the text with p_text, else both with p_both (0.05 each by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DERANGEMENT_ATTEMPTS = 64
"""Rejection attempts before the fallback (each succeeds with probability ~1/e; failing 64 in a row: ~1e-13)."""


def derangement(n: int, generator: torch.Generator) -> list[int]:
    """A uniformly random permutation of range(n) without fixed points (n >= 2); [0] for n == 1."""
    if n < 1:
        raise ValueError(f"a derangement needs at least one element, got {n}")
    if n == 1:
        return [0]
    for _ in range(DERANGEMENT_ATTEMPTS):
        permutation = torch.randperm(n, generator=generator)
        if not bool((permutation == torch.arange(n)).any()):
            return permutation.tolist()
    shift = 1 + int(torch.randint(n - 1, (), generator=generator))
    return [(i + shift) % n for i in range(n)]  # a random rotation: still a derangement


def shuffled_references(characters: Sequence[Sequence[str]], generator: torch.Generator) -> dict[tuple[int, str], int]:
    """(frame, character) -> the frame whose reference crop of that character conditions it.

    Args:
        characters: Per frame of the group, the ids of the characters it shows.
        generator: The step's random stream.
    """
    by_character: dict[str, list[int]] = {}
    for frame, names in enumerate(characters):
        for name in names:
            by_character.setdefault(name, []).append(frame)
    references: dict[tuple[int, str], int] = {}
    for name in sorted(by_character):  # a fixed order: the draws do not depend on dict order
        frames = by_character[name]
        for position, source in enumerate(derangement(len(frames), generator)):
            references[(frames[position], name)] = frames[source]
    return references


def drop_conditions(
    rows: int, image: float, text: float, both: float, generator: torch.Generator
) -> tuple[list[bool], list[bool]]:
    """Per row, whether its image condition and its text are dropped (IP-Adapter's exclusive draws)."""
    draws = torch.rand(rows, generator=generator).tolist()
    drop_image = [u < image or image + text <= u < image + text + both for u in draws]
    drop_text = [image <= u < image + text + both for u in draws]
    return drop_image, drop_text

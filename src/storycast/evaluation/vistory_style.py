"""ViStoryBench's style consistency (CSD), as pure functions over CSD style embeddings (``vision/csd.py``).

From ``ViStoryBench/vistorybench`` @ 514cc31, ``vistorybench/bench/style/csd_evaluator.py``:

- ``self_csd`` (``get_self_csd_score``, lines 148-159): the mean cosine over all unordered pairs of a story's
  generated shots (``itertools.combinations``); 0.0 when the story has fewer than two shots.
- ``cross_csd`` (``get_cross_csd_score``, lines 161-237): for each shot of the story (in story order) that has an
  image, the cosine between the shot and the *first* reference image of each character the shot lists; a character
  without reference images is replaced by the first character of the story that has some (``_pick_reference_image``),
  and a shot that lists no character is compared with that first character; the shot's score is the mean over its
  listed characters, the story's the mean over its scored shots (0.0 when none).
- Across stories: the unweighted mean of the story values (their ``ResultManager`` summary), i.e.
  :func:`storycast.evaluation.metrics.aggregate_stories`.

The cosine is ``F.cosine_similarity`` of the two style embeddings (already L2-normalised by the CSD head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from storycast.evaluation.metrics import MetricInputError, cosine_matrix, pairwise_similarity


def self_csd(style: torch.Tensor) -> float:
    """Mean CSD cosine over all unordered pairs of a story's shots; 0.0 with fewer than two shots (as theirs).

    Args:
        style: (n, d) style embeddings of the story's generated shots.
    """
    if style.ndim != 2:
        raise MetricInputError(f"style must have shape (n, d), got {tuple(style.shape)}.")
    if style.shape[0] < 2:
        return 0.0
    return float(pairwise_similarity(style))


def pick_reference(wanted: str | None, with_images: Sequence[str]) -> str | None:
    """The character whose first reference image a shot is compared with (their ``_pick_reference_image``).

    Args:
        wanted: The character the shot lists (None: the shot lists none).
        with_images: The story's characters that have reference images, in the story's order.

    Returns:
        ``wanted`` if it has images, else the first character with images, else None.
    """
    if wanted is not None and wanted in with_images:
        return wanted
    return with_images[0] if with_images else None


@dataclass(frozen=True)
class CrossCsd:
    """Cross CSD of one story.

    Attributes:
        value: Mean over scored shots of the shot scores (0.0 when no shot was scored, as theirs).
        shots: Shot index -> shot score (mean over the shot's characters), for the shots scored.
        characters: Shot index -> ((character compared, score), ...), in the shot's order.
    """

    value: float
    shots: dict[int, float] = field(default_factory=dict)
    characters: dict[int, tuple[tuple[str, float], ...]] = field(default_factory=dict)


def cross_csd(
    shot_style: Mapping[int, torch.Tensor],
    reference_style: Mapping[str, torch.Tensor],
    shot_characters: Mapping[int, Sequence[str]],
) -> CrossCsd:
    """ViStoryBench's cross CSD: each shot against the first reference image of the characters it lists.

    Args:
        shot_style: Shot index -> (d,) style embedding of the generated image; shots without an image are absent
            (they are skipped, as theirs).
        reference_style: Character key -> (d,) style embedding of its *first* reference image, for the characters
            that have reference images, in the story's character order (the order decides the fallback).
        shot_characters: Shot index -> the character keys the shot lists, for every shot, in story order.
    """
    with_images = list(reference_style)
    shots: dict[int, float] = {}
    per_character: dict[int, tuple[tuple[str, float], ...]] = {}
    for index, keys in shot_characters.items():
        if index not in shot_style:
            continue
        chosen = [pick_reference(key, with_images) for key in keys] or [pick_reference(None, with_images)]
        chosen = [key for key in chosen if key is not None]
        if not chosen:
            continue
        scores = tuple((key, float(cosine_matrix(shot_style[index], reference_style[key])[0, 0])) for key in chosen)
        per_character[index] = scores
        shots[index] = sum(score for _, score in scores) / len(scores)
    value = sum(shots.values()) / len(shots) if shots else 0.0
    return CrossCsd(value, shots, per_character)

"""ViStoryBench's diversity metric, the Inception Score, as a pure function over class probabilities.

From ``ViStoryBench/vistorybench`` @ 514cc31, ``vistorybench/bench/diversity/inception_score.py``
(``calculate_inception_score``, lines 97-122) and ``diversity_evaluator.py`` (``is_splits = 1``, ``is_batch_size =
32``): the softmax outputs ``p(y|x)`` of Inception-v3 (``vision/inception.py``) for *every shot of every story of a
run* (one score per run, not per story) are cut into ``splits`` consecutive parts of ``n // splits`` images (the
remainder is dropped); in each part, ``IS = exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the part's mean
(``scipy.stats.entropy``, natural log, both distributions renormalised to sum 1); the result is the mean and the
population standard deviation (``np.std``) of the parts' scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from storycast.evaluation.metrics import MetricInputError

VISTORY_SPLITS = 1
"""``diversity_evaluator.py`` line 26: ``self.is_splits = 1``."""


@dataclass(frozen=True)
class InceptionScore:
    """Inception Score of a set of images.

    Attributes:
        mean: Mean over the splits of ``exp(mean KL)``.
        std: Population standard deviation over the splits (0.0 with one split).
        splits: Splits scored.
        images: Images used (``splits * (n // splits)``; the remainder is dropped, as theirs).
    """

    mean: float
    std: float
    splits: int
    images: int


def inception_score(probs: torch.Tensor, splits: int = VISTORY_SPLITS) -> InceptionScore:
    """The Inception Score of ``probs`` (n, classes), rows being softmax outputs ``p(y|x)``.

    Raises:
        MetricInputError: ``probs`` is not (n, classes), has a negative entry, a row summing to 0, or fewer rows
            than ``splits`` (where theirs prints a warning and returns 0.0).
    """
    if not isinstance(splits, int) or splits < 1:
        raise MetricInputError(f"splits must be a positive integer, got {splits!r}.")
    if probs.ndim != 2:
        raise MetricInputError(f"probs must have shape (n, classes), got {tuple(probs.shape)}.")
    p = probs.double()
    if bool((p < 0).any()) or bool((p.sum(dim=1) <= 0).any()):
        raise MetricInputError("probs must be non-negative with every row summing to more than 0 (softmax outputs).")
    size = p.shape[0] // splits
    if size == 0:
        raise MetricInputError(
            f"the Inception Score needs at least {splits} image(s) for {splits} split(s), got {p.shape[0]}."
        )
    p = p / p.sum(dim=1, keepdim=True)
    scores = []
    for i in range(splits):
        part = p[i * size : (i + 1) * size]
        marginal = part.mean(dim=0, keepdim=True)
        marginal = marginal / marginal.sum()
        # 0 * log(0 / q) counts as 0 (scipy's rel_entr); q > 0 wherever p > 0, since q is the mean of the rows.
        terms = torch.where(part > 0, part * (part / marginal).log(), torch.zeros_like(part))
        scores.append(math.exp(float(terms.sum(dim=1).mean())))
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return InceptionScore(mean, std, splits, size * splits)

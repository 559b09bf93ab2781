"""ViStoryBench's character metrics as pure functions: CIDS (cross / self), OCCM and the copy-paste degree.

Every formula follows ``ViStoryBench/vistorybench`` at 514cc31, ``vistorybench/bench/content/cids_evaluator.py``
(line numbers of that file below); the per-story driver that feeds them detections and embeddings is
:mod:`storycast.evaluation.vistory_scoring`.

A crop's embedding is a :data:`Features` mapping, model name -> L2-normalised (d,) vector: ``{"clip": v}`` for a
character that is not a realistic human, ``{"arcface": a, "adaface": b, "facenet": c}`` (the models that found a
face) for one that is. The similarity of two crops is the ensemble over the models both have
(:func:`ensemble_similarity`); with one model it is that model's cosine, which is what their CLIP path computes as
``feats @ refs.T`` on normalised rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from storycast.evaluation.metrics import MetricInputError

Features = Mapping[str, torch.Tensor]
"""One crop's embeddings: model name -> L2-normalised (d,) vector."""

ENSEMBLE_METHODS = ("average", "weighted")
DEFAULT_ENSEMBLE = "average"
"""``config.yaml`` ``evaluators.cids.ensemble_method`` at 514cc31 (the weights below are then unused)."""
FACE_WEIGHTS = {"arcface": 0.4, "adaface": 0.4, "facenet": 0.2}
"""``config.yaml`` ``evaluators.cids.ensemble_weights``: read only by the 'weighted' method (lines 489-514)."""
INVALID_SCORE = -1e6
"""Score of a (character, candidate) pair without features in the matching matrix (line 835)."""
OCCM_EPS = 1e-6
"""``epsilon`` of OCCM (line 990)."""
COPY_PASTE_TEMPERATURE = 0.01
"""``T`` of the copy-paste softmax (line 1039)."""


def ensemble_similarity(
    a: Features, b: Features, *, method: str = DEFAULT_ENSEMBLE, weights: Mapping[str, float] | None = None
) -> float:
    """Similarity of two crops over the models both have (``_compute_ensemble_similarity``, lines 445-516).

    Per common model, the cosine of the two vectors (their 1 x 1 Hungarian step is that cosine). 'average':
    the mean over models; 'weighted': ``sum(w_m * s_m) / sum(w_m)`` with ``weights`` (1.0 for a model not
    listed). No common model gives 0.0, as theirs.
    """
    if method not in ENSEMBLE_METHODS:
        raise MetricInputError(
            f"ensemble method '{method}' is not known. Fix: use one of {', '.join(ENSEMBLE_METHODS)}."
        )
    common = [name for name in a if name in b]
    if not common:
        return 0.0
    sims = [float(torch.nn.functional.cosine_similarity(a[m].double(), b[m].double(), dim=0)) for m in common]
    if method == "average":
        return sum(sims) / len(sims)
    w = [float((weights or {}).get(m, 1.0)) for m in common]
    return sum(s * wm for s, wm in zip(sims, w, strict=True)) / sum(w)


def similarity_matrix(
    rows: Sequence[Features],
    cols: Sequence[Features],
    *,
    method: str = DEFAULT_ENSEMBLE,
    weights: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """(len(rows), len(cols)) float64 ensemble similarities (``_compute_multimodel_similarity_matrix``)."""
    out = torch.zeros(len(rows), len(cols), dtype=torch.float64)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = ensemble_similarity(a, b, method=method, weights=weights)
    return out


def match_characters(scores: torch.Tensor, valid: torch.Tensor) -> list[int | None]:
    """Detections of one shot to its characters: per character, a candidate index or None (lines 834-894).

    ``scores`` (C, K): each character's best similarity over its references to each candidate crop; ``valid``
    (C, K) bool: the candidate has features for that character's encoder. Invalid pairs score
    :data:`INVALID_SCORE`; the assignment maximises the total (``scipy.optimize.linear_sum_assignment`` on the
    negated matrix, as theirs); a pair the solver picks that is not valid is dropped, so that character is
    unmatched.
    """
    from scipy.optimize import linear_sum_assignment

    if scores.ndim != 2 or valid.shape != scores.shape:
        raise MetricInputError(
            f"scores must be (characters, candidates) and valid the same shape; got {tuple(scores.shape)}, "
            f"{tuple(valid.shape)}."
        )
    # Their matrix is float32 (torch.full(..., dtype=float32)); the solver sees it as such.
    matrix = torch.where(valid, scores.float(), torch.tensor(INVALID_SCORE, dtype=torch.float32))
    result: list[int | None] = [None] * scores.shape[0]
    if scores.shape[1] == 0:
        return result
    rows, cols = linear_sum_assignment(-matrix.numpy())
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        if bool(valid[row, col]):
            result[row] = col
    return result


def occm(expected: int, detected: int, *, eps: float = OCCM_EPS) -> float:
    """On-stage character count matching of one shot, in %: ``100 * exp(-|D - E| / (eps + E))`` (line 991).

    ``expected`` E: the shot's characters; ``detected`` D: the boxes GroundingDINO kept (all of them, whoever
    they are).
    """
    if expected < 0 or detected < 0:
        raise MetricInputError(f"counts must be 0 or more, got expected={expected}, detected={detected}.")
    return 100.0 * math.exp(-abs(detected - expected) / (eps + expected))


def character_cids(shots: Sequence[Features], references: Sequence[Features], **ensemble) -> tuple[float, float]:
    """(cross, self) of one character from its matched shot crops (lines 1013-1028).

    cross: the mean over all (shot crop, reference) pairs; self: the mean over shot-crop pairs i < j, 1.0 for a
    single crop.
    """
    if not shots or not references:
        raise MetricInputError("character_cids needs at least one shot crop and one reference.")
    cross = float(similarity_matrix(shots, references, **ensemble).mean())
    if len(shots) == 1:
        return cross, 1.0
    own = similarity_matrix(shots, shots, **ensemble)
    i, j = torch.triu_indices(len(shots), len(shots), offset=1)
    return cross, float(own[i, j].mean())


def copy_paste_rate(
    shots: Sequence[Features],
    reference: Features,
    mirrored: Features,
    *,
    temperature: float = COPY_PASTE_TEMPERATURE,
    **ensemble,
) -> float:
    """Copy-paste degree of one character (lines 1030-1042): how much its shot crops prefer the reference over
    the reference mirrored left-right.

    Per crop, the similarities to the first usable reference image and to its mirror image, each clamped to
    [-1, 1], go through a softmax at ``temperature``; the rate is the mean probability of the unmirrored one. A
    crop pasted from the reference scores near 1; one that merely shares the identity is indifferent to the mirror
    (0.5).
    """
    if not shots:
        raise MetricInputError("copy_paste_rate needs at least one shot crop.")
    sims = similarity_matrix(shots, [reference, mirrored], **ensemble).float().clamp(-1.0, 1.0)
    return float(torch.softmax(sims / temperature, dim=1)[:, 0].mean())


def story_means(per_character: Mapping[str, tuple[float, float]], occm_scores: Sequence[float]) -> dict[str, float]:
    """A story's CIDS and OCCM (lines 1053-1067): unweighted means over the story's characters (a character never
    matched counts (0, 0)) and over its scored shots; 0.0 when there is none, as theirs."""
    cross = [c for c, _ in per_character.values()]
    own = [s for _, s in per_character.values()]
    return {
        "cids_cross": sum(cross) / len(cross) if cross else 0.0,
        "cids_self": sum(own) / len(own) if own else 0.0,
        "occm": sum(occm_scores) / len(occm_scores) if occm_scores else 0.0,
    }


def crop_boxes(boxes: torch.Tensor, width: int, height: int) -> list[tuple[int, list[int]]]:
    """The crops ``crop_img`` (lines 587-626) cuts for GroundingDINO boxes: (box index, pixel box) per kept box.

    ``boxes`` (N, 4) are normalised ``(cx, cy, w, h)``. As theirs: each is scaled to pixels and truncated to
    integers (``.int()``), turned into corners in float32 (``box_convert``), clamped to the image, kept when it
    has area, and cut by PIL, which rounds each corner half to even.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise MetricInputError(f"boxes must be (N, 4) normalised (cx, cy, w, h), got {tuple(boxes.shape)}.")
    pixels = (boxes.float().cpu() * torch.tensor([width, height, width, height], dtype=torch.float32)).int()
    cx, cy, w, h = pixels.unbind(-1)
    corners = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    out: list[tuple[int, list[int]]] = []
    for index, (x0, y0, x1, y1) in enumerate(corners.tolist()):
        x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
        y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
        if x1 > x0 and y1 > y0:
            out.append((index, [round(v) for v in (x0, y0, x1, y1)]))
    return out


def face_threshold_ladder(initial: float = 0.45, minimum: float = 0.1, step: float = 0.1) -> list[float]:
    """The detection thresholds their ArcFace tries in turn until a face is found (lines 144-147, 287-293), in the
    same float arithmetic: ``[0.45, 0.35, 0.24999999999999997, 0.14999999999999997]``."""
    ladder, current = [], initial
    while current >= minimum:
        ladder.append(current)
        current -= step
    return ladder

"""Metrics of consistent-character story illustration, as pure functions over feature tensors.

No model is loaded and no file is read here: the extractors (``vision/features.py``, ``vision/faces.py``) turn
images and texts into features, and these functions turn features into numbers. Protocol facts and
their sources are in ``docs/metrics.md`` §1-§5, these formulas in §6.1; with ``ê`` an L2-normalised
embedding, they are:

- CLIP-T (text alignment): ``scale * <ê_img(x_i), ê_txt(p_i)>`` per image/text pair.
  IdentityStory reports it in % (scale 100, no clipping, values ~35); Hessel et al.'s CLIPScore
  (1Prompt1Story, ConsiStory) is ``2.5 * max(cos, 0)``; torchmetrics' ``CLIPScore`` is
  ``max(100 * cos, 0)``.
- CLIP-I / DINO-I (consistency): mean cosine over all unordered pairs i<j of a story's frames
  (``pairwise_similarity``), or mean cosine of every frame to an anchor (``anchor_similarity``).
- Face-Sim: ArcFace cosine, pairwise or against a reference, with an explicit missing-face policy.
- Multi-character Face-Sim: faces of each frame are assigned to characters by maximum total
  cosine to per-character reference embeddings (Hungarian matching, as ViStoryBench's CIDS).
- Q-Align: ``softmax(logits of [excellent, good, fair, poor, bad]) @ [1, .75, .5, .25, 0]``
  (Q-Align ``scorer.py``), reported on the 1-5 scale as ``4 * s + 1`` (OneAlign ``score``, weights 5..1).
- Aggregation: per-story mean, then the unweighted mean over stories (1P1S-lineage script).

Similarities are computed in float32 whatever the input dtype. Functions that return one number per
input return tensors; functions that also count (faces, aggregates) return small frozen dataclasses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from storycast.errors import StorycastError

MissingFacePolicy = Literal["skip", "zero"]
MISSING_FACE_POLICIES: tuple[str, ...] = ("skip", "zero")

PERCENT = 100.0
"""Scale of IdentityStory's CLIP-T, CLIP-T-C, CLIP-I and Face-Sim (reported in %)."""
HESSEL_W = 2.5
"""Hessel et al. (2021) CLIPScore weight: CLIP-S = w * max(cos, 0)."""

QALIGN_LEVELS: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
"""The five level words whose next-token logits Q-Align reads, in this order."""
QALIGN_LEVEL_WEIGHTS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Q-Align ``scorer.py`` weights (0-1 scale); OneAlign's ``score`` uses 5, 4, 3, 2, 1 = 4 * w + 1."""


class MetricInputError(StorycastError, ValueError):
    """Features given to a metric have the wrong shape, count or value."""


# ----------------------------------------------------------------------------------------------
# Cosine helpers


def _as_matrix(features: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise MetricInputError(f"{name} must be a torch.Tensor, got {type(features).__name__}.")
    if features.ndim == 1:
        features = features.unsqueeze(0)
    if features.ndim != 2:
        raise MetricInputError(f"{name} must have shape (n, d) or (d,), got {tuple(features.shape)}.")
    return features.float()


def l2_normalize(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each row (last dimension) by its L2 norm, in float32."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` (n, d) with every row of ``b`` (m, d): shape (n, m)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"feature sizes differ: a has d={a.shape[1]}, b has d={b.shape[1]}.")
    return l2_normalize(a) @ l2_normalize(b).T


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of row i of ``a`` with row i of ``b``: shape (n,)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise MetricInputError(f"paired features must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return (l2_normalize(a) * l2_normalize(b)).sum(dim=-1)


# ----------------------------------------------------------------------------------------------
# CLIP-T, CLIP-I, DINO-I


def clip_t(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    scale: float = PERCENT,
    clamp_negative: bool = False,
) -> torch.Tensor:
    """Text alignment of each image with its own text: ``scale * cos``, one value per pair, shape (n,).

    Conventions: IdentityStory CLIP-T / CLIP-T-C: ``scale=100`` (no clamp). Hessel et al. CLIPScore
    (ConsiStory, 1Prompt1Story paper): ``scale=2.5, clamp_negative=True`` (``2.5 * max(cos, 0)``).
    The 1P1S-lineage script: ``scale=2.5`` without clamp. torchmetrics: ``scale=100, clamp_negative=True``.
    """
    cos = paired_cosine(image_features, text_features)
    if clamp_negative:
        cos = cos.clamp_min(0.0)
    return scale * cos


def pairwise_similarity(features: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """Mean cosine over all unordered pairs i<j of a story's frames (0-dim tensor).

    CLIP-I / DINO-I as in the 1P1S-lineage script and IdentityStory (assumed): ``2/(N(N-1)) Σ_{i<j} cos``.
    """
    features = _as_matrix(features, "features")
    n = features.shape[0]
    if n < 2:
        raise MetricInputError(f"pairwise similarity needs at least 2 frames, got {n}.")
    sims = cosine_matrix(features, features)
    i, j = torch.triu_indices(n, n, offset=1)
    return scale * sims[i, j].mean()


def anchor_similarity(features: torch.Tensor, anchor: int | torch.Tensor = 0, *, scale: float = 1.0) -> torch.Tensor:
    """Mean cosine of frames to an anchor (0-dim tensor).

    ``anchor`` is a frame index (that frame is left out of the mean) or an anchor feature (d,) or
    (1, d), e.g. a reference image's embedding (then every frame counts).
    """
    features = _as_matrix(features, "features")
    n = features.shape[0]
    if isinstance(anchor, int):
        if not -n <= anchor < n:
            raise MetricInputError(f"anchor index {anchor} is out of range for {n} frames.")
        if n < 2:
            raise MetricInputError("anchor similarity with an anchor frame needs at least 2 frames.")
        index = anchor % n
        others = torch.cat([features[:index], features[index + 1 :]])
        return scale * cosine_matrix(others, features[index]).mean()
    anchor_matrix = _as_matrix(anchor, "anchor")
    if anchor_matrix.shape[0] != 1:
        raise MetricInputError(f"anchor must be one feature vector, got shape {tuple(anchor.shape)}.")
    return scale * cosine_matrix(features, anchor_matrix).mean()


# ----------------------------------------------------------------------------------------------
# Face similarity with a missing-face policy


@dataclass(frozen=True)
class FaceSimilarity:
    """Face-Sim of one story (or of one character in one story), with the counts behind it.

    Attributes:
        value: The similarity (times ``scale``). NaN when policy 'skip' left no pair to score.
        policy: 'skip' (pairs with a missing face are left out of the mean) or 'zero' (they count as 0).
        pairs_total: Pairs that would be scored if every face were found.
        pairs_scored: Pairs where both faces were found.
        frames_total: Frames considered.
        frames_with_face: Frames where a face was found (coverage = frames_with_face / frames_total).
    """

    value: float
    policy: str
    pairs_total: int
    pairs_scored: int
    frames_total: int
    frames_with_face: int

    @property
    def pairs_missing(self) -> int:
        return self.pairs_total - self.pairs_scored

    @property
    def coverage(self) -> float:
        return self.frames_with_face / self.frames_total if self.frames_total else math.nan


def _check_policy(missing: str) -> None:
    if missing not in MISSING_FACE_POLICIES:
        raise MetricInputError(f"missing-face policy '{missing}' is not known; use one of {MISSING_FACE_POLICIES}.")


def _face_stack(embeddings: Sequence[torch.Tensor | None]) -> tuple[list[int], torch.Tensor | None]:
    found = [i for i, e in enumerate(embeddings) if e is not None]
    if not found:
        return found, None
    rows = [_as_matrix(embeddings[i], f"embeddings[{i}]") for i in found]
    for i, row in zip(found, rows, strict=True):
        if row.shape[0] != 1:
            raise MetricInputError(f"embeddings[{i}] must be one face embedding (d,), got {tuple(row.shape)}.")
    return found, torch.cat(rows)


def _policy_value(sims: torch.Tensor, pairs_total: int, missing: str, scale: float) -> float:
    if missing == "zero":
        return scale * float(sims.sum()) / pairs_total if pairs_total else math.nan
    return scale * float(sims.mean()) if sims.numel() else math.nan


def face_similarity_pairwise(
    embeddings: Sequence[torch.Tensor | None],
    *,
    missing: MissingFacePolicy = "skip",
    scale: float = 1.0,
) -> FaceSimilarity:
    """Face-Sim across the frames of a story: mean ArcFace cosine over all pairs i<j.

    ``embeddings[i]`` is frame i's face embedding (d,), or None when no face was found. Policy
    'skip' averages over the pairs where both faces exist (the value is NaN if there is none);
    'zero' scores a pair with a missing face as 0 and divides by all N(N-1)/2 pairs.
    """
    _check_policy(missing)
    n = len(embeddings)
    found, stack = _face_stack(embeddings)
    pairs_total = n * (n - 1) // 2
    if stack is None or len(found) < 2:
        sims = torch.zeros(0)
    else:
        i, j = torch.triu_indices(len(found), len(found), offset=1)
        sims = cosine_matrix(stack, stack)[i, j]
    value = _policy_value(sims, pairs_total, missing, scale)
    return FaceSimilarity(value, missing, pairs_total, int(sims.numel()), n, len(found))


def face_similarity_to_reference(
    embeddings: Sequence[torch.Tensor | None],
    reference: torch.Tensor,
    *,
    missing: MissingFacePolicy = "skip",
    scale: float = 1.0,
) -> FaceSimilarity:
    """Face-Sim of each frame's face to a reference face (d,); a 'pair' is (frame, reference)."""
    _check_policy(missing)
    if _as_matrix(reference, "reference").shape[0] != 1:
        raise MetricInputError(f"reference must be one face embedding (d,), got shape {tuple(reference.shape)}.")
    n = len(embeddings)
    found, stack = _face_stack(embeddings)
    sims = torch.zeros(0) if stack is None else cosine_matrix(stack, reference)[:, 0]
    value = _policy_value(sims, n, missing, scale)
    return FaceSimilarity(value, missing, n, int(sims.numel()), n, len(found))


# ----------------------------------------------------------------------------------------------
# Multi-character face matching


def assign_faces(similarity: torch.Tensor, *, min_similarity: float | None = None) -> list[int | None]:
    """Assign detected faces to characters, each face to at most one character.

    ``similarity`` is (characters, faces), e.g. ``cosine_matrix(references, frame_faces)``. The
    assignment maximises the total similarity (Hungarian matching, as ViStoryBench CIDS v1.3), solved
    by ``scipy.optimize.linear_sum_assignment`` for every size. When several assignments reach the same
    total (exact ties, as with identical faces) the one scipy's solver returns is kept: with all
    similarities equal that is character i to face i, but in general it need not be the first in
    lexicographic order. Returns, per character, the face index or None (more characters than faces,
    or the match is below ``min_similarity``).
    """
    from scipy.optimize import linear_sum_assignment

    similarity = similarity.detach().float().cpu()
    if similarity.ndim != 2:
        raise MetricInputError(f"similarity must be (characters, faces), got shape {tuple(similarity.shape)}.")
    result: list[int | None] = [None] * similarity.shape[0]
    rows, cols = linear_sum_assignment(similarity.double().numpy(), maximize=True)
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        if min_similarity is None or float(similarity[row, col]) >= min_similarity:
            result[row] = col
    return result


@dataclass(frozen=True, eq=False)
class CharacterFaces:
    """The faces matched to one character across the frames where the character appears.

    Attributes:
        character: Index of the character (row of the references).
        frames: Indices of the frames where the character is expected.
        embeddings: For each of those frames, the matched face embedding (d,) or None.
    """

    character: int
    frames: tuple[int, ...]
    embeddings: tuple[torch.Tensor | None, ...]


def match_faces_to_characters(
    frame_faces: Sequence[torch.Tensor | None],
    references: torch.Tensor,
    *,
    present: Sequence[Sequence[int]] | None = None,
    min_similarity: float | None = None,
) -> list[CharacterFaces]:
    """Match each frame's detected faces to the characters expected in it.

    Args:
        frame_faces: Per frame, the embeddings of every detected face, (k_i, d); k_i may be 0 (or None).
        references: One reference / anchor embedding per character, (c, d).
        present: Per frame, the indices of the characters in it (default: every character in every frame).
        min_similarity: A match below this cosine counts as a missing face.
    """
    references = _as_matrix(references, "references")
    n_chars = references.shape[0]
    if present is None:
        present = [range(n_chars)] * len(frame_faces)
    if len(present) != len(frame_faces):
        raise MetricInputError(f"present has {len(present)} entries but there are {len(frame_faces)} frames.")
    frames: list[list[int]] = [[] for _ in range(n_chars)]
    matched: list[list[torch.Tensor | None]] = [[] for _ in range(n_chars)]
    for f, (faces, chars) in enumerate(zip(frame_faces, present, strict=True)):
        chars = list(chars)
        if any(not 0 <= ch < n_chars for ch in chars) or len(set(chars)) != len(chars):
            raise MetricInputError(f"present[{f}] = {chars} must hold distinct character indices < {n_chars}.")
        if faces is None or faces.numel() == 0:
            faces = torch.zeros(0, references.shape[1])
        faces = _as_matrix(faces, f"frame_faces[{f}]")
        choice = assign_faces(cosine_matrix(references[chars], faces), min_similarity=min_similarity)
        for ch, face in zip(chars, choice, strict=True):
            frames[ch].append(f)
            matched[ch].append(None if face is None else faces[face])
    return [CharacterFaces(ch, tuple(frames[ch]), tuple(matched[ch])) for ch in range(n_chars)]


def character_face_similarity(
    frame_faces: Sequence[torch.Tensor | None],
    references: torch.Tensor,
    *,
    present: Sequence[Sequence[int]] | None = None,
    mode: Literal["pairwise", "reference"] = "pairwise",
    missing: MissingFacePolicy = "skip",
    min_similarity: float | None = None,
    scale: float = 1.0,
) -> list[FaceSimilarity]:
    """Per-character Face-Sim of a multi-character story.

    Faces are matched to characters with ``match_faces_to_characters``; then each character is
    scored across its frames ('pairwise', self-consistency) or against its reference ('reference').
    """
    if mode not in ("pairwise", "reference"):
        raise MetricInputError(f"mode '{mode}' is not known; use 'pairwise' or 'reference'.")
    references = _as_matrix(references, "references")
    per_character = match_faces_to_characters(frame_faces, references, present=present, min_similarity=min_similarity)
    if mode == "pairwise":
        return [face_similarity_pairwise(c.embeddings, missing=missing, scale=scale) for c in per_character]
    return [
        face_similarity_to_reference(c.embeddings, references[c.character], missing=missing, scale=scale)
        for c in per_character
    ]


# ----------------------------------------------------------------------------------------------
# Q-Align


def qalign_score(level_logits: torch.Tensor, *, five_point: bool = True) -> torch.Tensor:
    """Q-Align / OneAlign score from the next-token logits of the five level words.

    ``level_logits[..., k]`` is the logit of ``QALIGN_LEVELS[k]`` (excellent, good, fair, poor, bad)
    after the prompt "... The quality (aesthetics) of the image is". The score is
    ``softmax(logits) @ [1, 0.75, 0.5, 0.25, 0]`` in [0, 1] (Q-Align ``scorer.py``), and
    ``4 * that + 1`` in [1, 5] when ``five_point`` (OneAlign ``score``, weights 5..1; IdentityStory's
    Q-Align-Gen/-Aes scale).
    """
    if level_logits.shape[-1] != len(QALIGN_LEVELS):
        raise MetricInputError(
            f"level_logits must end with {len(QALIGN_LEVELS)} logits {QALIGN_LEVELS}, got shape {tuple(level_logits.shape)}."
        )
    weights = torch.tensor(QALIGN_LEVEL_WEIGHTS, dtype=torch.float32, device=level_logits.device)
    unit = torch.softmax(level_logits.float(), dim=-1) @ weights
    return 4.0 * unit + 1.0 if five_point else unit


# ----------------------------------------------------------------------------------------------
# Aggregation


def story_mean(values: torch.Tensor | Sequence[float]) -> float:
    """Mean of one story's per-frame values (e.g. ``clip_t`` of its frames)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise MetricInputError("a story mean needs at least one value.")
    return float(values.mean())


@dataclass(frozen=True)
class Aggregate:
    """A metric over a benchmark split: per-story values, then their unweighted mean.

    Attributes:
        mean: Unweighted mean over stories of the per-story values (NaN values left out).
        sem: Standard error of that mean, std(ddof=1) / sqrt(n) (ConsiStory's error bars); NaN if n < 2.
        n_stories: Stories that contributed a value.
        n_skipped: Stories whose value was NaN (e.g. Face-Sim with no face pair), left out.
        story_values: The per-story values, in input order (NaN kept).
    """

    mean: float
    sem: float
    n_stories: int
    n_skipped: int
    story_values: tuple[float, ...]


def aggregate_stories(story_values: Sequence[float]) -> Aggregate:
    """Mean over stories of one value per story (each already a story mean or a pairwise score)."""
    values = tuple(float(v) for v in story_values)
    kept = [v for v in values if not math.isnan(v)]
    n = len(kept)
    mean = sum(kept) / n if n else math.nan
    sem = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1) / n) if n >= 2 else math.nan
    return Aggregate(mean, sem, n, len(values) - n, values)


def flat_mean(per_story_items: Sequence[torch.Tensor | Sequence[float]]) -> float:
    """Mean over all items of all stories (ConsiStory's CLIP-score over all 500 images)."""
    values = [float(v) for story in per_story_items for v in torch.as_tensor(story, dtype=torch.float64).flatten()]
    if not values:
        raise MetricInputError("a flat mean needs at least one value.")
    return sum(values) / len(values)

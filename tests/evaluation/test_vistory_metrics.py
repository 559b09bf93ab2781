"""ViStoryBench's character metrics against naive references written from cids_evaluator.py (514cc31)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from storycast.evaluation import vistory_metrics as V
from storycast.evaluation.metrics import MetricInputError


def _unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    return v / v.norm()


def _crop(seed: int, models=("arcface", "adaface", "facenet"), dim: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0) for m in models}


def naive_ensemble(a, b, method, weights):
    """_compute_ensemble_similarity as written: per common model a cosine matrix, its best assignment, the mean."""
    sims, ws = [], []
    for m in set(a) & set(b):
        s = float(a[m] @ b[m]) / float(a[m].norm() * b[m].norm())
        sims.append(s)
        ws.append(weights.get(m, 1.0))
    if not sims:
        return 0.0
    if method == "average":
        return sum(sims) / len(sims)
    return sum(s * w for s, w in zip(sims, ws, strict=True)) / sum(ws)


@pytest.mark.parametrize("method", ["average", "weighted"])
def test_ensemble_similarity_equals_their_formula(method):
    for seed in range(5):
        a, b = _crop(seed), _crop(seed + 100)
        del b["facenet"]  # models found by one side only are left out
        got = V.ensemble_similarity(a, b, method=method, weights=V.FACE_WEIGHTS)
        assert got == pytest.approx(naive_ensemble(a, b, method, V.FACE_WEIGHTS), abs=1e-6)


def test_weighted_differs_from_average_and_uses_the_weights():
    a = {"arcface": _unit(1, 0), "adaface": _unit(1, 0), "facenet": _unit(1, 0)}
    b = {"arcface": _unit(1, 0), "adaface": _unit(0, 1), "facenet": _unit(1, 0)}  # cosines 1, 0, 1
    assert V.ensemble_similarity(a, b, method="average") == pytest.approx(2 / 3)
    assert V.ensemble_similarity(a, b, method="weighted", weights=V.FACE_WEIGHTS) == pytest.approx(0.6)
    assert V.ensemble_similarity(a, {"clip": _unit(1, 0)}) == 0.0  # nothing in common
    with pytest.raises(MetricInputError, match="ensemble method"):
        V.ensemble_similarity(a, b, method="median")


def brute_force_match(scores, valid):
    """The best total over every injective assignment of characters to candidates, invalid pairs at -1e6."""
    c, k = scores.shape
    matrix = torch.where(valid, scores.float(), torch.tensor(-1e6)).double()
    best, best_total = None, -math.inf
    if c <= k:
        options = (list(zip(range(c), p, strict=True)) for p in itertools.permutations(range(k), c))
    else:
        options = (list(zip(p, range(k), strict=True)) for p in itertools.permutations(range(c), k))
    for pairs in options:
        total = sum(float(matrix[r, col]) for r, col in pairs)
        if total > best_total + 1e-9:
            best, best_total = pairs, total
    out = [None] * c
    for r, col in best:
        if valid[r, col]:
            out[r] = col
    return out


@pytest.mark.parametrize("shape", [(1, 3), (2, 2), (3, 2), (2, 4), (4, 3)])
def test_matching_equals_brute_force(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(10):
        scores = torch.rand(shape, generator=g) * 2 - 1
        valid = torch.rand(shape, generator=g) > 0.25
        assert V.match_characters(scores, valid) == brute_force_match(scores, valid)


def test_matching_is_global_not_greedy():
    # Greedy (v1.2) would give character 0 its best candidate 0, leaving character 1 the poor candidate 1.
    scores = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert V.match_characters(scores, torch.ones(2, 2, dtype=torch.bool)) == [1, 0]
    # An invalid pair is never kept, even when the solver has no other choice.
    assert V.match_characters(torch.tensor([[0.5]]), torch.tensor([[False]])) == [None]
    assert V.match_characters(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)) == [None, None]


@pytest.mark.parametrize(
    ("expected", "detected", "value"),
    [(2, 2, 100.0), (2, 0, 100 * math.exp(-1)), (1, 3, 100 * math.exp(-2)), (3, 4, 100 * math.exp(-1 / 3))],
)
def test_occm_on_hand_made_counts(expected, detected, value):
    assert V.occm(expected, detected) == pytest.approx(value, rel=1e-5)


def test_occm_counts_the_difference_relative_to_the_expected_count():
    # A relative count, not an absolute one: one box too many costs more with 1 character than with 4.
    assert V.occm(1, 2) < V.occm(4, 5)
    assert V.occm(0, 0) == 100.0
    with pytest.raises(MetricInputError):
        V.occm(-1, 0)


def test_character_cids_cross_and_self():
    shots = [_crop(s, models=("clip",)) for s in range(3)]
    refs = [_crop(s, models=("clip",)) for s in (10, 11)]
    cross, own = V.character_cids(shots, refs)
    naive_cross = sum(float(a["clip"] @ r["clip"]) for a in shots for r in refs) / 6
    naive_self = sum(float(shots[i]["clip"] @ shots[j]["clip"]) for i, j in ((0, 1), (0, 2), (1, 2))) / 3
    assert (cross, own) == (pytest.approx(naive_cross), pytest.approx(naive_self))
    assert V.character_cids(shots[:1], refs)[1] == 1.0  # one crop: self-similarity 1


def test_copy_paste_rate_equals_the_two_way_softmax():
    shots = [_crop(s) for s in range(4)]
    ref, mirror = _crop(50), _crop(51)
    expected = 0.0
    for crop in shots:
        s_o = max(-1.0, min(1.0, naive_ensemble(crop, ref, "average", {})))
        s_m = max(-1.0, min(1.0, naive_ensemble(crop, mirror, "average", {})))
        expected += 1.0 / (1.0 + math.exp((s_m - s_o) / 0.01))
    assert V.copy_paste_rate(shots, ref, mirror) == pytest.approx(expected / 4, rel=1e-4)
    # A crop equal to the reference is a copy (near 1); equidistant from both it is 0.5.
    assert V.copy_paste_rate([ref], ref, mirror) > 0.99
    assert V.copy_paste_rate([ref], ref, ref) == pytest.approx(0.5)


def test_story_means_count_unmatched_characters_as_zero():
    means = V.story_means({"a": (0.8, 0.6), "b": (0.0, 0.0)}, [100.0, 50.0])
    assert means == {"cids_cross": pytest.approx(0.4), "cids_self": pytest.approx(0.3), "occm": 75.0}
    assert V.story_means({}, []) == {"cids_cross": 0.0, "cids_self": 0.0, "occm": 0.0}


def test_crop_boxes_truncate_then_round_as_theirs():
    # 100 x 50 image; box centre (0.505, 0.5), size (0.213, 0.31) -> pixels (50, 25, 21, 15) after truncation.
    boxes = torch.tensor([[0.505, 0.5, 0.213, 0.31], [0.0, 0.0, 0.001, 0.001], [0.99, 0.5, 0.2, 0.2]])
    crops = V.crop_boxes(boxes, 100, 50)
    # 50 - 10.5 = 39.5 -> 40 (half to even), 50 + 10.5 = 60.5 -> 60; 25 -/+ 7.5 -> 18, 32.
    assert crops[0] == (0, [40, 18, 60, 32])
    assert [index for index, _ in crops] == [0, 2]  # the zero-area box is dropped
    assert crops[1][1][2] == 100  # clamped to the image


def test_threshold_ladder_is_theirs():
    assert V.face_threshold_ladder() == [0.45, 0.35, 0.24999999999999997, 0.14999999999999997]

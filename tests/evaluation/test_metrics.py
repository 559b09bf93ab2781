"""Each metric against a naive reference computed with loops on fixed tensors."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch

from storycast.evaluation import metrics as M


def _features(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(float(x) ** 2 for x in a)) / math.sqrt(sum(float(y) ** 2 for y in b))


# ----------------------------------------------------------------------------------------------
# cosine, CLIP-T


def test_cosine_matrix_and_paired_cosine_match_loops():
    a, b = _features(4, seed=1), _features(3, seed=2)
    got = M.cosine_matrix(a, b)
    for i, j in itertools.product(range(4), range(3)):
        assert got[i, j].item() == pytest.approx(_cos(a[i], b[j]), abs=1e-6)
    c = _features(4, seed=3)
    paired = M.paired_cosine(a, c)
    assert paired.tolist() == pytest.approx([_cos(a[i], c[i]) for i in range(4)], abs=1e-6)


def test_clip_t_scales_and_clamps_per_pair():
    image = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    text = torch.tensor([[2.0, 0.0], [-1.0, -0.5], [1.0, 1.0]])
    cos = [_cos(image[i], text[i]) for i in range(3)]  # 1, negative, 1/sqrt(2)
    assert cos[1] < 0
    assert M.clip_t(image, text).tolist() == pytest.approx([100 * c for c in cos], abs=1e-4)
    hessel = M.clip_t(image, text, scale=M.HESSEL_W, clamp_negative=True)
    assert hessel.tolist() == pytest.approx([2.5 * max(c, 0.0) for c in cos], abs=1e-6)
    assert M.clip_t(image, text, scale=2.5)[1].item() == pytest.approx(2.5 * cos[1], abs=1e-6)


def test_clip_t_rejects_mismatched_pairs():
    with pytest.raises(M.MetricInputError, match="same shape"):
        M.clip_t(_features(3), _features(2))


def test_half_precision_features_are_scored_in_float32():
    f = _features(5, d=64, seed=4)
    assert M.pairwise_similarity(f.half()).dtype == torch.float32
    assert M.pairwise_similarity(f.half()).item() == pytest.approx(M.pairwise_similarity(f).item(), abs=2e-3)


# ----------------------------------------------------------------------------------------------
# pairwise vs anchor


def test_pairwise_similarity_is_the_mean_over_unordered_pairs():
    f = _features(5, seed=5)
    naive = [_cos(f[i], f[j]) for i in range(5) for j in range(i + 1, 5)]
    assert len(naive) == 10
    assert M.pairwise_similarity(f).item() == pytest.approx(sum(naive) / 10, abs=1e-6)
    assert M.pairwise_similarity(f, scale=100).item() == pytest.approx(100 * sum(naive) / 10, abs=1e-4)
    assert M.pairwise_similarity(3.0 * f).item() == pytest.approx(M.pairwise_similarity(f).item(), abs=1e-6)


def test_pairwise_similarity_needs_two_frames():
    with pytest.raises(M.MetricInputError, match="at least 2 frames"):
        M.pairwise_similarity(_features(1))


def test_anchor_similarity_with_index_leaves_the_anchor_out():
    f = _features(4, seed=6)
    naive0 = sum(_cos(f[0], f[j]) for j in (1, 2, 3)) / 3
    naive_last = sum(_cos(f[3], f[j]) for j in (0, 1, 2)) / 3
    assert M.anchor_similarity(f).item() == pytest.approx(naive0, abs=1e-6)
    assert M.anchor_similarity(f, anchor=-1).item() == pytest.approx(naive_last, abs=1e-6)
    with pytest.raises(M.MetricInputError, match="out of range"):
        M.anchor_similarity(f, anchor=4)


def test_anchor_similarity_with_a_reference_feature_counts_every_frame():
    f, ref = _features(4, seed=7), _features(1, seed=8)[0]
    naive = sum(_cos(f[i], ref) for i in range(4)) / 4
    assert M.anchor_similarity(f, anchor=ref).item() == pytest.approx(naive, abs=1e-6)


def test_pairwise_and_anchor_differ_when_the_anchor_is_an_outlier():
    # Frames 1..3 agree with each other; frame 0 points elsewhere.
    f = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.1], [0.0, 1.0, -0.1], [0.1, 1.0, 0.0]])
    pairwise, anchor = M.pairwise_similarity(f).item(), M.anchor_similarity(f, anchor=0).item()
    assert anchor == pytest.approx((0.0 + 0.0 + _cos(f[0], f[3])) / 3, abs=1e-6)
    assert pairwise > anchor + 0.3


# ----------------------------------------------------------------------------------------------
# Face-Sim and the missing-face policy


def test_face_pairwise_skip_and_zero_policies():
    f = _features(4, seed=9)
    embeddings = [f[0], None, f[2], f[3]]
    scored = [_cos(f[i], f[j]) for i, j in ((0, 2), (0, 3), (2, 3))]
    skip = M.face_similarity_pairwise(embeddings, missing="skip")
    zero = M.face_similarity_pairwise(embeddings, missing="zero")
    assert skip.value == pytest.approx(sum(scored) / 3, abs=1e-6)
    assert zero.value == pytest.approx(sum(scored) / 6, abs=1e-6)  # 6 pairs, 3 of them count 0
    assert (skip.pairs_total, skip.pairs_scored, skip.pairs_missing) == (6, 3, 3)
    assert (skip.frames_total, skip.frames_with_face, skip.coverage) == (4, 3, 0.75)
    scaled = M.face_similarity_pairwise(embeddings, missing="skip", scale=100)
    assert scaled.value == pytest.approx(100 * skip.value, abs=1e-4)


def test_face_pairwise_without_any_pair():
    f = _features(3, seed=10)
    skip = M.face_similarity_pairwise([f[0], None, None], missing="skip")
    zero = M.face_similarity_pairwise([f[0], None, None], missing="zero")
    assert math.isnan(skip.value) and skip.pairs_scored == 0
    assert zero.value == 0.0 and zero.pairs_total == 3
    assert math.isnan(M.face_similarity_pairwise([None, None]).value)


def test_face_similarity_to_reference_policies():
    f, ref = _features(3, seed=11), _features(1, seed=12)[0]
    embeddings = [f[0], None, f[2]]
    scored = [_cos(f[0], ref), _cos(f[2], ref)]
    skip = M.face_similarity_to_reference(embeddings, ref)
    zero = M.face_similarity_to_reference(embeddings, ref, missing="zero")
    assert skip.value == pytest.approx(sum(scored) / 2, abs=1e-6)
    assert zero.value == pytest.approx(sum(scored) / 3, abs=1e-6)
    assert (zero.pairs_total, zero.pairs_scored) == (3, 2)
    with pytest.raises(M.MetricInputError, match="one face embedding"):
        M.face_similarity_to_reference(embeddings, _features(2, seed=13))


def test_unknown_missing_face_policy_is_refused():
    with pytest.raises(M.MetricInputError, match="'drop' is not known"):
        M.face_similarity_pairwise([None], missing="drop")


# ----------------------------------------------------------------------------------------------
# Multi-character matching


def _best_total(sim: torch.Tensor) -> float:
    """Naive optimum: every injective matching of min(c, k) pairs, by brute force."""
    c, k = sim.shape
    m = min(c, k)
    best = -math.inf
    for rows in itertools.permutations(range(c), m):
        for cols in itertools.permutations(range(k), m):
            best = max(best, sum(float(sim[r, q]) for r, q in zip(rows, cols, strict=True)))
    return best


def _total(sim: torch.Tensor, assignment: list[int | None]) -> float:
    return sum(float(sim[r, q]) for r, q in enumerate(assignment) if q is not None)


@pytest.mark.parametrize(("c", "k"), [(1, 1), (1, 4), (2, 3), (3, 3), (3, 5), (3, 2), (2, 1), (4, 4), (5, 3)])
def test_assign_faces_reaches_the_optimum(c, k):
    for seed in range(5):
        sim = torch.rand(c, k, generator=torch.Generator().manual_seed(100 * c + 10 * k + seed)) * 2 - 1
        assignment = M.assign_faces(sim)
        used = [q for q in assignment if q is not None]
        assert len(used) == len(set(used)) == min(c, k)
        assert _total(sim, assignment) == pytest.approx(_best_total(sim), abs=1e-6)


def test_assign_faces_is_not_greedy():
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])  # greedy: 0->0, 1->1 (1.0); optimum: 0->1, 1->0 (1.65)
    assert M.assign_faces(sim) == [1, 0]


def _enumerated_assignment(sim: torch.Tensor) -> list[int | None]:
    """Naive optimum, per character: the first permutation (lexicographic order) with the best total."""
    c, k = sim.shape
    best: list[int | None] = [None] * c
    best_total = -math.inf
    for rows in itertools.permutations(range(c), min(c, k)):
        for cols in itertools.permutations(range(k), min(c, k)):
            total = sum(float(sim[r, q]) for r, q in zip(rows, cols, strict=True))
            if total > best_total:
                best_total, best = total, [None] * c
                for r, q in zip(rows, cols, strict=True):
                    best[r] = q
    return best


@pytest.mark.parametrize(("c", "k"), [(3, 4), (4, 3), (2, 2)])
def test_assign_faces_equals_enumeration(c, k):
    for seed in range(10):
        sim = torch.rand(c, k, generator=torch.Generator().manual_seed(seed))
        assert M.assign_faces(sim) == _enumerated_assignment(sim)


@pytest.mark.parametrize(("c", "k"), [(1, 3), (2, 2), (3, 2), (4, 6), (6, 4)])
def test_assign_faces_with_all_similarities_equal_pairs_character_i_with_face_i(c, k):
    assert M.assign_faces(torch.full((c, k), 0.5)) == [i if i < k else None for i in range(c)]


def test_assign_faces_min_similarity_and_no_faces():
    sim = torch.tensor([[0.9, 0.2], [0.3, 0.1]])
    assert M.assign_faces(sim, min_similarity=0.25) == [0, None]
    assert M.assign_faces(torch.zeros(2, 0)) == [None, None]


def _noisy(v: torch.Tensor, seed: int, amount: float = 0.2) -> torch.Tensor:
    return v + amount * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=v.dtype)


def test_match_faces_to_characters_picks_the_right_face():
    refs = _features(3, d=16, seed=20)
    stranger = _features(1, d=16, seed=21)[0]
    truth = {}  # (frame, character) -> embedding placed in the frame
    frames = []
    orders = [(2, 0, 1), (1, 2), (0,), ()]  # which characters appear, in which face order
    for f, chars in enumerate(orders):
        faces = []
        for ch in chars:
            truth[(f, ch)] = _noisy(refs[ch], seed=f * 10 + ch)
            faces.append(truth[(f, ch)])
        if f == 1:
            faces.insert(1, stranger)  # an extra face the matching must leave out
        frames.append(torch.stack(faces) if faces else None)
    present = [[0, 1, 2], [1, 2], [0], [2]]
    matched = M.match_faces_to_characters(frames, refs, present=present)
    assert [m.frames for m in matched] == [(0, 2), (0, 1), (0, 1, 3)]
    for m in matched:
        for f, emb in zip(m.frames, m.embeddings, strict=True):
            if (f, m.character) in truth:
                assert torch.equal(emb, truth[(f, m.character)].float())
            else:
                assert emb is None  # character 2 expected in frame 3, no face there


def test_character_face_similarity_per_character():
    refs = _features(2, d=16, seed=30)
    a = [_noisy(refs[0], s) for s in (1, 2, 3)]
    b = [_noisy(refs[1], s) for s in (4, 5)]
    frames = [torch.stack([b[0], a[0]]), torch.stack([a[1]]), torch.stack([a[2], b[1]])]
    pairwise = M.character_face_similarity(frames, refs, missing="skip")
    naive_a = (_cos(a[0], a[1]) + _cos(a[0], a[2]) + _cos(a[1], a[2])) / 3
    assert pairwise[0].value == pytest.approx(naive_a, abs=1e-5)
    assert pairwise[1].value == pytest.approx(_cos(b[0], b[1]), abs=1e-5)
    assert (pairwise[1].frames_total, pairwise[1].frames_with_face, pairwise[1].pairs_scored) == (3, 2, 1)
    reference = M.character_face_similarity(frames, refs, mode="reference", missing="zero")
    assert reference[1].value == pytest.approx((_cos(b[0], refs[1]) + _cos(b[1], refs[1])) / 3, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# Q-Align, aggregation


def test_qalign_score_matches_a_hand_computed_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    for row, got_5, got_1 in zip(
        logits, M.qalign_score(logits), M.qalign_score(logits, five_point=False), strict=True
    ):
        exps = [math.exp(float(x)) for x in row]
        probs = [e / sum(exps) for e in exps]
        unit = sum(p * w for p, w in zip(probs, (1.0, 0.75, 0.5, 0.25, 0.0), strict=True))
        five = sum(p * w for p, w in zip(probs, (5, 4, 3, 2, 1), strict=True))
        assert got_1.item() == pytest.approx(unit, abs=1e-6)
        assert got_5.item() == pytest.approx(five, abs=1e-5)
    assert M.qalign_score(torch.tensor([50.0, 0, 0, 0, 0])).item() == pytest.approx(5.0)
    assert M.qalign_score(torch.tensor([0.0, 0, 0, 0, 50])).item() == pytest.approx(1.0)
    assert M.qalign_score(torch.zeros(5)).item() == pytest.approx(3.0)
    with pytest.raises(M.MetricInputError, match="5 logits"):
        M.qalign_score(torch.zeros(4))


def test_aggregation_is_story_mean_then_mean_over_stories():
    stories = [[0.2, 0.4], [0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [0.5]]
    story_means = [M.story_mean(s) for s in stories]
    assert story_means == pytest.approx([0.3, 0.9, 0.5])
    agg = M.aggregate_stories([*story_means, math.nan])
    assert agg.mean == pytest.approx((0.3 + 0.9 + 0.5) / 3)
    assert agg.sem == pytest.approx(statistics.stdev(story_means) / math.sqrt(3))
    assert (agg.n_stories, agg.n_skipped, len(agg.story_values)) == (3, 1, 4)
    assert M.flat_mean(stories) == pytest.approx(sum(sum(s) for s in stories) / 9)
    assert M.flat_mean(stories) != pytest.approx(agg.mean)
    assert math.isnan(M.aggregate_stories([math.nan]).mean)
    with pytest.raises(M.MetricInputError):
        M.story_mean([])

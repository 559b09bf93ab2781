"""ViStoryBench's CSD scores and Inception Score against naive ports of csd_evaluator.py / inception_score.py."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from storycast.evaluation.metrics import MetricInputError
from storycast.evaluation.vistory_diversity import inception_score
from storycast.evaluation.vistory_style import cross_csd, pick_reference, self_csd


def _embeddings(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _naive_self_csd(embeds: list[torch.Tensor]) -> float:
    """get_self_csd_score: a loop over itertools.combinations of F.cosine_similarity."""
    if len(embeds) < 2:
        return 0.0
    scores = [F.cosine_similarity(a, b, dim=-1).mean().item() for a, b in combinations(embeds, 2)]
    return sum(scores) / len(scores)


def test_self_csd_is_the_mean_over_unordered_pairs():
    style = _embeddings(5)
    assert self_csd(style) == pytest.approx(_naive_self_csd(list(style)), abs=1e-6)
    with_diagonal = float((style @ style.T).mean())  # a formula that also counts each shot with itself
    assert self_csd(style) != pytest.approx(with_diagonal, abs=1e-3)
    assert self_csd(style[:1]) == 0.0


def _naive_cross_csd(characters: dict, shots: list[dict], outputs: dict, embed: dict) -> tuple[float, dict]:
    """get_cross_csd_score on a story dict as their loader gives it (characters with 'images', shots with
    'index' and 'character_key'), outputs = {shot index: path} and embed = {path: style embedding}."""

    def pick(target_key=None):
        if target_key and target_key in characters:
            imgs = characters[target_key].get("images") or []
            if imgs:
                return target_key, imgs[0]
        for fallback_key, info in characters.items():
            imgs = info.get("images") or []
            if imgs:
                return fallback_key, imgs[0]
        return None, None

    def score(a, b):
        return F.cosine_similarity(embed[a], embed[b], dim=-1).mean().item()

    total, details = [], {}
    for shot in shots:
        out = outputs.get(int(shot["index"]))
        if not out:
            continue
        per_char = []
        for key in shot.get("character_key", []):
            _, ref = pick(key)
            if ref:
                per_char.append(score(ref, out))
        if not per_char:
            _, ref = pick()
            if ref:
                per_char.append(score(ref, out))
        if not per_char:
            continue
        details[int(shot["index"])] = sum(per_char) / len(per_char)
        total.append(details[int(shot["index"])])
    return (sum(total) / len(total) if total else 0.0), details


def test_cross_csd_follows_their_reference_choice_and_means():
    e = _embeddings(9, seed=1)
    characters = {
        "Bob": {"images": ["bob_0.png", "bob_1.png"]},
        "Ann": {"images": []},  # no reference: replaced by the first character with some (Bob)
        "Cat": {"images": ["cat_0.png"]},
    }
    shots = [
        {"index": 1, "character_key": ["Cat"]},
        {"index": 2, "character_key": ["Ann", "Cat"]},
        {"index": 3, "character_key": []},  # no character: compared with Bob
        {"index": 4, "character_key": ["Bob"]},  # no image generated: skipped
        {"index": 5, "character_key": ["Bob", "Cat"]},
    ]
    outputs = {1: "s1.png", 2: "s2.png", 3: "s3.png", 5: "s5.png"}
    paths = ["bob_0.png", "bob_1.png", "cat_0.png", "s1.png", "s2.png", "s3.png", "s5.png"]
    embed = {p: e[i : i + 1] for i, p in enumerate(paths)}
    value, details = _naive_cross_csd(characters, shots, outputs, embed)

    result = cross_csd(
        shot_style={i: embed[p][0] for i, p in outputs.items()},
        reference_style={k: embed[v["images"][0]][0] for k, v in characters.items() if v["images"]},
        shot_characters={s["index"]: s["character_key"] for s in shots},
    )
    assert result.value == pytest.approx(value, abs=1e-6)
    assert result.shots == pytest.approx(details, abs=1e-6)
    assert [k for k, _ in result.characters[2]] == ["Bob", "Cat"]
    assert 4 not in result.shots
    # comparing with a character's last reference image instead of its first gives another number
    last = cross_csd(
        shot_style={i: embed[p][0] for i, p in outputs.items()},
        reference_style={k: embed[v["images"][-1]][0] for k, v in characters.items() if v["images"]},
        shot_characters={s["index"]: s["character_key"] for s in shots},
    )
    assert last.value != pytest.approx(value, abs=1e-4)
    assert pick_reference("Ann", ["Bob", "Cat"]) == "Bob"
    assert pick_reference(None, []) is None
    assert cross_csd({}, {}, {1: ["Bob"]}).value == 0.0


def _naive_inception_score(preds: np.ndarray, splits: int) -> tuple[float, float]:
    """calculate_inception_score's loop, verbatim in structure (scipy.stats.entropy per image)."""
    n = preds.shape[0]
    scores = []
    for i in range(splits):
        part = preds[i * (n // splits) : (i + 1) * (n // splits), :]
        if part.shape[0] == 0:
            continue
        kl = [entropy(part[j, :], np.mean(part, axis=0)) for j in range(part.shape[0])]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize(("n", "splits"), [(7, 1), (10, 3), (12, 4)])
def test_inception_score_equals_their_loop(n, splits):
    logits = torch.randn(n, 6, generator=torch.Generator().manual_seed(n)) * 2
    logits[0, 0] = -200.0  # a probability that underflows to 0 counts as 0 * log 0 = 0
    probs = logits.softmax(dim=1)
    mean, std = _naive_inception_score(probs.double().numpy(), splits)
    result = inception_score(probs, splits)
    assert result.mean == pytest.approx(mean, rel=1e-9)
    assert result.std == pytest.approx(std, rel=1e-9, abs=1e-12)
    assert result.images == splits * (n // splits)


def test_inception_score_uses_each_splits_own_marginal_and_refuses_too_few_images():
    probs = torch.randn(12, 5, generator=torch.Generator().manual_seed(3)).softmax(dim=1)
    marginal = probs.mean(dim=0, keepdim=True)  # the whole set's marginal for every split: another number
    parts = [float((p * (p / marginal).log()).sum(dim=1).mean().exp()) for p in probs.double().chunk(3)]
    assert inception_score(probs, 3).mean != pytest.approx(sum(parts) / 3, rel=1e-4)
    one_hot = torch.eye(4)  # four images, four different confident classes: IS = 4
    assert inception_score(one_hot).mean == pytest.approx(4.0)
    with pytest.raises(MetricInputError, match="at least 3 image"):
        inception_score(probs[:2], 3)
    with pytest.raises(MetricInputError, match="non-negative"):
        inception_score(-probs)

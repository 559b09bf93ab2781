"""Storynizor's loss terms against naive loops on fixed tensors; SRS never gives a frame its own reference nor
another character's; the conditioning drop follows IP-Adapter's rates."""

from __future__ import annotations

import itertools

import pytest
import torch

from storycast.training.losses import attention_mask_alignment, diffusion_loss, masked_feature_consistency
from storycast.training.shuffle import derangement, drop_conditions, shuffled_references


def fixed(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_diffusion_loss_is_the_mean_squared_error():
    prediction, target = fixed(2, 4, 8, 8), fixed(2, 4, 8, 8, seed=1)
    expected = sum(float((p - t) ** 2) for p, t in zip(prediction.flatten(), target.flatten(), strict=True))
    assert diffusion_loss(prediction, target).item() == pytest.approx(expected / prediction.numel(), rel=1e-5)


def test_attention_mask_alignment_equals_its_naive_loop():
    maps = fixed(3, 5, 5) * 4
    masks = fixed(3, 5, 5, seed=2) > 0.6
    total = 0.0
    for i in range(3):
        top = max(float(v) for v in maps[i].flatten())
        area = max(sum(float(v) for v in masks[i].flatten()), 1.0)
        inside = background = 0.0
        for y, x in itertools.product(range(5), range(5)):
            a, s = float(maps[i, y, x]) / top, float(masks[i, y, x])
            inside += (a - s) ** 2
            background += ((1 - a) - (1 - s)) ** 2
        total += inside / area + background / 25
    assert attention_mask_alignment(maps, masks).item() == pytest.approx(total / 3, rel=1e-5)


def test_a_map_on_its_mask_scores_better_than_one_beside_it():
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 2:5] = 1
    beside = torch.roll(mask, shifts=3, dims=2)
    assert attention_mask_alignment(mask, mask).item() == 0.0
    assert attention_mask_alignment(beside, mask) > attention_mask_alignment(mask * 0.5 + 0.01, mask)


def test_masked_feature_consistency_equals_its_naive_loop():
    features = fixed(3, 6, 4) - 0.5
    masks = (fixed(3, 6, seed=3) > 0.4).float()
    masks[1, 0] = 1.0
    pooled = []
    for i in range(3):
        weight = sum(float(m) for m in masks[i])
        vector = [sum(float(features[i, t, d] * masks[i, t]) for t in range(6)) / weight for d in range(4)]
        norm = sum(v * v for v in vector) ** 0.5
        pooled.append([v / norm for v in vector])
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = sum(sum((a - b) ** 2 for a, b in zip(pooled[i], pooled[j], strict=True)) for i, j in pairs) / 6
    assert masked_feature_consistency(features, masks).item() == pytest.approx(expected, rel=1e-4)


def test_masked_feature_consistency_is_zero_for_equal_features_and_one_frame():
    same = fixed(1, 6, 4).expand(3, -1, -1)
    masks = torch.ones(3, 6)
    assert masked_feature_consistency(same, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_feature_consistency(same, torch.tensor([[1.0] * 6, [0.0] * 6, [0.0] * 6])).item() == 0.0


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_derangements_have_no_fixed_point_and_cover_every_one(n):
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        permutation = derangement(n, generator)
        assert sorted(permutation) == list(range(n))
        assert all(p != i for i, p in enumerate(permutation))
        seen.add(tuple(permutation))
    count = {2: 1, 3: 2, 4: 9}.get(n)
    if count is not None:
        assert len(seen) == count  # every derangement is drawn (uniform sampling by rejection)
    assert derangement(1, generator) == [0]


def test_srs_never_gives_a_frame_its_own_reference_nor_another_characters():
    characters = [("mara",), ("mara", "tom"), ("tom",), ("mara", "tom"), ("mara",)]
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        references = shuffled_references(characters, generator)
        assert set(references) == {(f, c) for f, names in enumerate(characters) for c in names}
        for (frame, character), source in references.items():
            assert source != frame
            assert character in characters[source]
    alone = shuffled_references([("mara",), ("tom",)], generator)
    assert alone == {(0, "mara"): 0, (1, "tom"): 1}  # shown once: its own reference


def test_drops_follow_ip_adapters_exclusive_rates():
    drop_image, drop_text = drop_conditions(20000, 0.05, 0.05, 0.05, torch.Generator().manual_seed(2))
    image_only = sum(i and not t for i, t in zip(drop_image, drop_text, strict=True)) / 20000
    text_only = sum(t and not i for i, t in zip(drop_image, drop_text, strict=True)) / 20000
    both = sum(i and t for i, t in zip(drop_image, drop_text, strict=True)) / 20000
    for share in (image_only, text_only, both):
        assert share == pytest.approx(0.05, abs=0.01)
    assert drop_conditions(5, 0, 0, 0, torch.Generator()) == ([False] * 5, [False] * 5)

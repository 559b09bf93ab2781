"""ConsiStory's feature injection: the smoothing, nearest neighbours and correspondences equal naive loops written
from the authors' formulation, the blend is the stated one, anchors' kept outputs are gathered at the right pixels,
and the DIFT hook leaves the module as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storycast.attention.feature_injection import (
    Correspondence,
    FeatureInjection,
    InjectedOutputs,
    blend,
    correspond,
    dynamic_threshold,
    features_at,
    gaussian_smooth,
    injection_steps,
    nearest_in_mask,
    record_block_output,
)


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_gaussian_smoothing_equals_a_zero_padded_convolution_with_the_authors_kernel():
    features = random(3, 5, 6)
    sigma, size = 1.0, 3
    # general_utils.gaussian_smooth: np.fromfunction over (x, y), normalised to sum 1.
    kernel = np.fromfunction(
        lambda x, y: np.exp(-((x - (size - 1) / 2) ** 2 + (y - (size - 1) / 2) ** 2) / (2 * sigma**2)), (size, size)
    )
    kernel /= kernel.sum()
    padded = np.pad(features.numpy(), ((0, 0), (1, 1), (1, 1)))
    expected = np.zeros(features.shape)
    for c in range(3):
        for y in range(5):
            for x in range(6):
                expected[c, y, x] = (padded[c, y : y + 3, x : x + 3] * kernel).sum()
    assert torch.allclose(gaussian_smooth(features), torch.from_numpy(expected).float(), atol=1e-6)


def test_nearest_neighbours_stay_inside_the_source_mask_and_cost_two_without_one():
    target, source = random(10, 4, seed=1), random(12, 4, seed=2)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[2, 5, 7]] = True
    index, distance = nearest_in_mask(target, source, mask)
    for p in range(10):
        cosine = [
            1 - float(torch.dot(target[p], source[q]) / (target[p].norm() * source[q].norm())) if mask[q] else 2.0
            for q in range(12)
        ]
        assert int(index[p]) == int(np.argmin(cosine))
        assert math.isclose(float(distance[p]), min(cosine), abs_tol=1e-5)
    _, none = nearest_in_mask(target, source, torch.zeros(12, dtype=torch.bool))
    assert torch.all(none == 2)


def test_dynamic_threshold_cuts_between_two_groups_of_distances():
    values = torch.cat([torch.full((30,), 0.2), torch.full((20,), 1.4)]) + random(50, seed=3) * 0.01
    threshold = dynamic_threshold(values)
    # Every cut in the empty gap scores the same: scikit-image's threshold_otsu takes the first, at the centre of
    # the bin holding the low group's largest value.
    width = float(values.max() - values.min()) / 256
    assert abs(float(values[:30].max()) - threshold) <= width / 2 + 1e-6
    assert bool((values[30:] > threshold).all())
    assert dynamic_threshold(torch.full((5,), 0.7)) == pytest.approx(0.7)  # nothing lies strictly below it


def naive_correspondence(target, target_mask, sources):
    """FeatureInjector.inject_outputs, swap_strategy 'min', dist_thr 'dynamic', written as loops: per pixel the
    source of the smallest nearest-neighbour distance, kept inside the target mask below the Otsu threshold."""
    table = []
    for number, source in enumerate(sources):
        if source is None or not bool(source[1].any()):
            continue
        features, mask = source
        for p in range(target.shape[0]):
            row = [
                (1 - float(torch.dot(target[p], features[q]) / (target[p].norm() * features[q].norm())), q)
                if mask[q]
                else (2.0, q)
                for q in range(features.shape[0])
            ]
            table.append((p, number, *min(row)))
    best = {}
    for p, number, distance, q in table:
        if p not in best or distance < best[p][0]:
            best[p] = (distance, number, q)
    threshold = dynamic_threshold(torch.tensor([best[p][0] for p in range(target.shape[0])]))
    return [(p, best[p][1], best[p][2]) for p in range(target.shape[0]) if target_mask[p] and best[p][0] < threshold]


def test_correspondences_equal_the_authors_per_pixel_formulation():
    target = random(16, 8, seed=4)
    target_mask = random(16, seed=5) > -0.3
    sources = [
        (random(16, 8, seed=6), random(16, seed=7) > 0),
        None,  # a frame this one is not mapped to (itself)
        (random(16, 8, seed=8), random(16, seed=9) > 0.2),
        (random(16, 8, seed=10), torch.zeros(16, dtype=torch.bool)),  # a source with no subject is skipped
    ]
    found = correspond(target, target_mask, sources)
    assert found is not None
    ours = list(zip(found.pixels.tolist(), found.source.tolist(), found.token.tolist(), strict=True))
    assert ours == naive_correspondence(target, target_mask, sources)
    assert ours and {s for _, s, _ in ours} <= {0, 2}
    assert correspond(target, torch.zeros(16, dtype=torch.bool), sources) is None
    assert correspond(target, target_mask, [None, sources[3]]) is None


def test_blend_takes_alpha_of_the_source_at_the_corresponding_pixels_only():
    target, tokens = random(6, 3, seed=11), random(2, 3, seed=12)
    found = Correspondence(torch.tensor([1, 4]), torch.tensor([0, 0]), torch.tensor([3, 0]))
    out = blend(target, tokens, found, 0.8)
    assert torch.allclose(out[[1, 4]], 0.8 * tokens + 0.2 * target[[1, 4]])
    untouched = [0, 2, 3, 5]
    assert torch.equal(out[untouched], target[untouched])


def test_later_frames_take_the_anchors_recorded_outputs_at_the_matched_pixels():
    tokens, channels = 9, 4
    masks = [{tokens: random(tokens, seed=13) > 0}, {tokens: random(tokens, seed=14) > 0}]
    kept = InjectedOutputs(masks)
    anchors = random(2, tokens, channels, seed=15)
    # The anchors' own call: no correspondences among them here, so their outputs are recorded as they are.
    FeatureInjection(0.8, range(0, 3), [{}, {}], record=kept).apply("layer", 1, anchors)
    pixels_of = [torch.nonzero(m[tokens]).flatten() for m in masks]
    found = Correspondence(
        torch.tensor([0, 2, 5]),
        torch.tensor([1, 0, 1]),
        torch.tensor([int(pixels_of[1][0]), int(pixels_of[0][-1]), int(pixels_of[1][-1])]),
    )
    frame = random(1, tokens, channels, seed=16)
    reader = FeatureInjection(0.8, range(0, 3), [{tokens: found}], anchors=kept)
    out = reader.apply("layer", 1, frame)
    expected = frame[0].clone()
    for p, a, q in zip(found.pixels.tolist(), found.source.tolist(), found.token.tolist(), strict=True):
        expected[p] = 0.8 * anchors[a, q] + 0.2 * frame[0, p]
    assert torch.allclose(out[0], expected)
    assert kept.nbytes == sum(int(m[tokens].sum()) for m in masks) * channels * 4
    with pytest.raises(KeyError, match=r"no anchor outputs \(layer, step\) for \('layer', 2\)"):
        reader.apply("layer", 2, frame)


def test_sources_in_the_same_batch_are_read_before_any_frame_is_changed():
    outputs = random(2, 4, 3, seed=17)
    a_from_b = Correspondence(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    b_from_a = Correspondence(torch.tensor([1]), torch.tensor([0]), torch.tensor([0]))
    out = FeatureInjection(0.5, range(1), [{4: a_from_b}, {4: b_from_a}]).apply("layer", 0, outputs)
    assert torch.allclose(out[1, 1], 0.5 * outputs[0, 0] + 0.5 * outputs[1, 1])  # frame 0's original, not its new


def test_injection_steps_are_the_authors_range():
    assert injection_steps(50, 0.1, 1 / 3) == range(5, 17)  # (n_steps // 10, n_steps // 3), both included
    assert injection_steps(30, 0.1, 1 / 3) == range(3, 11)


def test_features_are_resized_to_the_grid_as_pixel_rows():
    features = random(5, 8, 8, seed=18)
    assert features_at(features, (8, 8)).shape == (64, 5)
    assert torch.equal(features_at(features, (8, 8))[9], features[:, 1, 1])
    assert features_at(features, (4, 4)).shape == (16, 5)


def test_the_block_output_hook_keeps_the_chosen_rows_and_is_removed():
    block = torch.nn.Linear(3, 3)
    wanted = {"on": False}
    with record_block_output(block, slice(2, None), lambda: wanted["on"]) as found:
        block(random(4, 3, seed=19))
        assert "features" not in found
        wanted["on"] = True
        x = random(4, 3, seed=20)
        block(x)
        assert torch.allclose(found["features"], block(x)[2:])
    assert not block._forward_hooks

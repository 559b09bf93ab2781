"""Otsu's threshold as scikit-image's ``threshold_otsu`` defines it (ConsiStory cuts masks and distances with it):
equal to scikit-image on random maps, on tied scores and on flat maps; cutting at the best bin's centre, the
first of tied bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.attention.thresholds import otsu_threshold

# Computed once with scikit-image 0.26.0 (``float(skimage.filters.threshold_otsu(np.array(values)))``), so that
# these run without it; the tests below compare with scikit-image itself where it is installed (the dev extra).
REFERENCE = [
    ([0.0, 0.0, 1.0, 1.0], 0.001953125),  # every cut in the gap ties: the first bin's centre, 1/512
    ([0.0, 0.0, 0.0, 0.5, 1.0, 1.0], 0.001953125),
    ([i / 9 for i in range(10)], 0.443359375),
    ([0.1, 0.2, 0.2, 0.9, 0.95, 1.0, 0.3], 0.2986328125),
    ([0.0, 0.1, 0.2, 0.8, 0.9, 1.0, 0.05, 0.15, 0.95], 0.201171875),
]


@pytest.mark.parametrize(("values", "expected"), REFERENCE)
def test_otsu_equals_scikit_image_s_recorded_values(values, expected):
    assert otsu_threshold(torch.tensor(values, dtype=torch.float64)) == expected
    assert otsu_threshold(torch.tensor(values, dtype=torch.float64) * 3 - 2) == pytest.approx(expected * 3 - 2)


def test_ties_take_the_first_bin_and_the_cut_is_at_the_bin_s_centre():
    # Two levels: all 255 cuts between them score the same; the first wins, at the centre of bin 0.
    values = torch.tensor([0.2] * 5 + [0.6] * 3)
    assert otsu_threshold(values) == pytest.approx(0.2 + 0.4 / 512)
    # The best bin's upper half is foreground: a value there lies above the centre (the bin's upper edge would not
    # take it).
    values = torch.tensor([0.0] * 10 + [1.0 / 256 * 0.75] + [1.0] * 10)
    threshold = otsu_threshold(values)
    assert threshold == pytest.approx(0.5 / 256)
    assert bool(values[10] > threshold)


def test_a_flat_map_gives_its_value_and_an_empty_foreground():
    for value in (0.0, 0.3, -2.5):
        values = torch.full((8, 8), value)
        threshold = otsu_threshold(values)
        assert threshold == pytest.approx(value)
        assert not bool((values > threshold).any())


def random_maps():
    generator = np.random.default_rng(0)
    for trial in range(120):
        side = int(generator.choice([8, 16, 32, 64, 128]))
        kind = trial % 4
        if kind == 0:
            values = generator.random((side, side))
        elif kind == 1:  # two groups and an empty gap between them (tied scores across the gap)
            values = np.concatenate([generator.normal(0.25, 0.05, side * 8), generator.normal(0.7, 0.08, side * 5)])
        elif kind == 2:  # any range, skewed
            values = generator.gamma(2.0, 1.0, (side, side)) * 4 - 1
        else:  # a few levels: many tied scores
            values = np.round(generator.random((side, side)) * int(generator.integers(2, 6))) / 3
        yield values.astype(np.float32).astype(np.float64)


def test_otsu_equals_scikit_image_on_random_maps_ties_and_flat_maps():
    filters = pytest.importorskip("skimage.filters", reason="scikit-image is in the dev extra")
    for values in random_maps():
        assert otsu_threshold(torch.from_numpy(values)) == float(filters.threshold_otsu(values))
        # float32 maps are taken in float64: the same as scikit-image on their float64 copy.
        assert otsu_threshold(torch.from_numpy(values.astype(np.float32))) == float(filters.threshold_otsu(values))
    for values, _ in REFERENCE:
        array = np.array(values)
        assert otsu_threshold(torch.from_numpy(array)) == float(filters.threshold_otsu(array))
    flat = np.full((4, 4), 0.3)
    assert otsu_threshold(torch.from_numpy(flat)) == float(filters.threshold_otsu(flat))


def test_the_edge_cut_is_the_split_the_score_was_computed_for():
    # Three flat levels: the best split is between the middle one and the top one. The middle level sits in the
    # upper half of its bin, so scikit-image's centre cut puts it in the foreground; the edge cut does not.
    values = torch.tensor([0.0] * 1650 + [0.1287] * 1921 + [1.0] * 525)
    centre, edge = otsu_threshold(values), otsu_threshold(values, at="edge")
    assert centre == pytest.approx(32.5 / 256) and edge == pytest.approx(33 / 256)
    assert bool((values > centre).sum() == 1921 + 525) and bool((values > edge).sum() == 525)

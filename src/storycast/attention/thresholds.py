"""Cutting attention maps into masks, as pure functions: a map scaled to [0, 1], and Otsu's threshold.

Shared by the attention processors that locate characters while frames are drawn (character masks, feature
injection), the attention-map mask provider (:mod:`storycast.masks.attention`) and data building.
"""

from __future__ import annotations

import torch


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold (1979) of values in [0, 1]: the cut maximising the between-class variance.

    Values strictly above the returned threshold form the foreground. When several cuts share the best
    variance (an empty gap between the classes), the middle one is taken.
    """
    flat = values.detach().float().reshape(-1).clamp(0, 1)
    histogram = torch.histc(flat, bins=bins, min=0.0, max=1.0)
    probabilities = histogram / histogram.sum().clamp_min(1)
    centers = (torch.arange(bins, dtype=torch.float32) + 0.5) / bins
    weight_background = probabilities.cumsum(0)
    mean_background_sum = (probabilities * centers).cumsum(0)
    total_mean = mean_background_sum[-1]
    weight_foreground = 1 - weight_background
    between = (total_mean * weight_background - mean_background_sum) ** 2 / (
        weight_background * weight_foreground
    ).clamp_min(1e-12)
    between[weight_foreground <= 0] = -1
    best = between.max()
    ties = torch.nonzero(between >= best - 1e-6 * best.abs()).flatten()
    return float(int(ties[len(ties) // 2]) + 1) / bins


def otsu_bin_centre(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold as scikit-image's ``threshold_otsu`` computes it: a histogram of ``bins`` equal bins between
    the values' minimum and maximum, the between-class variance of every cut after a bin, and the centre of the bin
    of the *first* best cut (where :func:`otsu_threshold` takes the bin's upper edge and the middle of tied cuts).
    Foreground: values strictly above it. A constant input gives its value (nothing is above it).

    Computed in float64, as NumPy's histogram is.
    """
    flat = values.detach().to(torch.float64).reshape(-1).cpu()
    low, high = float(flat.min()), float(flat.max())
    if low == high:
        return low
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    index = (torch.searchsorted(edges, flat, right=True) - 1).clamp(0, bins - 1)  # the last bin holds the maximum
    counts = torch.bincount(index, minlength=bins).to(torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = counts.cumsum(0)
    weight_high = counts.flip(0).cumsum(0).flip(0)
    mean_low = (counts * centres).cumsum(0) / weight_low
    mean_high = ((counts * centres).flip(0).cumsum(0) / weight_high.flip(0)).flip(0)
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    between = torch.nan_to_num(between, nan=-1.0)  # cuts with an empty side (0 / 0 means) are never best
    return float(centres[int(torch.argmax(between))])


def normalise_map(attention_map: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to [0, 1] (a constant map becomes zeros)."""
    low, high = attention_map.min(), attention_map.max()
    if float(high - low) <= 0:
        return torch.zeros_like(attention_map, dtype=torch.float32)
    return ((attention_map - low) / (high - low)).float()

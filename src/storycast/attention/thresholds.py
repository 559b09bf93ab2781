"""Cutting attention maps into masks, as pure functions: a map scaled to [0, 1], and Otsu's threshold.

Shared by the attention processors that locate characters while frames are drawn (character masks, feature
injection), the attention-map mask provider (:mod:`storycast.masks.attention`), Story2Board's mutual-attention
selection and data building.
"""

from __future__ import annotations

from typing import Literal

import torch


def otsu_threshold(values: torch.Tensor, bins: int = 256, at: Literal["centre", "edge"] = "centre") -> float:
    """Otsu's threshold (1979) of floating-point values, as scikit-image's ``filters.threshold_otsu`` defines it
    (ConsiStory cuts its masks and distances with that function: NVlabs/consistory@8158d41
    ``utils/general_utils.py``; scikit-image 0.22 to 0.26, ``filters/thresholding.py`` and ``exposure/exposure.py``).

    - ``bins`` equal bins span the values' own range, min to max, with numpy's edges (``np.histogram``): a value on
      an edge belongs to the bin above it, the maximum to the last bin;
    - each cut between bin k and bin k + 1 scores the between-class variance ``w0 w1 (m0 - m1)^2`` of the bin
      centres weighted by their counts;
    - the threshold is the centre of the best bin k, the first of equal scores (``np.argmax``);
    - constant values give that value (nothing lies strictly above it).

    ``at="edge"`` returns the best bin's upper edge instead: the split the score was computed for (the centre also
    puts the upper half of the best bin in the foreground, which matters when values sit on a few levels). Our
    own cuts use it (data building's contrast masks); the authors' methods' masks use the centre.

    Values strictly above the returned threshold form the foreground. Everything is computed in float64: the
    result equals ``threshold_otsu`` of the values' float64 copy exactly (tested). On a float32 or float16 array
    scikit-image computes in that precision instead, which can only break near-equal scores differently.
    """
    flat = values.detach().reshape(-1).cpu().double()
    first = float(flat[0])
    if bool((flat == first).all()):
        return first
    low, high = float(flat.min()), float(flat.max())
    # np.linspace(low, high, bins + 1): steps from the low edge in float64, the last edge exactly the maximum.
    edges = torch.arange(bins + 1, dtype=torch.float64) * ((high - low) / bins) + low
    edges[-1] = high
    index = (torch.searchsorted(edges, flat, right=True) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = counts.cumsum(0)
    weight_high = counts.flip(0).cumsum(0).flip(0)
    mean_low = (counts * centres).cumsum(0) / weight_low
    mean_high = (counts * centres).flip(0).cumsum(0).flip(0) / weight_high
    # Cut after bin k: bins 0..k below, k + 1.. above (both classes are never empty: the extreme bins hold the
    # minimum and the maximum). scikit-image keeps the counts in float32, so the product of the class weights is
    # rounded to float32 there (exactly, up to 2^24 values), and so here.
    weights = (weight_low[:-1].float() * weight_high[1:].float()).double()
    scores = weights * (mean_low[:-1] - mean_high[1:]) ** 2
    best = int(scores.argmax())
    return float(centres[best] if at == "centre" else edges[best + 1])


def normalise_map(attention_map: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to [0, 1] (a constant map becomes zeros)."""
    low, high = attention_map.min(), attention_map.max()
    if float(high - low) <= 0:
        return torch.zeros_like(attention_map, dtype=torch.float32)
    return ((attention_map - low) / (high - low)).float()

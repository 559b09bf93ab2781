"""Reciprocal Attention Value Mixing (RAVM, Story2Board §3.3), as pure functions.

In every canvas, the frame panel's tokens that attend mutually and strongly to the reference panel take a share of
the values of the reference token they attend to most. The authors' formulation (DavidDinkevich/Story2Board@92ef110,
``story2board_attention_processor.py`` lines 82-128, ``attention_store.py`` lines 38-54):

1. at every block and step, the mutual attention between the two panels (:mod:`storycast.attention.mutual`:
   probabilities from the queries and keys *before* rotary positions, averaged over heads) is stored; at the last
   block of a step, the step's mean over blocks enters a decayed running average (:func:`decayed_average`);
2. in the mixing steps and blocks, a frame-panel token is mixed when its strongest mutual attention, over the
   panel's token grid with its border zeroed and scaled to [0, 1], is above Otsu's threshold and its 4-connected
   region is large enough (:func:`reciprocal_region`); its partner is the reference token of its largest averaged
   mutual attention (:func:`reciprocal_pairs`);
3. its values, in every head, become ``(1 - s) v_frame + s v_partner`` (:func:`mix_values`).
"""

from __future__ import annotations

import torch

from storycast.attention.thresholds import otsu_threshold
from storycast.masks.ops import remove_small_components


def decayed_average(average: torch.Tensor, step_mean: torch.Tensor, step: int, decay: float) -> torch.Tensor:
    """The running average after step ``step`` (0-based): ``d avg + (1 - d) (mean - avg) / (step + 1)``, as the
    authors' store updates it (``attention_store.py`` lines 52-54; it starts at zero)."""
    return decay * average + (1 - decay) * (step_mean - average) / (step + 1)


def reciprocal_region(strength: torch.Tensor, grid: tuple[int, int], border: int, min_size: int) -> torch.Tensor:
    """The frame-panel tokens to mix, as a (rows, columns) bool grid.

    Args:
        strength: (rows x columns,) each frame-panel token's strongest mutual attention, row-major.
        grid: The panel's token grid.
        border: Rows and columns at each edge set to zero first (the authors' margin 3).
        min_size: Regions of fewer 4-connected tokens are dropped (the authors' 9).

    The grid is scaled to [0, 1] and cut strictly above scikit-image's Otsu threshold (the authors' ``cv2.threshold``
    of ``threshold_otsu``). A grid without contrast (all zero) selects nothing, where the authors' division by zero
    would give NaNs.
    """
    image = strength.detach().float().reshape(grid).clone()
    if border:
        image[:border], image[-border:], image[:, :border], image[:, -border:] = 0, 0, 0, 0
    low, high = image.min(), image.max()
    if float(high - low) <= 0:
        return torch.zeros(grid, dtype=torch.bool, device=strength.device)
    scaled = (image - low) / (high - low)
    return remove_small_components(scaled > otsu_threshold(scaled), min_size)


def reciprocal_pairs(
    mutual: torch.Tensor, grid: tuple[int, int], border: int, min_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame tokens, their reference partners): positions within each panel, from the (frame tokens, reference
    tokens) averaged mutual attention of one canvas."""
    region = reciprocal_region(mutual.max(dim=-1).values, grid, border, min_size)
    frame = region.flatten().nonzero().flatten().to(mutual.device)
    return frame, mutual.index_select(0, frame).argmax(dim=-1)


def mix_values(value: torch.Tensor, mixed: torch.Tensor, partners: torch.Tensor, strength: float) -> torch.Tensor:
    """``value`` (L, ...) of one sequence with the rows ``mixed`` replaced by ``(1 - s) own + s partner's``; the
    partners' rows are read before any row changes."""
    out = value.clone()
    out[mixed] = (1 - strength) * value[mixed] + strength * value[partners]
    return out

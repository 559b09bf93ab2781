"""Masks from cross-attention maps: where the model attended to a character's class word while drawing.

No extra models: the maps are gathered during stage 1 (see ``storycast.attention.token_maps``). Each map
is normalised, thresholded with Otsu's method and brought to image size.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from storycast.masks.base import MaskInputs, MaskNotFoundError

logger = logging.getLogger(__name__)


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


def normalise_map(attention_map: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to [0, 1] (a constant map becomes zeros)."""
    low, high = attention_map.min(), attention_map.max()
    if float(high - low) <= 0:
        return torch.zeros_like(attention_map, dtype=torch.float32)
    return ((attention_map - low) / (high - low)).float()


def mask_from_map(attention_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean (H, W) mask at image ``size`` from a (h, w) attention map (bilinear upsampling, Otsu cut)."""
    normalised = normalise_map(attention_map)
    upsampled = F.interpolate(normalised[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return upsampled > otsu_threshold(normalised)


class AttentionMasks:
    """Mask provider from the class words' cross-attention maps (``MaskInputs.token_maps``)."""

    name = "attention"

    def __call__(self, inputs: MaskInputs) -> dict[str, torch.Tensor]:
        size = (inputs.image.height, inputs.image.width)
        masks: dict[str, torch.Tensor] = {}
        for character in inputs.characters:
            attention_map = inputs.token_maps.get(character.id)
            if attention_map is None:
                raise MaskNotFoundError(
                    f"frame {inputs.frame_index + 1}: no attention map was recorded for '{character.id}' "
                    f"(class word '{character.class_word}'). Fix: make sure the word occurs in the frame's prompt.",
                    frame_index=inputs.frame_index,
                    character_id=character.id,
                )
            mask = mask_from_map(attention_map.cpu(), size)
            if not bool(mask.any()):
                raise MaskNotFoundError(
                    f"frame {inputs.frame_index + 1}: the attention map of '{character.class_word}' for "
                    f"'{character.id}' is flat, so the character cannot be located. Fix: another seed, or masks "
                    f"from a detector (mask_provider=grounded-sam) or from files (frames[i].masks).",
                    frame_index=inputs.frame_index,
                    character_id=character.id,
                )
            masks[character.id] = mask
        return masks

"""Masks from cross-attention maps: where the model attended to a character's class word while drawing.

No extra models: the maps are gathered during stage 1 (see ``storycast.attention.token_maps``). Each map
is normalised, thresholded with Otsu's method and brought to image size.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from storycast.attention.thresholds import normalise_map, otsu_threshold
from storycast.masks.base import MaskInputs, MaskNotFoundError

logger = logging.getLogger(__name__)


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

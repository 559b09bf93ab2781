"""Masks drawn by the user: one image file per character and frame, given in the story (``frames[i].masks.<id>``).

White (or opaque) is the character. Any image mode is read: an image with transparency uses its alpha channel
(unless it is fully opaque), any other its luminance; a pixel is inside when it is above half the mode's range
(> 127.5 for 8-bit images, > 32767.5 for 16-bit ones, > 0.5 for float images). A mask of another size than the
frame is resized to it with nearest-neighbour sampling (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from storycast.errors import Problem, StoryError
from storycast.masks.base import MaskInputs, MaskNotFoundError
from storycast.masks.ops import resize_masks_nearest

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

# Largest value of a pixel, per PIL mode read as an array; 8-bit for every mode not listed.
_MODE_RANGE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def mask_field(frame_index: int, character_id: str) -> str:
    """Where a frame's mask file for a character is given in a story: ``frames[3].masks.lena``."""
    return f"frames[{frame_index}].masks.{character_id}"


def mask_from_image(image: Image.Image) -> torch.Tensor:
    """(H, W) bool mask of a PIL image: alpha when the image has transparency that is not fully opaque, else
    luminance; inside above half the mode's range (16-bit ``I``/``I;16`` images: 65535, float ``F``: 1.0)."""
    if image.has_transparency_data:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return torch.from_numpy(alpha > 127.5)
    if image.mode in _MODE_RANGE:
        values = np.asarray(image, dtype=np.float64)
        return torch.from_numpy(values > _MODE_RANGE[image.mode] / 2)
    return torch.from_numpy(np.asarray(image.convert("L")) > 127.5)


def read_mask_file(path: str | Path, field: str = "") -> torch.Tensor:
    """(H, W) bool mask from an image file (see :func:`mask_from_image`).

    Raises:
        StoryError: The file does not exist, cannot be read as an image, or has no pixel inside; the message names
            the file and ``field`` (the story field that gave it).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise StoryError([Problem(field, f"mask file '{path}' does not exist", "give the path of an image file")])
    try:
        with Image.open(path) as image:
            image.load()
            mask = mask_from_image(image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StoryError(
            [
                Problem(
                    field, f"cannot read mask file '{path}' ({reason})", "give a PNG or JPEG image, white = character"
                )
            ]
        ) from None
    if not mask.any():
        raise StoryError(
            [
                Problem(
                    field,
                    f"mask file '{path}' has no white (or opaque) pixel, so it marks nothing",
                    "paint the character white on black (or opaque on transparent)",
                )
            ]
        )
    return mask


class UserMasks:
    """Mask provider "user": each character's mask is read from the file the story gives for the frame.

    Returns, for every character asked, a bool (H, W) mask at the image's resolution on the CPU.

    Raises:
        MaskNotFoundError: The story gives no mask file for a character of the frame (drawing the frame again
            cannot help: the story needs the file).
        StoryError: A mask file is missing on disk, unreadable or empty.
    """

    name = "user"

    def __call__(self, inputs: MaskInputs) -> dict[str, torch.Tensor]:
        width, height = inputs.image.size
        masks: dict[str, torch.Tensor] = {}
        for character in inputs.characters:
            field = mask_field(inputs.frame_index, character.id)
            path = inputs.user_masks.get(character.id)
            if path is None:
                raise MaskNotFoundError(
                    f"frame {inputs.frame_index + 1}: no mask file for character '{character.id}'. Fix: add "
                    f"{field}: path/to/mask.png to the story (white = character), or use the 'grounded-sam' or "
                    "'attention' mask provider.",
                    frame_index=inputs.frame_index,
                    character_id=character.id,
                )
            mask = read_mask_file(path, field)
            if tuple(mask.shape) != (height, width):
                log = logger.warning if _aspect_differs(tuple(mask.shape), (height, width)) else logger.info
                log(
                    "frame %d: mask '%s' for '%s' is %dx%d, the image %dx%d: resized (nearest).",
                    inputs.frame_index + 1,
                    path,
                    character.id,
                    mask.shape[1],
                    mask.shape[0],
                    width,
                    height,
                )
                mask = resize_masks_nearest(mask, (height, width))
            masks[character.id] = mask
        return masks


def _aspect_differs(size: tuple[int, int], target: tuple[int, int], tolerance: float = 0.01) -> bool:
    """True when two (H, W) sizes differ in aspect ratio by more than ``tolerance`` (relative)."""
    ratio = (size[1] / size[0]) / (target[1] / target[0])
    return abs(ratio - 1.0) > tolerance

"""Reference images as an identity encoder should see them: a face crop for people, the character itself
otherwise.

IP-Adapter-Plus-Face "is conditioned with images of cropped faces" (diffusers' IP-Adapter docs) and CLIP
centre-crops its input, so crops are made square here: a square around the face box (``face_crop``), or
around the character's mask with the background whitened (``mask_crop``, the segmented character).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

FACE_CROP_SCALE = 1.8
"""Side of a face crop over the face box's longer side: the face with hair and chin, as in IP-Adapter's
face examples (our choice; the papers give no number)."""
MASK_CROP_MARGIN = 0.1
"""Margin around a mask's box, as a share of its longer side."""


def square_box(
    box: tuple[float, float, float, float], scale: float, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The square of side ``scale`` x the box's longer side around its centre, kept inside an image of ``size``
    (width, height) when it fits (shifted, not squashed)."""
    x1, y1, x2, y2 = box
    width, height = size
    side = min(max(x2 - x1, y2 - y1) * scale, width, height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(cx - side / 2, 0), width - side)
    top = min(max(cy - side / 2, 0), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def face_crop(image: Image.Image, detector: Any, scale: float = FACE_CROP_SCALE) -> Image.Image | None:
    """A square crop around the largest face ``detector`` (a :class:`~storycast.vision.faces.ScrfdDetector`)
    finds, or None when it finds none."""
    from storycast.vision.faces import choose_face

    image = image.convert("RGB")
    detections = detector.detect(image)
    index = choose_face(detections, "largest")
    if index is None:
        return None
    box = tuple(float(v) for v in detections[index].box)
    return image.crop(square_box(box, scale, image.size))  # type: ignore[arg-type]


def mask_crop(image: Image.Image, mask: torch.Tensor, margin: float = MASK_CROP_MARGIN) -> Image.Image | None:
    """The character alone: a square around the (H, W) boolean ``mask`` at image size, everything outside the
    mask white. None for an empty mask."""
    if not bool(mask.any()):
        return None
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    box = (float(cols[0]), float(rows[0]), float(cols[-1]) + 1, float(rows[-1]) + 1)
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~mask.cpu().numpy()] = 255
    segmented = Image.fromarray(pixels)
    return segmented.crop(square_box(box, 1 + 2 * margin, segmented.size))

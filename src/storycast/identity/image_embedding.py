"""Images -> PhotoMaker ID embeddings, with CLIP preprocessing written with PIL and torch (no torchvision).

The preprocessing equals ``transformers.CLIPImageProcessor()`` with its defaults, which is what the official
PhotoMaker and IdentityStory pipelines use: RGB; resize so the shorter side is ``image_size`` (bicubic,
longer side ``int(image_size * long / short)``); centre crop ``image_size`` x ``image_size``; scale to
[0, 1]; normalise with the OpenAI CLIP mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from storycast.identity.photomaker import PhotoMakerIDEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: Sequence[Image.Image], image_size: int = 224) -> torch.Tensor:
    """(n, 3, image_size, image_size) float32 pixel values from PIL images, as ``CLIPImageProcessor`` does."""
    from PIL import Image

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    images = list(images)
    if not images:
        raise ValueError("images is empty: give at least one PIL image.")
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    batch = []
    for position, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{position}] must be a PIL.Image.Image, got {type(image).__name__}.")
        image = image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(image_size * long / short)
        new_size = (image_size, new_long) if width <= height else (new_long, image_size)
        image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
        left = (new_size[0] - image_size) // 2
        top = (new_size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        batch.append((pixels * (1.0 / 255.0) - mean) / std)
    return torch.stack(batch)


@torch.no_grad()
def embed_images(
    encoder: PhotoMakerIDEncoder,
    images: Sequence[Image.Image],
    image_size: int | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """ID embeddings (n, D) of PIL images, float32 on the encoder's device (D = 2048 for the real encoder).

    Args:
        encoder: A PhotoMaker ID encoder (its dtype and device are used for the forward pass).
        images: The candidate images.
        image_size: Side of the CLIP input; defaults to the encoder's (224 for ViT-L/14).
        batch_size: Images per forward pass.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    pixel_values = clip_preprocess(images, image_size or encoder.config.image_size)
    chunks = [encoder.embed(chunk).float() for chunk in pixel_values.split(batch_size)]
    return torch.cat(chunks)

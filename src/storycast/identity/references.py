"""Reference photos, read and embedded in one place: every method that takes a character's identity from photos
reads them here (with one error naming the file that cannot be read) and, for PhotoMaker, embeds them here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import StorycastError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from storycast.identity.photomaker_adapter import PhotoMakerAdapter


def read_photos(paths: Sequence[str | Path], owner: str = "a character") -> list[Image.Image]:
    """The photos at ``paths`` as RGB images.

    Raises:
        StorycastError: A file that is missing or not an image, named with the character it belongs to.
    """
    from PIL import Image, UnidentifiedImageError

    photos = []
    for path in paths:
        try:
            with Image.open(path) as image:
                photos.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise StorycastError(
                f"{path}: this reference photo of {owner} cannot be read ({type(err).__name__}). Fix: give a JPEG, "
                f"PNG or WebP photo, or remove it from the character's references."
            ) from None
    return photos


def photomaker_identity(adapter: PhotoMakerAdapter, photos: Sequence[Any]) -> torch.Tensor:
    """A PhotoMaker v1 identity from a person's photos: the mean of their ID embeddings (as IdentityStory's
    discovery averages the embeddings it keeps), on the adapter's device."""
    return adapter.embed(list(photos)).mean(dim=0)

"""Character masks: one interface, several providers (detector + segmenter, attention maps, user files).

A provider gets the stage-1 image of a frame and the characters to find in it, and returns one
boolean mask per character at image resolution. When a character is not found it raises
:class:`MaskNotFoundError`; the caller decides whether to retry (with a new seed) and how often.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from storycast.errors import StorycastError

if TYPE_CHECKING:
    import torch
    from PIL import Image


class MaskNotFoundError(StorycastError):
    """A character could not be located in a frame."""

    def __init__(self, message: str, *, frame_index: int | None = None, character_id: str | None = None):
        self.frame_index = frame_index
        self.character_id = character_id
        super().__init__(message)


@dataclass(frozen=True)
class CharacterQuery:
    """A character to locate: its id and the class word a detector looks for ("woman")."""

    id: str
    class_word: str


@dataclass
class MaskInputs:
    """What a provider may use to find the characters of one frame.

    Attributes:
        image: The frame's stage-1 image.
        characters: The characters to find, in the frame's order.
        frame_index: Index of the frame in the story (for messages).
        token_maps: Character id -> cross-attention map of its class word (any resolution, >= 0),
            gathered while drawing the image; used by the attention provider.
        user_masks: Character id -> mask image file given in the story.
    """

    image: Image.Image
    characters: Sequence[CharacterQuery]
    frame_index: int = 0
    token_maps: Mapping[str, torch.Tensor] = field(default_factory=dict)
    user_masks: Mapping[str, Path] = field(default_factory=dict)


@runtime_checkable
class MaskProvider(Protocol):
    """Locates characters in an image."""

    name: str

    def __call__(self, inputs: MaskInputs) -> dict[str, torch.Tensor]:
        """Character id -> boolean (H, W) mask at the image's resolution, for every character asked."""
        ...

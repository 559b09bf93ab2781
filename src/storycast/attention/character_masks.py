"""Where each character of each frame is, at any attention layer's token grid, while frames are drawn.

Storynizor's auto-masks (``docs/methods/storynizor.md``, ID-Synchronizer): the cross-attention map of the
character's class word, averaged over heads and the layers of one resolution, normalised, bilinearly
upsampled to the grid a layer needs and cut at its Otsu threshold (ConsiStory's ``attn_map_to_binary``).
The maps recorded during step s give the masks of step s + 1 (ConsiStory refreshes its masks at the end
of every step); before the first step has been recorded there is no mask. With a window of W steps the maps
are the mean of the last W steps' (ConsiStory's ``aggregate_last_steps_attention`` keeps the last 20);
Storynizor's are the last step's alone (W = 1).

Fixed masks (tests, user masks) use the same interface.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.thresholds import normalise_map, otsu_threshold
from storycast.attention.token_maps import TokenMapStore, token_grid

FrameCharacter = tuple[int, str]


def word_token_positions(tokenizer: Any, prompt: str, words: Sequence[str]) -> list[list[int]]:
    """Positions of each word's tokens in ``prompt`` as the text encoder sees it (with the start token).

    The k-th entry with a given word gets that word's k-th occurrence (two characters who are both "woman"
    take the first and the second). A word made of several tokens gives all of them. Empty where the word
    does not occur within the tokenizer's length.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    seen: dict[str, int] = {}
    positions: list[list[int]] = []
    for word in words:
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        width = len(word_ids)
        starts = [i for i in range(len(ids) - width + 1) if width and ids[i : i + width] == word_ids]
        nth = seen.get(word.lower(), 0)
        seen[word.lower()] = nth + 1
        positions.append(list(range(starts[nth], starts[nth] + width)) if nth < len(starts) else [])
    return positions


class CharacterMasks:
    """Per frame, a mask of every character it names, refreshed from recorded maps or fixed.

    Args:
        characters: Per frame of the batch (one guidance half), the ids of the characters it names.
        latent_size: (height, width) of the latents; every layer's token grid follows from it.
        window: Steps whose recorded maps are averaged into the masks (the last ones).
        cut_at_grid: Cut each map with the Otsu threshold of its upsampled copy at every grid it is read at
            (ConsiStory's ``attn_map_to_binary`` after ``F.interpolate``), instead of once at the maps' own size.
    """

    def __init__(
        self,
        characters: Sequence[Sequence[str]],
        latent_size: tuple[int, int],
        window: int = 1,
        cut_at_grid: bool = False,
    ):
        if window < 1:
            raise ValueError(f"the mask window must be at least one step, got {window}")
        self.characters = [tuple(c) for c in characters]
        self.latent_size = tuple(latent_size)
        self.cut_at_grid = cut_at_grid
        self.recorder: TokenMapStore | None = None
        self._steps: deque[torch.Tensor] = deque(maxlen=window)
        self._columns: dict[FrameCharacter, list[int]] = {}
        self._maps: dict[FrameCharacter, torch.Tensor] = {}
        self._thresholds: dict[FrameCharacter, float] = {}
        self._at_grid: dict[tuple[int, str, tuple[int, int], str], torch.Tensor] = {}

    # -- sources ---------------------------------------------------------------------------------------------

    def record(self, token_positions: Sequence[Mapping[str, Sequence[int]]], size: tuple[int, int]) -> TokenMapStore:
        """A recorder of the class words' maps at ``size``; install it on the cross-attention layers of one
        resolution. ``token_positions[frame][character]`` are the positions of that character's class word in
        the frame's prompt; a character whose word is missing gets no mask."""
        columns: list[list[int]] = []
        self._columns = {}
        self._steps.clear()
        for frame, positions in enumerate(token_positions):
            row: list[int] = []
            for character in self.characters[frame]:
                found = list(positions.get(character, ()))
                if found:
                    self._columns[(frame, character)] = list(range(len(row), len(row) + len(found)))
                    row.extend(found)
            columns.append(row)
        width = max([len(row) for row in columns] + [1])
        padded = [row + [0] * (width - len(row)) for row in columns]  # column 0 (start token) pads unused slots
        self.recorder = TokenMapStore(padded, size=size, rows=len(padded), latent_size=self.latent_size)
        return self.recorder

    def recorded_maps(self) -> dict[FrameCharacter, torch.Tensor]:
        """(frame, character) -> its class word's mean (h, w) map recorded so far, the union (max) of the word's
        tokens, not normalised and differentiable (training's attention-mask term); empty before any record."""
        if self.recorder is None or self.recorder.count == 0:
            return {}
        maps = self.recorder.mean_maps()
        return {key: maps[key[0], columns].amax(dim=0) for key, columns in self._columns.items()}

    def set_fixed(self, masks: Mapping[FrameCharacter, torch.Tensor]) -> None:
        """Use these boolean (h, w) masks (any size) from now on, instead of recorded maps."""
        self.recorder = None
        self._steps.clear()
        self._maps = {key: mask.float() for key, mask in masks.items()}
        self._thresholds = dict.fromkeys(masks, 0.5)
        self._at_grid.clear()

    def refresh(self) -> None:
        """Take the masks from what was recorded since the last refresh (called as a step begins); nothing
        recorded keeps the masks as they were."""
        if self.recorder is None or self.recorder.count == 0:
            return
        self._steps.append(self.recorder.mean_maps())  # (frames, columns, h, w): this step's mean over layers
        maps = torch.stack(list(self._steps)).mean(dim=0)
        self._maps, self._thresholds = {}, {}
        for (frame, character), columns in self._columns.items():
            normalised = normalise_map(maps[frame, columns].amax(dim=0))  # union of the word's tokens
            self._maps[(frame, character)] = normalised
            self._thresholds[(frame, character)] = otsu_threshold(normalised)
        self.recorder.reset()
        self._at_grid.clear()

    # -- reading -----------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether any mask exists yet (no: the first step, before anything was recorded)."""
        return bool(self._maps)

    def grid(self, tokens: int) -> tuple[int, int]:
        found = token_grid(tokens, self.latent_size)
        if found is None:
            raise ValueError(f"{tokens} tokens are no token grid of latents {self.latent_size}")
        return found

    def mask(self, frame: int, character: str, tokens: int, device: Any = "cpu") -> torch.Tensor | None:
        """Boolean (tokens,) mask of ``character`` in ``frame`` at the grid of a layer with ``tokens`` tokens;
        None when there is none (not recorded yet, or the character's word is not in the prompt)."""
        key = (frame, character)
        if key not in self._maps:
            return None
        grid = self.grid(tokens)
        cached = (frame, character, grid, str(device))
        if cached not in self._at_grid:
            source = self._maps[key]
            if tuple(source.shape) != grid:
                source = F.interpolate(source[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
            if self.cut_at_grid:
                source = normalise_map(source)
                threshold = otsu_threshold(source)
            else:
                threshold = self._thresholds[key]
            self._at_grid[cached] = (source > threshold).reshape(-1).to(device)
        return self._at_grid[cached]

    def image_mask(self, frame: int, character: str, size: tuple[int, int]) -> torch.Tensor | None:
        """Boolean (H, W) mask at image ``size`` (for saving, cropping references)."""
        key = (frame, character)
        if key not in self._maps:
            return None
        upsampled = F.interpolate(self._maps[key][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return upsampled > self._thresholds[key]

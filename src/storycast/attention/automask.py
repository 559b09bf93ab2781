"""Auto-mask self-attention (AMSA): Storynizor's ID-Synchronizer (Ma et al., AAAI 2025), as
specified in ``docs/methods/storynizor.md``.

The frames of a group are one batch. In the up-block self-attention layers, frame i attends to all of its
own tokens and, of every other frame j, to the tokens inside j's mask of the characters both frames name
(the union of their masks): the formulation is softmax(Q_i [K_1; ...; K_N]^T / sqrt(d) + B_i) with
B_i = 0 on frame i's keys and on other frames' masked keys, -inf elsewhere (ConsiStory's
``get_extended_attn_mask_instance``). Here the visible tokens are *gathered*, never hidden by -inf: the
result is the same (a test holds the two equal) and memory grows with the tokens kept.

- Masks: :class:`~storycast.attention.character_masks.CharacterMasks` (the class words' cross-attention maps,
  Otsu-cut, refreshed every step); at the first step there is none, so frames attend to themselves only
  (StoryDiffusion's ``cur_step < 1``).
- Mask dropout: each step, each other frame's mask tokens are kept with probability 1 - p (default p = 0.5,
  ConsiStory's ``mask_dropout``), one draw per (step, level, frame) shared by that level's layers and both
  guidance halves, from the call's generator.
- Guidance halves never mix: uncond rows gather uncond tokens, cond rows cond tokens.
- Anchors: an anchor group (mode "write") keeps, per layer and step, its frames' tokens inside their
  characters' masks; later groups (mode "read") attend to them as to other frames of their own, so memory stays
  flat however long the story is. Mask dropout of the anchors' tokens is drawn by each reader (Storynizor: the
  cache holds whole masks), or once by the writer, whose dropped tokens are then not kept at all (ConsiStory's
  ``input_h_cache``, which caches ``last_mask_dropout``: half the memory at dropout 0.5, and every reader sees
  the tokens the anchors saw of each other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from storycast.attention.cache import TokenCache
from storycast.attention.character_masks import CharacterMasks
from storycast.attention.processor import FrameSharingProcessor, KeyTokens, stack_rows
from storycast.attention.state import AttentionState


@dataclass
class AnchorFrame:
    """One anchor frame at one layer and step: its tokens inside its characters' masks, and which of them
    belong to which character."""

    tokens: torch.Tensor
    """(halves, k, C) pre-projection tokens."""
    members: Mapping[str, torch.Tensor]
    """Character id -> boolean (k,): the kept tokens inside that character's mask."""


def anchor_cache(device: Any = None) -> TokenCache:
    """(layer, step) -> the anchor frames' masked tokens (:class:`AnchorFrame` each), in the model's dtype on
    ``device`` (the model's when None, or the CPU to spare accelerator memory)."""
    return TokenCache(
        device,
        what="anchor tokens (layer, step)",
        fix="the anchors must be drawn (write) with the same steps and size before the frames that read them",
    )


@dataclass
class AutoMaskState(AttentionState):
    """Per-call state of AMSA (see :class:`~storycast.attention.state.AttentionState` for the common fields).

    Attributes:
        character_masks: The frames' character masks (their ``characters`` say who each frame names).
        dropout: Share of another frame's mask tokens dropped at each step (0: all kept).
        anchors: The anchor cache written or read.
        anchor_mode: "write" (this call draws the anchors), "read" (it attends to them) or None.
        anchor_dropout: Who draws the anchors' mask dropout: "reader" (every reading call, from the whole masks
            kept) or "writer" (the anchors' own call, keeping only the tokens it did not drop).
        share_batch: Frames of the call see each other (Storynizor's groups); False: each sees itself and the
            anchors only (ConsiStory's later frames, batched for speed alone).
    """

    character_masks: CharacterMasks = field(default_factory=lambda: CharacterMasks([], (1, 1)))
    dropout: float = 0.5
    anchors: TokenCache | None = None
    anchor_mode: Literal["write", "read"] | None = None
    anchor_dropout: Literal["reader", "writer"] = "reader"
    share_batch: bool = True
    _kept: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        super().begin_step(index, timestep)
        self.character_masks.refresh()
        self._kept.clear()

    @property
    def characters(self) -> list[tuple[str, ...]]:
        return self.character_masks.characters

    def shared_mask(self, viewer: int, frame: int, tokens: int, device: Any) -> torch.Tensor | None:
        """(tokens,) boolean: what ``viewer`` sees of ``frame``, the union of the masks in ``frame`` of the
        characters both name, before dropout; None when nothing."""
        common = [c for c in self.characters[frame] if c in self.characters[viewer]]
        masks = [m for c in common if (m := self.character_masks.mask(frame, c, tokens, device)) is not None]
        if not masks:
            return None
        return torch.stack(masks).any(dim=0)

    def kept(self, key: tuple[Any, ...], size: int, device: Any) -> torch.Tensor:
        """(size,) boolean keep-draw of mask dropout for ``key`` at this step (drawn once, then reused)."""
        full = (self.step, *key)
        if full not in self._kept:
            if self.dropout <= 0:
                keep = torch.ones(size, dtype=torch.bool)
            else:
                if self.generator is None:
                    raise ValueError("AMSA's mask dropout needs a torch.Generator: every random draw comes from it")
                keep = torch.rand(size, generator=self.generator) >= self.dropout
            self._kept[full] = keep.to(device)
        return self._kept[full]


class AutoMaskSelfAttention(FrameSharingProcessor):
    """AMSA on one self-attention layer (see the module docstring).

    Args:
        state: The call's :class:`AutoMaskState`.
        layer: The layer's name (its anchor-cache key).
        level: The layer's resolution level (its dropout draws are shared by that level's layers).
    """

    state: AutoMaskState

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        state = self.state
        by_frame = self.by_frame(hidden)  # [half, frame, token, channel]
        if state.character_masks.ready and state.dropout > 0:
            # Each frame's draw of this step and level, in frame order, whoever reads it first: the anchors get the
            # same draws whether they are cached or not.
            for frame in range(state.frames):
                state.kept((self.level, "frame", frame), hidden.shape[1], hidden.device)
        if state.anchor_mode == "write":
            # Every layer and step is written, empty where no mask exists yet (the first step, anchors naming
            # nobody): a reader whose own masks are ready finds what there is to read, even if it is nothing.
            self._write_anchors(by_frame)
        if not state.character_masks.ready:
            return context
        halves, frames, tokens = state.halves, state.frames, hidden.shape[1]
        extra: list[list[torch.Tensor]] = [[] for _ in range(frames)]
        for viewer in range(frames):
            for frame in range(frames):
                if frame == viewer or not state.share_batch:
                    continue
                visible = state.shared_mask(viewer, frame, tokens, hidden.device)
                if visible is not None:
                    visible = visible & state.kept((self.level, "frame", frame), tokens, hidden.device)
                    extra[viewer].append(by_frame[:, frame, visible])
            if state.anchor_mode == "read":
                extra[viewer].extend(self._read_anchors(viewer, hidden))
        rows = [
            torch.cat([by_frame[half, viewer], *(part[half] for part in extra[viewer])])
            for half in range(halves)
            for viewer in range(frames)
        ]
        return stack_rows(rows)

    def _write_anchors(self, by_frame: torch.Tensor) -> None:
        state, tokens = self.state, by_frame.shape[2]
        stored = []
        for frame, characters in enumerate(state.characters):
            masks = {
                c: m
                for c in characters
                if (m := state.character_masks.mask(frame, c, tokens, by_frame.device)) is not None
            }
            union = (
                torch.stack(list(masks.values())).any(dim=0) if masks else by_frame.new_zeros(tokens, dtype=torch.bool)
            )
            if state.anchor_dropout == "writer" and masks:
                # The draw the other anchors see this frame with at this step (the same key): kept as they saw it.
                union = union & state.kept((self.level, "frame", frame), tokens, by_frame.device)
            stored.append(AnchorFrame(by_frame[:, frame, union], {c: m[union] for c, m in masks.items()}))
        assert state.anchors is not None
        state.anchors.put((self.layer, state.step), stored)

    def _read_anchors(self, viewer: int, hidden: torch.Tensor) -> list[torch.Tensor]:
        state = self.state
        assert state.anchors is not None
        parts = []
        for number, anchor in enumerate(state.anchors.get((self.layer, state.step))):
            members = [anchor.members[c] for c in state.characters[viewer] if c in anchor.members]
            if not members:
                continue
            size = anchor.tokens.shape[1]
            visible = torch.stack(members).any(dim=0).to(hidden.device)
            if state.anchor_dropout == "reader":
                visible = visible & state.kept((self.level, "anchor", number), size, hidden.device)
            parts.append(
                anchor.tokens[:, visible.to(anchor.tokens.device)].to(device=hidden.device, dtype=hidden.dtype)
            )
        return parts


def install_automask_attention(unet: Any, state: AutoMaskState, blocks: Sequence[str] = ("up",)) -> Any:
    """AMSA on the self-attention layers of ``blocks`` (Storynizor's: the up blocks); returns the restoring handle."""
    from storycast.attention.layers import install_processors, select_layers

    layers = select_layers(unet, kind="self", blocks=blocks)
    return install_processors(
        unet, {layer.processor_key: AutoMaskSelfAttention(state, layer.name, layer.level) for layer in layers}
    )

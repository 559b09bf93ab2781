"""Story2Board's changes to FLUX while one canvas is drawn: the per-canvas state, the joint-attention processor that
records mutual attention and mixes values (RAVM), and the block hooks of latent panel anchoring.

Anchoring (DavidDinkevich/Story2Board@92ef110, ``story2board_transformer.py`` lines 181-183 and 218-221): after
every transformer block, the reference panel's image tokens of every canvas but the first are replaced by the first
canvas's. The first canvas (the reference row) computes exactly as without anchoring, so drawing it alone and
keeping its reference-panel tokens per block and step (``anchor="write"``), then drawing each other canvas alone
with its reference panel replaced by them (``anchor="read"``), is the authors' batch, one canvas at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from storycast.attention.cache import TokenCache
from storycast.attention.layers import select_layers
from storycast.attention.mutual import cross_probabilities, mutual_attention
from storycast.attention.processor import StoryAttnProcessor
from storycast.attention.state import AttentionState
from storycast.methods.story2board.ravm import decayed_average, mix_values, reciprocal_pairs


@dataclass
class CanvasState(AttentionState):
    """What the processors and block hooks of one canvas share.

    Attributes:
        panel_tokens: Image tokens per panel (the reference panel's come first in the canvas).
        grid: The panel's token grid (rows, columns).
        blocks: Transformer blocks (the last one closes a step's mutual-attention mean).
        mixing_blocks, mixing_steps: Where values are mixed.
        strength: The blend (0: nothing is recorded or mixed).
        decay, border, min_size: See :mod:`storycast.methods.story2board.ravm`.
        anchor: "write": keep the reference panel's tokens after every block; "read": replace them by those kept;
            "off".
        anchors: Where they are kept, by ``(owner, block, step)``.
        owner: The storyboard the kept tokens belong to.
        average: (rows, frame tokens, reference tokens) running average of mutual attention.
        mixed: Frame tokens mixed at each step's last mixing block, per step (for the record).
    """

    panel_tokens: int = 0
    grid: tuple[int, int] = (1, 1)
    blocks: int = 0
    mixing_blocks: range = range(0)
    mixing_steps: range = range(0)
    strength: float = 0.0
    decay: float = 0.8
    border: int = 3
    min_size: int = 9
    anchor: Literal["off", "write", "read"] = "off"
    anchors: TokenCache | None = None
    owner: Hashable = None
    average: torch.Tensor | None = None
    mixed: dict[int, int] = field(default_factory=dict)
    _step_sum: torch.Tensor | None = None
    _pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def records(self) -> bool:
        """Mutual attention is recorded up to the last mixing step (the authors record it at every step, but
        nothing reads the average after the last mixing step, so the rest is skipped: the same images)."""
        return (
            self.strength > 0 and len(self.mixing_blocks) > 0 and len(self.mixing_steps) > 0
            and self.step <= self.mixing_steps[-1]
        )  # fmt: skip

    def observe(self, block: int, mutual: torch.Tensor) -> None:
        """Add a block's (rows, frame tokens, reference tokens) mutual attention to the step's sum; the last block
        folds the step's mean into the running average."""
        self._step_sum = mutual if self._step_sum is None else self._step_sum + mutual
        if block == self.blocks - 1:
            average = self.average if self.average is not None else torch.zeros_like(mutual)
            self.average = decayed_average(average, self._step_sum / self.blocks, self.step, self.decay)
            self._step_sum = None
            self._pairs = {}

    def mixes(self, block: int) -> bool:
        return self.step in self.mixing_steps and block in self.mixing_blocks

    def pairs(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``row``'s (frame tokens, reference partners) from the current average (kept until it changes)."""
        if row not in self._pairs:
            assert self.average is not None
            self._pairs[row] = reciprocal_pairs(self.average[row], self.grid, self.border, self.min_size)
        return self._pairs[row]


class ReciprocalValueMixing(StoryAttnProcessor):
    """FLUX joint attention that records the two panels' mutual attention and mixes the frame panel's values
    (Story2Board's RAVM); with nothing to record it is the stock computation.

    Args:
        state: The canvas's state.
        block: The index of the layer's block (double-stream blocks, then single-stream ones).
    """

    state: CanvasState

    def __init__(self, state: CanvasState, block: int):
        super().__init__(state)
        self.block = block

    def edit_joint_projections(
        self, attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: Any, text: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = self.state
        if not state.records:
            return query, key, value
        panel = state.panel_tokens
        if query.shape[1] != text + 2 * panel:
            raise ValueError(
                f"a Story2Board canvas has {text} text and 2 x {panel} image tokens, the layer got {query.shape[1]}"
            )
        reference, frame = slice(text, text + panel), slice(text + panel, text + 2 * panel)
        scale = query.shape[-1] ** -0.5
        # The authors score the queries and keys before rotary positions (their processor, lines 84 and 130-134).
        mutual = torch.stack(
            [
                mutual_attention(*cross_probabilities(q, k, reference, frame, scale))
                for q, k in zip(query, key, strict=True)
            ]
        )
        state.observe(self.block, mutual)
        if not state.mixes(self.block):
            return query, key, value
        rows = []
        for row in range(value.shape[0]):
            tokens, partners = state.pairs(row)
            rows.append(mix_values(value[row], frame.start + tokens, reference.start + partners, state.strength))
            state.mixed[state.step] = int(tokens.numel())
        return query, key, torch.stack(rows)


def flux_blocks(model: Any) -> list[Any]:
    """FLUX's transformer blocks in the order they run: double-stream, then single-stream."""
    return [*model.transformer_blocks, *model.single_transformer_blocks]


def mixing_processors(model: Any, state: CanvasState) -> dict[str, ReciprocalValueMixing]:
    """A processor for every joint-attention layer (each records; those of the mixing blocks mix), keyed as
    ``model.attn_processors``."""
    index = {id(block.attn): number for number, block in enumerate(flux_blocks(model))}
    return {
        layer.processor_key: ReciprocalValueMixing(state, index[id(layer.module)])
        for layer in select_layers(model, kind="joint")
    }


def anchor_panel(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(rows, tokens, C) image tokens with the first ``reference.shape[1]`` (the reference panel's) replaced by
    ``reference`` (1, panel tokens, C) in every row."""
    out = image.clone()
    out[:, : reference.shape[1]] = reference.to(device=image.device, dtype=image.dtype)
    return out


@contextlib.contextmanager
def panel_anchoring(blocks: Sequence[torch.nn.Module], state: CanvasState) -> Iterator[None]:
    """Forward hooks on every block (each returns ``(text tokens, image tokens)``): keep or replace the reference
    panel's image tokens after the block, by the state's ``anchor``; removed on exit."""
    anchors = state.anchors
    if state.anchor == "off" or anchors is None:
        yield
        return

    def hook_of(number: int) -> Any:
        def hook(module: Any, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
            text, image = output
            key = (state.owner, number, state.step)
            if state.anchor == "write":
                anchors.put(key, image[:1, : state.panel_tokens].detach().clone())
                return None
            return text, anchor_panel(image, anchors.get(key))

        return hook

    handles = [block.register_forward_hook(hook_of(number)) for number, block in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

"""Consistent Self-Attention (StoryDiffusion, Zhou et al. 2024), as the released code runs it.

In the up-block self-attention layers, a frame attends to its own tokens and to a random sample of the
tokens of its character's identity frames (HVision-NKU/StoryDiffusion@8de45e4,
``gradio_app_sdxl_specific_id_low_vram.py``, ``SpatialAttnProcessor2_0``):

- **write** (a character's identity frames, drawn as one batch): every step, each identity frame's
  sampled tokens (the layer's input, before the key/value projections) are stored in the bank under
  (character, layer, step); when the step's gate is open, frame i attends to the sampled tokens of the
  other identity frames j != i and to all of its own;
- **read** (every other frame): when the gate is open, the frame attends to the banked tokens of the
  identity frames of every character it names, then its own; a frame naming nobody attends to itself.

The two guidance halves never mix: uncond rows read uncond tokens, cond rows cond tokens. Sampled tokens
are gathered (the authors' memory-efficient variant), never hidden with masks, and only they are stored,
in the model's dtype, so the bank grows with the identity frames and steps, not with the story.

The gate (authors'): plain self-attention at step 0; from step 1 on, each layer call draws u ~ U(0, 1)
and applies CSA when u > 0.3 (steps < 20) or u > 0.1 (later). Token samples are drawn once per step per
layer resolution and shared by that resolution's layers and both halves, as in the authors' code. Every
random number comes from the call's generator (the authors use the global torch RNG and Python's
``random``): a seed gives the same frames on every run, though not the authors' exact numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from storycast.attention.cache import TokenCache
from storycast.attention.processor import FrameSharingProcessor, KeyTokens, stack_rows
from storycast.attention.state import AttentionState

Sampling = Literal["bernoulli", "fixed"]


def bernoulli_token_indices(tokens: int, rate: float, frames: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The authors' sampling (``cal_attn_indice_xl_effcient_memory``): each token of each frame kept with
    probability ``rate``; frames keep different numbers of tokens. One sorted index tensor per frame."""
    kept = torch.rand((frames, tokens), generator=generator) < rate
    return [torch.nonzero(row, as_tuple=True)[0] for row in kept]


def fixed_token_indices(tokens: int, rate: float, frames: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A uniformly random subset of exactly ``round(rate * tokens)`` tokens per frame, sorted: the same
    expected size as Bernoulli sampling, with static shapes (compiled kernels, batched rows)."""
    count = round(rate * tokens)
    return [torch.randperm(tokens, generator=generator)[:count].sort().values for _ in range(frames)]


SAMPLERS = {"bernoulli": bernoulli_token_indices, "fixed": fixed_token_indices}


@dataclass(frozen=True)
class CsaGate:
    """When CSA applies at a layer call (the authors' schedule; see the module docstring).

    Attributes:
        plain_steps: Steps at the start drawn with plain self-attention.
        early_threshold: CSA applies when u > this, before ``switch_step``.
        late_threshold: CSA applies when u > this, from ``switch_step`` on.
        switch_step: The step (absolute, not scaled with the step count, as the authors') where the
            threshold changes.
    """

    plain_steps: int = 1
    early_threshold: float = 0.3
    late_threshold: float = 0.1
    switch_step: int = 20

    def threshold(self, step: int) -> float | None:
        """The threshold at ``step``; None when the step is drawn with plain attention."""
        if step < self.plain_steps:
            return None
        return self.early_threshold if step < self.switch_step else self.late_threshold


def token_bank(device: Any = None) -> TokenCache:
    """The identity frames' sampled tokens: (character, layer, step) -> one (halves, k_j, C) tensor per identity
    frame j, in the model's dtype on ``device`` (the model's when None, or the CPU to spare GPU memory)."""
    return TokenCache(
        device,
        what="banked tokens of the identity frames (character, layer, step)",
        fix="its identity frames must be drawn (write) with the same steps and layers before the frames that read them",
    )


@dataclass
class ConsistentAttentionState(AttentionState):
    """Per-call state of CSA (see :class:`~storycast.attention.state.AttentionState` for the common fields).

    Attributes:
        mode: "write" (a character's identity frames) or "read" (frames attending to banks).
        bank: Where the identity frames' tokens are stored and read.
        write_character: The character whose identity frames a write call draws.
        read_characters: Per frame of a read call, the characters whose banks it attends to.
        rates: Sampling rate per layer level (the authors' sa32 / sa64).
        sampling: "bernoulli" (the authors') or "fixed" (static shapes).
        gate: When CSA applies.
    """

    mode: Literal["write", "read"] = "read"
    bank: TokenCache = field(default_factory=token_bank)
    write_character: str | None = None
    read_characters: Sequence[Sequence[str]] = ()
    rates: dict[int, float] = field(default_factory=dict)
    sampling: Sampling = "bernoulli"
    gate: CsaGate = field(default_factory=CsaGate)
    _indices: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        super().begin_step(index, timestep)
        self._indices.clear()

    def token_indices(self, level: int, tokens: int, device: Any) -> list[torch.Tensor]:
        """This step's sampled token positions of every frame at a layer level (drawn on first use)."""
        key = (self.step, level)
        if key not in self._indices:
            sample = SAMPLERS[self.sampling]
            drawn = sample(tokens, self.rates.get(level, 0.0), self.frames, self._generator())
            self._indices[key] = [index.to(device) for index in drawn]
        return self._indices[key]

    def open_gate(self) -> bool:
        """Whether this layer call applies CSA (one uniform draw per call, as the authors do)."""
        threshold = self.gate.threshold(self.step)
        if threshold is None:
            return False
        return float(torch.rand((), generator=self._generator())) > threshold

    def _generator(self) -> torch.Generator:
        if self.generator is None:
            raise ValueError("ConsistentAttentionState needs a torch.Generator: every random draw comes from it")
        return self.generator


class ConsistentSelfAttention(FrameSharingProcessor):
    """CSA on one self-attention layer (see the module docstring).

    Args:
        state: The call's :class:`ConsistentAttentionState`.
        layer: The layer's name (its bank key).
        level: The layer's resolution level (its sampling rate).
    """

    state: ConsistentAttentionState

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        state = self.state
        halves, frames = state.halves, state.frames
        by_frame = self.by_frame(hidden)  # [half, frame, token, channel]
        if state.mode == "write":
            indices = state.token_indices(self.level, hidden.shape[1], hidden.device)
            sampled = [by_frame[:, j, indices[j]] for j in range(frames)]  # (halves, k_j, C) each
            assert state.write_character is not None
            state.bank.put((state.write_character, self.layer, state.step), sampled)
            if not state.open_gate():
                return context
            extra = [_joined([sampled[j] for j in range(frames) if j != i], hidden, halves) for i in range(frames)]
        else:
            if not state.open_gate():
                return context
            extra = [self._banked(characters, hidden) for characters in state.read_characters]
        return _rows_with_extra(by_frame, extra, halves, frames)

    def _banked(self, characters: Sequence[str], hidden: torch.Tensor) -> torch.Tensor:
        """(halves, M, C): the banked tokens of every identity frame of ``characters`` at this layer and step."""
        parts = [
            tokens.to(device=hidden.device, dtype=hidden.dtype)
            for character in characters
            for tokens in self.state.bank.get((character, self.layer, self.state.step))
        ]
        return _joined(parts, hidden, self.state.halves)


def _joined(parts: Sequence[torch.Tensor], hidden: torch.Tensor, halves: int) -> torch.Tensor:
    """(halves, sum k, C) tokens of ``parts`` side by side; none when there are none."""
    if not parts:
        return hidden.new_zeros(halves, 0, hidden.shape[-1])
    return torch.cat(list(parts), dim=1)


def _rows_with_extra(by_frame: torch.Tensor, extra: Sequence[torch.Tensor], halves: int, frames: int) -> KeyTokens:
    """Per batch row (half h, frame f): that frame's extra tokens of half h, then its own tokens."""
    return stack_rows([torch.cat([extra[f][h], by_frame[h, f]]) for h in range(halves) for f in range(frames)])


def install_consistent_attention(model: Any, state: ConsistentAttentionState, blocks: Sequence[str] = ("up",)) -> Any:
    """CSA on every self-attention layer of ``blocks`` (the authors': the up blocks, 36 layers on SDXL; on FLUX the
    joint attention of the blocks named, e.g. "single"); returns the restoring handle.

    ``state.rates`` maps the layers' levels to sampling rates (StoryDiffusion's ``_level_rates``).
    """
    from storycast.attention.layers import install_processors, select_layers

    layers = select_layers(model, kind="self", blocks=blocks)
    return install_processors(
        model, {layer.processor_key: ConsistentSelfAttention(state, layer.name, layer.level) for layer in layers}
    )

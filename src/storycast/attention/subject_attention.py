"""Subject-driven shared self-attention (SDSA) with query blending and feature injection: ConsiStory's attention
(Tewel et al., SIGGRAPH 2024; NVlabs/consistory ``attention_processor.ConsistoryExtendedAttnXFormersAttnProcessor``).

One processor, three behaviours, each switched by the call's :class:`SubjectAttentionState`:

- **SDSA** (the up blocks' self-attention): a frame attends to all of its own tokens and to the tokens inside
  the subject masks of the frames it is mapped to, after mask dropout. This is AMSA
  (:mod:`storycast.attention.automask`), whose masks, dropout, gathering and anchor cache it reuses: the frames
  of one call see each other (the anchors, among themselves), later frames see the cached anchors.
- **Query blending** ("layout diversity"): during the first steps the UNet first runs once without sharing (the
  *vanilla* pass), which only records each shared layer's query; the shared pass then uses
  ``s_t * q_vanilla + (1 - s_t) * q`` (``QueryStore``: s from 0.9 to 0.81836735 over steps 0..S/10; it applies
  where SDSA does, from step 1).
- **Feature injection** (the second pass; self-attention at one resolution in the down and up blocks): the
  output after ``to_out`` is blended with the corresponding pixels of other frames
  (:mod:`storycast.attention.feature_injection`), on the cond half only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from storycast.attention.automask import AutoMaskSelfAttention, AutoMaskState
from storycast.attention.feature_injection import FeatureInjection
from storycast.attention.processor import KeyTokens


def query_strengths(start: float, end: float, last_step: int) -> dict[int, float]:
    """Step -> weight of the vanilla query for steps ``0 .. last_step``, linear from ``start`` to ``end``
    (``QueryStore``'s ``np.linspace(strength_start, strength_end, t_range[1] - t_range[0] + 1)``)."""
    if last_step < 0:
        return {}
    return {step: float(s) for step, s in enumerate(np.linspace(start, end, last_step + 1))}


@dataclass
class SubjectAttentionState(AutoMaskState):
    """Per-call state of ConsiStory's attention (the AMSA fields, and:)

    Attributes:
        vanilla: The current UNet evaluation is the vanilla pass: nothing is shared, recorded or injected; the
            shared layers keep their queries.
        query_strengths: Step -> weight of the vanilla query in the shared pass (steps without one: none).
        injection: The second pass's feature injection (None: the first pass).
    """

    vanilla: bool = False
    query_strengths: Mapping[int, float] = field(default_factory=dict)
    injection: FeatureInjection | None = None
    _queries: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    def keep_query(self, layer: str, query: torch.Tensor) -> None:
        self._queries[layer] = (self.step, query)

    def vanilla_query(self, layer: str) -> torch.Tensor:
        step, query = self._queries.get(layer, (None, None))
        if step != self.step or query is None:
            raise RuntimeError(
                f"layer {layer} blends the vanilla query at step {self.step}, but no vanilla pass ran at that step"
            )
        return query


class SubjectDrivenAttention(AutoMaskSelfAttention):
    """ConsiStory's self-attention on one layer (see the module docstring).

    Args:
        state: The call's :class:`SubjectAttentionState`.
        layer: The layer's name.
        level: Its resolution level.
        share: SDSA and query blending here (the up blocks).
        inject: Feature injection here (the injection level's down and up blocks).
    """

    state: SubjectAttentionState

    def __init__(self, state: SubjectAttentionState, layer: str, level: int, *, share: bool, inject: bool):
        super().__init__(state, layer, level)
        self.share = share
        self.inject = inject

    def _sharing(self) -> bool:
        return self.share and not self.state.vanilla and self.state.character_masks.ready

    def edit_query(self, attn: Any, query: torch.Tensor) -> torch.Tensor:
        state = self.state
        if not self.share:
            return query
        if state.vanilla:
            state.keep_query(self.layer, query)
            return query
        strength = state.query_strengths.get(state.step)
        if strength is None or not self._sharing():
            return query
        return strength * state.vanilla_query(self.layer) + (1 - strength) * query

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        if not self.share or self.state.vanilla:
            return context
        return super().key_tokens(attn, hidden, context)

    def edit_output(self, attn: Any, output: torch.Tensor) -> torch.Tensor:
        state = self.state
        injection = state.injection
        if not self.inject or injection is None or state.vanilla or not injection.active(state.step):
            return output
        by_frame = self.by_frame(output)
        by_frame[-1] = injection.apply(self.layer, state.step, by_frame[-1])  # the cond half
        return by_frame.reshape(output.shape)


def install_subject_attention(
    unet: Any,
    state: SubjectAttentionState,
    *,
    share_blocks: Sequence[str] | None = ("up",),
    injection_level: int | None = None,
    injection_blocks: Sequence[str] = ("down", "up"),
) -> Any:
    """ConsiStory's processors: SDSA on the self-attention of ``share_blocks`` (None: nowhere), injection on the
    self-attention at ``injection_level`` in ``injection_blocks`` (None: nowhere). Returns the restoring handle."""
    from storycast.attention.layers import install_processors, select_layers

    shared = (
        {layer.name: layer for layer in select_layers(unet, kind="self", blocks=share_blocks)} if share_blocks else {}
    )
    injected = (
        {
            layer.name: layer
            for layer in select_layers(unet, kind="self", levels=[injection_level], blocks=injection_blocks)
        }
        if injection_level is not None
        else {}
    )
    chosen = {**shared, **injected}
    return install_processors(
        unet,
        {
            layer.processor_key: SubjectDrivenAttention(
                state, layer.name, layer.level, share=name in shared, inject=name in injected
            )
            for name, layer in chosen.items()
        },
    )

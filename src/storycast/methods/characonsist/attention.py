"""CharaConsist's attention on FLUX's single-stream blocks: one processor, three kinds of call.

- ``identity``: a character's identity frame, drawn as plain FLUX; the processor keeps its image keys and values
  *before* rotary positions (every step of the shared-attention window), its image attention outputs (the mask step,
  and the merge steps where the merge acts) and, after the mask step, its foreground mask (``save_attn_kv``,
  ``save_attn_out_for_sim``, ``save_attn_out_for_interpolate``, ``save_attn_weight``);
- ``pre``: a reading frame's first pass, up to the mask step: its masks every step, its background tokens reading
  the identity frame's background where the frame keeps it, and at the mask step the points matched to each named
  character's identity frame (the authors' ``is_pre_run``);
- ``frame``: the reading frame's real pass: its masks until the mask step (the matches are made again there), its
  character tokens attending to the identity frame's keys re-positioned to the matched points, its background to
  the identity frame's where kept, and the token merge.

Everything a layer call needs from earlier calls is in the state (masks, matches) or the method's bank (a
:class:`~storycast.attention.cache.TokenCache` keyed (character, kind, layer, step)); the processor keeps only what
one layer call passes between its own override points (the rotary table, the borrowed tokens' labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from storycast.attention.cache import TokenCache
from storycast.attention.processor import FrameSharingProcessor, KeyTokens
from storycast.attention.state import AttentionState
from storycast.methods.characonsist.points import (
    BACKGROUND,
    Matches,
    borrowed_bias,
    cross_similarity,
    foreground_labels,
    match_points,
    merge_tokens,
    positioned_keys,
    text_attention_maps,
)

Mode = Literal["identity", "pre", "frame"]


@dataclass(frozen=True)
class StepWindows:
    """When each part acts (resolved step indices of the run)."""

    attention_start: int
    attention_end: int
    mask_step: int
    merge: dict[int, float]
    """Step -> merge weight; empty when the merge is off."""

    def shares(self, step: int) -> bool:
        return self.attention_start <= step < self.attention_end


@dataclass
class CharaConsistState(AttentionState):
    """One draw's state (one frame: CharaConsist draws a frame at a time, as the authors).

    Attributes:
        mode: The kind of call (module docstring).
        windows: When each part acts.
        bank: The identity frames' keys, values, outputs and masks, keyed (character, kind[, layer, step]).
        characters: Identity mode: the one character drawn; reading modes: the characters the frame names, in order
            (label k + 1 is characters[k]).
        token_groups: Text token positions: the background's, then each character's.
        real_tokens: The prompt's tokens without padding and end token (the authors' ``real_len``): the
            softmax of the masks' text attention runs over these.
        grid: (rows, columns) of the image tokens.
        foreground_layers: Layers where point-tracking attention and the merge act.
        background_layers: Layers where background sharing acts.
        share_foreground: Point-tracking attention on.
        keep_background: This frame reads its first character's identity-frame background.
        threshold: Similarity a matched pair must exceed.
        stored_kv_layers: Identity mode: the layers whose keys and values are kept.
        match: Identity mode: outputs are kept for matching; reading modes: matches are made.
        labels: (N,) the frame's current labels (0 background, k + 1 character k), None before the first mask.
        matches: Character -> its matches, from the last mask step.
    """

    mode: Mode = "identity"
    windows: StepWindows = field(default_factory=lambda: StepWindows(1, 1, 0, {}))
    bank: TokenCache = field(default_factory=TokenCache)
    characters: tuple[str, ...] = ()
    token_groups: tuple[torch.Tensor, ...] = ()
    real_tokens: int = 0
    grid: tuple[int, int] = (1, 1)
    foreground_layers: frozenset[str] = frozenset()
    background_layers: frozenset[str] = frozenset()
    share_foreground: bool = True
    keep_background: bool = False
    threshold: float = 0.5
    stored_kv_layers: frozenset[str] = frozenset()
    match: bool = True
    labels: torch.Tensor | None = None
    matches: dict[str, Matches] = field(default_factory=dict)
    _maps: torch.Tensor | None = None
    _similarity: dict[str, torch.Tensor] = field(default_factory=dict)
    _similarity_layers: int = 0

    # -- when -------------------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        return self.mode != "identity"

    def records_masks(self) -> bool:
        """The identity frame's mask is its mask step's; a reading frame's is refreshed every step up to it
        (P lines 171, 181, 191)."""
        if self.mode == "identity":
            return self.step == self.windows.mask_step
        return self.step <= self.windows.mask_step

    def records_similarity(self) -> bool:
        return self.reading and self.match and self.step == self.windows.mask_step

    def keeps_outputs(self, layer: str) -> bool:
        """Identity mode: whether this call's image attention output is kept (P lines 174-175)."""
        if not self.match:
            return False
        merging = (
            self.step in self.windows.merge and self.windows.shares(self.step) and layer in self.foreground_layers
        )
        return self.step == self.windows.mask_step or merging

    def shares_foreground(self, layer: str) -> bool:
        return (
            self.mode == "frame"
            and self.share_foreground
            and layer in self.foreground_layers
            and self.windows.shares(self.step)
        )

    def shares_background(self, layer: str) -> bool:
        return self.keep_background and layer in self.background_layers and self.windows.shares(self.step)

    def merges(self, layer: str) -> bool:
        """The merge acts where point-tracking attention may (foreground layers, shared window) at its own steps
        (A lines 374-376; P line 199)."""
        return (
            self.mode == "frame"
            and self.step in self.windows.merge
            and layer in self.foreground_layers
            and self.windows.shares(self.step)
        )

    # -- what the layers report -------------------------------------------------------------------

    def add_maps(self, maps: torch.Tensor) -> None:
        self._maps = maps if self._maps is None else self._maps + maps

    def add_similarity(self, character: str, similarity: torch.Tensor) -> None:
        known = self._similarity.get(character)
        self._similarity[character] = similarity if known is None else known + similarity

    def end_step(self, *_: Any) -> None:
        """After a step's evaluation: the masks of the maps recorded during it, then the matches (the pipeline's
        order, P lines 237-257)."""
        if self._maps is not None:
            labels = foreground_labels(self._maps[0], self.grid)
            self._maps = None
            if self.mode == "identity":
                self.bank.put((self.characters[0], "mask"), labels != BACKGROUND)
            self.labels = labels
        if self._similarity:
            layers = max(1, self._similarity_layers)
            for number, character in enumerate(self.characters):
                mean = self._similarity[character][0] / layers
                identity_foreground = self.bank.get((character, "mask"))
                self.matches[character] = match_points(
                    mean, identity_foreground, self.labels == number + 1, self.threshold
                )
            self._similarity = {}
            self._similarity_layers = 0


class CharaConsistAttention(FrameSharingProcessor):
    """CharaConsist's joint attention on one single-stream layer (module docstring)."""

    state: CharaConsistState

    def __init__(self, state: CharaConsistState, layer: str, level: int = 1):
        super().__init__(state, layer, level)
        # What one layer call passes between its override points (set in edit_joint_projections, read later in the call).
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._borrowed: torch.Tensor | None = None

    def edit_joint_projections(
        self, attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: Any, text: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._observe(query, key, value, rotary, text)
        return query, key, value  # read, not changed

    def _observe(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: Any, text: int) -> None:
        state, step = self.state, self.state.step
        state.check_batch(query.shape[0])
        self._borrowed = None
        self._rotary = None if rotary is None else (rotary[0][text:], rotary[1][text:])
        if state.mode == "identity" and self.layer in state.stored_kv_layers and state.windows.shares(step):
            # Keys before their rotary positions (A lines 325-329): a reader gives them its matched points' positions.
            tokens = torch.cat([key[:, text:].flatten(2), value[:, text:].flatten(2)], dim=-1)
            state.bank.put((state.characters[0], "kv", self.layer, step), tokens)
        if state.records_masks():
            image_query, text_key = query[:, text:], key[:, :text]
            if rotary is not None:
                from diffusers.models.embeddings import apply_rotary_emb

                image_query = apply_rotary_emb(image_query, self._rotary, sequence_dim=1)
                text_key = apply_rotary_emb(text_key, (rotary[0][:text], rotary[1][:text]), sequence_dim=1)
            state.add_maps(text_attention_maps(image_query, text_key[:, : state.real_tokens], state.token_groups))

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        borrowed = self._borrowed_tokens(context)
        if borrowed is None:
            return context
        tokens, self._borrowed = borrowed
        return torch.cat([context, tokens.to(context.dtype)], dim=1)

    def attention_bias(self, attn: Any, query: torch.Tensor, key_length: int) -> torch.Tensor | None:
        if self._borrowed is None:
            return None
        labels = self.state.labels
        assert labels is not None
        text = query.shape[2] - labels.numel()
        bias = borrowed_bias(text, labels.to(query.device), self._borrowed.to(query.device), query.dtype)
        if bias.shape[-1] != key_length:
            raise ValueError(f"the borrowed tokens' bias has {bias.shape[-1]} keys, the attention {key_length}")
        return bias

    def edit_output(self, attn: Any, output: torch.Tensor) -> torch.Tensor:
        state, step = self.state, self.state.step
        if state.mode == "identity":
            if state.keeps_outputs(self.layer):
                state.bank.put((state.characters[0], "out", self.layer, step), output.clone())
            return output
        if state.records_similarity():
            # Before the merge, as the authors (A lines 371-376).
            for character in state.characters:
                identity = state.bank.get((character, "out", self.layer, step)).to(output.device)
                state.add_similarity(character, cross_similarity(output, identity))
            state._similarity_layers += 1
        if state.merges(self.layer):
            weight = state.windows.merge[step]
            for character in state.characters:
                matches = state.matches.get(character)
                if matches is not None and matches.count:
                    identity = state.bank.get((character, "out", self.layer, step)).to(output.device)
                    output = merge_tokens(output, identity, matches, weight)
        return output

    def _borrowed_tokens(self, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The identity frames' tokens this call attends to besides its own, [keys, values] side by side with
        their positions, and their labels: the first character's identity background at the same places (where
        the frame's tokens are background too), then each character's identity tokens at the matched points
        (A lines 195-228)."""
        state, layer = self.state, self.layer
        if state.labels is None or self._rotary is None:
            return None
        tokens: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        device = own.device
        if state.shares_background(layer):
            source = state.characters[0]
            shared = ~state.bank.get((source, "mask")).to(device) & (state.labels.to(device) == BACKGROUND)
            places = torch.nonzero(shared).flatten()
            if places.numel():
                tokens.append(self._positioned(source, places, places, device))
                labels.append(torch.full((places.numel(),), BACKGROUND, dtype=torch.long, device=device))
        if state.shares_foreground(layer):
            for number, character in enumerate(state.characters):
                matches = state.matches.get(character)
                if matches is None or not matches.count:
                    continue
                tokens.append(self._positioned(character, matches.identity, matches.current, device))
                labels.append(torch.full((matches.count,), number + 1, dtype=torch.long, device=device))
        if not tokens:
            return None
        return torch.cat(tokens, dim=1), torch.cat(labels)

    def _positioned(self, character: str, take: torch.Tensor, at: torch.Tensor, device: Any) -> torch.Tensor:
        """(1, M, 2 x inner) identity tokens ``take`` of ``character`` with the rotary positions of the frame's
        tokens ``at``."""
        assert self._rotary is not None
        kv = self.state.bank.get((character, "kv", self.layer, self.state.step)).to(device)
        keys, values = kv[:, take.to(device)].chunk(2, dim=-1)
        head_dim = self._rotary[0].shape[-1]
        keys = positioned_keys(keys.unflatten(-1, (-1, head_dim)), self._rotary, at).flatten(2)
        return torch.cat([keys, values], dim=-1)

"""PuLID-FLUX's ID branch on diffusers' ``FluxTransformer2DModel``: after every ``double_interval``-th double-stream
block and every ``single_interval``-th single-stream block, ``image_tokens += weight x CA(id_tokens, image_tokens)``.

API (what the ``pulid`` method uses, and IdentityStory on FLUX builds on)::

    branch = PuLIDFluxBranch.attach(transformer, pulid.pulid_ca, double_interval=2, single_interval=4)
    branch.set_rows([[IDTarget(tokens)], [], [IDTarget(a, mask=ma), IDTarget(b, mask=mb)]])  # one list per row
    with branch.rows(rows):          # the same, cleared after the block
        ...                          # denoiser calls
    sample(..., states=[branch])     # the sampler tells it the step (``begin_step``) before every evaluation
    branch.detach()                  # the hooks removed: the transformer is as it was

- One list of :class:`IDTarget` per batch row, in the denoiser's row order (with true CFG: [uncond rows, cond
  rows], as :meth:`storycast.pipelines.families.base.Family.guided_noise` lays them out). A row with no target (or
  no rows set at all) is left exactly as FLUX computes it.
- A target's ``tokens`` (K, D) are one identity's ID tokens (:meth:`storycast.identity.pulid_flux.PuLIDFlux.
  id_tokens`, D = 2048); ``weight`` is PuLID's ``id_weight``; ``mask`` (N,) over the row's packed image tokens
  (row-major over the (h/2, w/2) grid; :func:`token_mask` makes one from a pixel or latent mask) multiplies its term,
  so the branch acts only inside it; ``start_step`` / ``stop_step`` gate it by the sampler's step index (PuLID's
  ``start_step``: on from that step).
- Several targets of a row are summed, each read from the same block output (characters of one frame, each with
  its own tokens and mask). Weight 0 or a gated-off target computes nothing: the output is FLUX's, bit for bit.

The insertion points are PuLID's (``flux/model.py`` at 1aa2fc7d: after double block ``i`` when ``i %
double_interval == 0``, then after single block ``i`` when ``i % single_interval == 0``, the CA modules used in that
order). diffusers' single-stream blocks return the text and image tokens apart, so "the part after the text tokens"
of BFL's single blocks is the block's second output; the hooks change that output and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, eq=False)
class IDTarget:
    """One identity acting on one batch row (see the module docstring).

    Attributes:
        tokens: (K, D) ID tokens.
        mask: (N,) weights over the row's image tokens (bool or float); None: every token.
        weight: PuLID's ``id_weight``.
        start_step: First sampler step the identity acts at.
        stop_step: The step it stops before; None: to the end.
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    weight: float = 1.0
    start_step: int = 0
    stop_step: int | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"an IDTarget's tokens are (K, D), got shape {tuple(self.tokens.shape)}")
        if self.mask is not None and self.mask.ndim != 1:
            raise ValueError(f"an IDTarget's mask is (N,) over the image tokens, got shape {tuple(self.mask.shape)}")

    def acts_at(self, step: int) -> bool:
        return self.weight != 0 and step >= self.start_step and (self.stop_step is None or step < self.stop_step)


Rows = Sequence[Sequence[IDTarget]]


def insertion_blocks(transformer: Any, double_interval: int, single_interval: int) -> list[nn.Module]:
    """The blocks followed by a CA module, in the order the modules are used: double blocks 0, ``double_interval``,
    ..., then single blocks 0, ``single_interval``, ..."""
    doubles = list(transformer.transformer_blocks)[::double_interval]
    singles = list(transformer.single_transformer_blocks)[::single_interval]
    return doubles + singles


def token_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A (H, W) mask (pixels or latents, values in [0, 1]) as weights (h x w,) over FLUX's packed image tokens of a
    (h, w) token grid (latents / 2), row-major as ``pack_latents`` orders them: the mean of the mask over each
    token's area."""
    if mask.ndim != 2:
        raise ValueError(f"token_mask takes an (H, W) mask, got shape {tuple(mask.shape)}")
    pooled = F.adaptive_avg_pool2d(mask[None, None].float(), grid) if mask.shape != grid else mask.float()[None, None]
    return pooled.reshape(-1)


class PuLIDFluxBranch:
    """PuLID-FLUX's CA modules hooked after FLUX's blocks; a handle (:meth:`detach`, or use it as a context manager).

    Args:
        transformer: The ``FluxTransformer2DModel``.
        cross_attentions: The CA modules in insertion order (``PuLIDFlux.pulid_ca``).
        double_interval, single_interval: PuLID's intervals (2 and 4 for the official weights).
    """

    def __init__(self, transformer: Any, cross_attentions: nn.ModuleList, double_interval: int, single_interval: int):
        blocks = insertion_blocks(transformer, double_interval, single_interval)
        if len(blocks) != len(cross_attentions):
            doubles, singles = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
            raise ValueError(
                f"a FLUX transformer of {doubles} double and {singles} single blocks has {len(blocks)} insertion points "
                f"at intervals {double_interval}/{single_interval}, but {len(cross_attentions)} PuLID cross-attention "
                "modules were given; the weights were made for another transformer or other intervals"
            )
        self.transformer = transformer
        self.cross_attentions = cross_attentions
        self.step = 0
        self._rows: list[list[IDTarget]] | None = None
        self._handles = [
            block.register_forward_hook(self._hook(ca)) for block, ca in zip(blocks, cross_attentions, strict=True)
        ]

    @classmethod
    def attach(
        cls, transformer: Any, cross_attentions: nn.ModuleList, *, double_interval: int = 2, single_interval: int = 4
    ) -> PuLIDFluxBranch:
        return cls(transformer, cross_attentions, double_interval, single_interval)

    # -- what the branch acts with ----------------------------------------------------------------------------

    def set_rows(self, rows: Rows | None) -> None:
        """One list of targets per denoiser batch row (None: no identity anywhere, FLUX as it is)."""
        self._rows = None if rows is None else [list(row) for row in rows]

    @contextlib.contextmanager
    def rows(self, rows: Rows | None) -> Iterator[PuLIDFluxBranch]:
        """:meth:`set_rows` for the block; the rows before it are put back after it."""
        before = self._rows
        self.set_rows(rows)
        try:
            yield self
        finally:
            self._rows = before

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        """The sampler's step index (``sample(..., states=[branch])`` calls it before every evaluation)."""
        self.step = index

    # -- the handle --------------------------------------------------------------------------------------------

    def detach(self) -> None:
        """Remove the hooks: the transformer computes exactly what it did before :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._rows = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> PuLIDFluxBranch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- the computation ---------------------------------------------------------------------------------------

    def _hook(self, ca: nn.Module) -> Any:
        def after_block(module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
            if self._rows is None:
                return None
            text, image = output
            return text, self.add_identities(ca, image)

        return after_block

    def add_identities(self, ca: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """``image`` (B, N, C) plus, per row, the sum over its acting targets of ``weight x mask x ca(tokens,
        image_row)``; rows and targets that do not act cost nothing."""
        rows = self._rows
        assert rows is not None
        if len(rows) != image.shape[0]:
            raise ValueError(
                f"the PuLID branch was given ID targets for {len(rows)} rows and the denoiser batch has "
                f"{image.shape[0]}; set one list per row (with true CFG: the uncond rows, then the cond rows)"
            )
        acting = [(row, target) for row, targets in enumerate(rows) for target in targets if target.acts_at(self.step)]
        if not acting:
            return image
        parameter = next(ca.parameters())
        delta = torch.zeros_like(image)
        # Targets with as many tokens are one batched call: one row per (row, target) pair.
        for count in sorted({t.tokens.shape[0] for _, t in acting}):
            group = [(row, t) for row, t in acting if t.tokens.shape[0] == count]
            index = torch.tensor([row for row, _ in group], device=image.device)
            tokens = torch.stack([t.tokens for _, t in group]).to(parameter.device, parameter.dtype)
            term = ca(tokens, image[index].to(parameter.dtype)).to(image.dtype)
            scale = torch.stack([self._scale(t, image) for _, t in group])
            delta = delta.index_add(0, index, term * scale)
        return image + delta

    @staticmethod
    def _scale(target: IDTarget, image: torch.Tensor) -> torch.Tensor:
        """(N, 1) or (1, 1) factor of a target's term: its weight, times its mask."""
        weight = torch.full((1, 1), float(target.weight), device=image.device, dtype=image.dtype)
        if target.mask is None:
            return weight.expand(image.shape[1], 1)
        if target.mask.shape[0] != image.shape[1]:
            raise ValueError(
                f"an ID target's mask covers {target.mask.shape[0]} image tokens, the block has {image.shape[1]}; make "
                "it with token_mask(mask, (latent_height // 2, latent_width // 2))"
            )
        return weight * target.mask.to(image.device, image.dtype)[:, None]

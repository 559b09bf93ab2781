"""Text conditioning of a batch of rows, one small type per model family.

A conditioning is everything a denoiser call needs besides the latents, the timestep and the guidance: per-token
text embeddings for every family; for SDXL the pooled embedding and the size ids (``added_cond_kwargs``); for
FLUX the T5 per-token embeddings and CLIP's pooled embedding. Every field is a batch-first tensor, so joining,
repeating and picking rows is written once for every family. A family's ``encode`` builds them
(:mod:`storycast.pipelines.families`) and its ``predict`` hands them to the denoiser; methods never ask which
family they hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch

C = TypeVar("C", bound="TextConditioning")


@dataclass
class TextConditioning:
    """Conditioning of a batch of rows: per-token embeddings (B, 77, D), SD 1.5's whole conditioning.

    Subclasses add batch-first tensor fields; :meth:`cat`, :meth:`repeat` and :meth:`rows` handle
    every field alike.
    """

    embeds: torch.Tensor
    text_fields: ClassVar[tuple[str, ...]] = ("embeds",)
    """The fields that come from the text encoders (not SDXL's size ids)."""

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def cat(cls: type[C], parts: Sequence[C]) -> C:
        """The rows of ``parts``, one after the other."""
        if not parts:
            raise ValueError("cannot join an empty list of conditionings")
        kind = type(parts[0])
        if any(type(p) is not kind for p in parts):
            raise TypeError(f"cannot join conditionings of different families: {[type(p).__name__ for p in parts]}")
        fields = parts[0]._tensors()
        return kind(**{name: torch.cat([getattr(p, name) for p in parts]) for name in fields})

    def repeat(self: C, times: int) -> C:
        """Every row ``times`` times, as ``tensor.repeat`` does: rows 0..B-1, then 0..B-1 again."""
        return type(self)(**{k: v.repeat(times, *([1] * (v.ndim - 1))) for k, v in self._tensors().items()})

    def rows(self: C, start: int, stop: int | None = None) -> C:
        """Rows ``start .. stop - 1`` (one row when ``stop`` is left out)."""
        stop = start + 1 if stop is None else stop
        return type(self)(**{k: v[start:stop] for k, v in self._tensors().items()})

    def replace(self: C, **changes: torch.Tensor) -> C:
        """A copy with some fields replaced (e.g. ``embeds`` after an identity is fused in)."""
        return dataclasses.replace(self, **changes)

    def without_text(self: C, rows: Sequence[bool]) -> C:
        """A copy whose text fields are zeros in the rows where ``rows`` is true: the unconditional rows of
        diffusers' SDXL pipeline called without a negative prompt (``force_zeros_for_empty_prompt``)."""
        if len(rows) != len(self):
            raise ValueError(f"got {len(rows)} row flags for {len(self)} rows")
        zeroed = torch.tensor(list(rows), dtype=torch.bool, device=self.embeds.device)
        changes = {}
        for name in self.text_fields:
            tensor = getattr(self, name)
            where = zeroed.view(-1, *([1] * (tensor.ndim - 1)))
            changes[name] = torch.where(where, torch.zeros((), dtype=tensor.dtype, device=tensor.device), tensor)
        return self.replace(**changes)

    @property
    def text_tokens(self) -> int:
        """Per-token embeddings per row (77 for CLIP; T5's maximum sequence length for FLUX)."""
        return int(self.embeds.shape[1])

    def denoiser_inputs(self) -> dict[str, Any]:
        """Keyword arguments of the denoiser's forward (and of a ControlNet) for these rows: here
        ``UNet2DConditionModel``'s."""
        return {"encoder_hidden_states": self.embeds}


@dataclass
class SDXLConditioning(TextConditioning):
    """SDXL: per-token embeddings of both encoders (B, 77, 2048), the pooled embedding of encoder 2 (B, 1280)
    and the size ids (B, 6): original height and width, crop top and left, target height and width."""

    pooled: torch.Tensor
    time_ids: torch.Tensor
    text_fields: ClassVar[tuple[str, ...]] = ("embeds", "pooled")

    def denoiser_inputs(self) -> dict[str, Any]:
        return {
            "encoder_hidden_states": self.embeds,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids},
        }


@dataclass
class FluxConditioning(TextConditioning):
    """FLUX.1: T5's per-token embeddings (B, L, 4096), L the family's maximum sequence length, and the pooled
    embedding of CLIP-L (B, 768). The text positions are all zero (``FluxPipeline.encode_prompt``'s ``text_ids``),
    so the family makes them from L when it calls the transformer."""

    pooled: torch.Tensor
    text_fields: ClassVar[tuple[str, ...]] = ("embeds", "pooled")

    def denoiser_inputs(self) -> dict[str, Any]:
        return {"encoder_hidden_states": self.embeds, "pooled_projections": self.pooled}


@dataclass
class GuidancePair:
    """Conditional rows and, for classifier-free guidance, as many unconditional rows.

    ``uncond`` is None where the guidance needs none (FLUX.1's embedded guidance without true CFG): the denoiser
    batch is then the cond rows alone.
    """

    uncond: TextConditioning | None
    cond: TextConditioning

    def __len__(self) -> int:
        return len(self.cond)

    @property
    def halves(self) -> int:
        """Guidance halves of the denoiser batch: 2 (uncond, cond) or 1 (cond)."""
        return 1 if self.uncond is None else 2

    def batch(self) -> TextConditioning:
        """The denoiser batch: all uncond rows, then all cond rows (diffusers' order); the cond rows alone
        without uncond ones."""
        if self.uncond is None:
            return self.cond
        return type(self.cond).cat([self.uncond, self.cond])

    def repeat(self, times: int) -> GuidancePair:
        return GuidancePair(None if self.uncond is None else self.uncond.repeat(times), self.cond.repeat(times))

    def rows(self, start: int, stop: int | None = None) -> GuidancePair:
        return GuidancePair(
            None if self.uncond is None else self.uncond.rows(start, stop), self.cond.rows(start, stop)
        )

    @staticmethod
    def cat(parts: Sequence[GuidancePair]) -> GuidancePair:
        if len({p.halves for p in parts}) > 1:
            raise ValueError("cannot join guidance pairs with and without unconditional rows")
        uncond = None if parts[0].uncond is None else type(parts[0].uncond).cat([p.uncond for p in parts])  # type: ignore[misc]
        return GuidancePair(uncond, type(parts[0].cond).cat([p.cond for p in parts]))


class PromptEncoder(Protocol):
    """Encodes prompts and their negatives for one model family."""

    def __call__(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int
    ) -> GuidancePair: ...


def size_ids(height: int, width: int, rows: int, *, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """SDXL's size conditioning: (original h, w, crop top, left, target h, w), uncropped, per row."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.repeat(rows, 1)

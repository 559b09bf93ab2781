"""Text conditioning behind one small protocol, with an SDXL and an SD 1.5 implementation.

A conditioning is everything a UNet call needs besides the latents and the timestep, for a batch of
rows: per-token text embeddings for every family, and for SDXL the pooled embedding and the size ids
(``added_cond_kwargs``). Every field is a batch-first tensor, so joining, repeating and picking rows
is written once for both families. Methods build conditionings with :func:`prompt_encoder` and hand
them to :func:`storycast.pipelines.noise.predict_noise`; they never ask which family they hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

C = TypeVar("C", bound="TextConditioning")


@dataclass
class TextConditioning:
    """Conditioning of a batch of rows: per-token embeddings (B, 77, D), SD 1.5's whole conditioning.

    Subclasses add batch-first tensor fields; :meth:`cat`, :meth:`repeat` and :meth:`rows` handle
    every field alike.
    """

    embeds: torch.Tensor

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

    def unet_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``UNet2DConditionModel.forward`` (and of a ControlNet) for these rows."""
        return {"encoder_hidden_states": self.embeds}


@dataclass
class SDXLConditioning(TextConditioning):
    """SDXL: per-token embeddings of both encoders (B, 77, 2048), the pooled embedding of encoder 2 (B, 1280)
    and the size ids (B, 6): original height and width, crop top and left, target height and width."""

    pooled: torch.Tensor
    time_ids: torch.Tensor

    def unet_inputs(self) -> dict[str, Any]:
        return {
            "encoder_hidden_states": self.embeds,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids},
        }


@dataclass
class GuidancePair:
    """Unconditional and conditional rows for classifier-free guidance (same number of rows)."""

    uncond: TextConditioning
    cond: TextConditioning

    def __len__(self) -> int:
        return len(self.cond)

    def batch(self) -> TextConditioning:
        """The UNet batch: all uncond rows, then all cond rows (diffusers' order)."""
        return type(self.cond).cat([self.uncond, self.cond])

    def repeat(self, times: int) -> GuidancePair:
        return GuidancePair(self.uncond.repeat(times), self.cond.repeat(times))

    def rows(self, start: int, stop: int | None = None) -> GuidancePair:
        return GuidancePair(self.uncond.rows(start, stop), self.cond.rows(start, stop))

    @staticmethod
    def cat(parts: Sequence[GuidancePair]) -> GuidancePair:
        return GuidancePair(
            type(parts[0].uncond).cat([p.uncond for p in parts]), type(parts[0].cond).cat([p.cond for p in parts])
        )


class PromptEncoder(Protocol):
    """Encodes prompts and their negatives for one model family."""

    def __call__(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int
    ) -> GuidancePair: ...


def size_ids(height: int, width: int, rows: int, *, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """SDXL's size conditioning: (original h, w, crop top, left, target h, w), uncropped, per row."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.repeat(rows, 1)


@dataclass(frozen=True)
class _PipelinePromptEncoder:
    """A family's prompt encoder over the loaded pipeline's own ``encode_prompt``."""

    pipe: Any
    device: Any

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int
    ) -> GuidancePair:
        if len(prompts) != len(negative_prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negative_prompts)} negative prompts")
        return self.encode(list(prompts), list(negative_prompts), width, height)

    def encode(self, prompts: list[str], negative_prompts: list[str], width: int, height: int) -> GuidancePair:
        raise NotImplementedError


class SDXLPromptEncoder(_PipelinePromptEncoder):
    """Both SDXL text encoders; the size ids say the image is uncropped at its target size."""

    def encode(self, prompts: list[str], negative_prompts: list[str], width: int, height: int) -> GuidancePair:
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompts,
        )
        ids = size_ids(height, width, len(prompts), dtype=embeds.dtype, device=embeds.device)
        return GuidancePair(
            SDXLConditioning(negative_embeds, negative_pooled, ids), SDXLConditioning(embeds, pooled, ids.clone())
        )


class SD15PromptEncoder(_PipelinePromptEncoder):
    """SD 1.5's single CLIP text encoder."""

    def encode(self, prompts: list[str], negative_prompts: list[str], width: int, height: int) -> GuidancePair:
        embeds, negative_embeds = self.pipe.encode_prompt(
            prompts, self.device, 1, True, negative_prompt=negative_prompts
        )
        return GuidancePair(TextConditioning(negative_embeds), TextConditioning(embeds))


PROMPT_ENCODERS = {"sdxl": SDXLPromptEncoder, "sd15": SD15PromptEncoder}


def prompt_encoder(pipe: Any, family: str, device: Any) -> PromptEncoder:
    """The prompt encoder of a loaded pipeline of ``family`` ("sdxl" or "sd15"), running on ``device``."""
    try:
        return PROMPT_ENCODERS[family](pipe, device)
    except KeyError:
        raise ValueError(f"no prompt encoder for model family {family!r}; known: {sorted(PROMPT_ENCODERS)}") from None

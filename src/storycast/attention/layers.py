"""Choose a denoiser's attention layers by what they are: self, cross or joint attention, resolution level, block.

A layer's level is the number of 2x downsamplings of the latent grid its tokens sit on (0 = full latent
resolution), read from its place in the model's block structure, never from a table of names: in a UNet, its down
or up block's depth; in FLUX, 1 everywhere (its tokens are 2x2 latent patches). Blocks are "down", "mid" and
"up" in a UNet, "double" (double-stream) and "single" (single-stream) in FLUX, whose joint attention lets text
and image tokens attend to each other in one softmax.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn


@dataclass(frozen=True)
class AttentionLayer:
    """An attention module of the denoiser and where it sits."""

    name: str
    module: Any
    is_cross: bool
    level: int
    block: str
    """"down", "mid" or "up" in a UNet; "double" or "single" in FLUX: the part of the model it sits in."""
    is_joint: bool = False
    """Joint text-image attention (FLUX): the image tokens attend to themselves and the text in one softmax."""

    @property
    def processor_key(self) -> str:
        return f"{self.name}.processor"


def _level(name: str, num_blocks: int) -> int:
    match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.", name)
    if match is None:
        return num_blocks - 1  # mid block: the lowest resolution
    index = int(match.group(2))
    return index if match.group(1) == "down_blocks" else num_blocks - 1 - index


def _block(name: str) -> str:
    return "down" if name.startswith("down_blocks.") else "up" if name.startswith("up_blocks.") else "mid"


JOINT_BLOCKS = {"transformer_blocks": "double", "single_transformer_blocks": "single"}
"""FLUX's block lists and what they are called here."""


def is_joint_attention(module: Any) -> bool:
    """A joint text-image attention module (FLUX's), whose processors take rotary positions."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    return isinstance(module, FluxAttention)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module of a ``UNet2DConditionModel`` or a ``FluxTransformer2DModel``, with its kind, level
    and block."""
    from diffusers.models.attention_processor import Attention

    if hasattr(model, "single_transformer_blocks"):
        return [
            AttentionLayer(name, module, False, 1, JOINT_BLOCKS[name.split(".")[0]], is_joint=True)
            for name, module in model.named_modules()
            if is_joint_attention(module)
        ]
    num_blocks = len(model.config.block_out_channels)
    return [
        AttentionLayer(name, module, bool(module.is_cross_attention), _level(name, num_blocks), _block(name))
        for name, module in model.named_modules()
        if isinstance(module, Attention)
    ]


def _is_kind(layer: AttentionLayer, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "joint":
        return layer.is_joint
    if kind == "cross":
        return layer.is_cross
    return not layer.is_cross  # "self": a UNet's attn1, or joint attention (image tokens attending to themselves)


def select_layers(
    model: nn.Module,
    *,
    kind: Literal["self", "cross", "joint", "any"] = "any",
    levels: Iterable[int] | None = None,
    name_pattern: str | None = None,
    blocks: Iterable[str] | None = None,
) -> list[AttentionLayer]:
    """Attention layers matching every given criterion; selecting nothing is an error.

    Args:
        model: The UNet or FLUX transformer.
        kind: Self attention (a UNet's ``attn1``; FLUX's joint attention, where the image tokens attend to
            themselves too), cross attention (a UNet's ``attn2``), joint attention only, or any.
        levels: Resolution levels to keep (0 = full latent resolution, 1 = half...).
        name_pattern: Regular expression the module name must match (``re.search``).
        blocks: Parts of the model to keep: "down", "mid", "up" (UNet); "double", "single" (FLUX).
    """
    wanted_levels = set(levels) if levels is not None else None
    wanted_blocks = set(blocks) if blocks is not None else None
    pattern = re.compile(name_pattern) if name_pattern else None
    layers = attention_layers(model)
    chosen = [
        layer
        for layer in layers
        if _is_kind(layer, kind)
        and (wanted_levels is None or layer.level in wanted_levels)
        and (wanted_blocks is None or layer.block in wanted_blocks)
        and (pattern is None or pattern.search(layer.name))
    ]
    if not chosen:
        kinds = sorted({"joint" if layer.is_joint else "cross" if layer.is_cross else "self" for layer in layers})
        raise ValueError(
            f"no {kind} attention layer matches levels={sorted(wanted_levels) if wanted_levels else 'any'}, "
            f"blocks={sorted(wanted_blocks) if wanted_blocks else 'any'} and name_pattern={name_pattern!r}; the "
            f"{type(model).__name__} has {'/'.join(kinds)} attention at levels {sorted({la.level for la in layers})} in "
            f"blocks {sorted({la.block for la in layers})}"
        )
    return chosen


class ProcessorHandle:
    """Restores the processors that were replaced; returned by :func:`install_processors`."""

    def __init__(self, model: nn.Module, originals: dict[str, Any]):
        self._model = model
        self._originals = originals

    def remove(self) -> None:
        if self._originals:
            current = dict(self._model.attn_processors)
            current.update(self._originals)
            self._model.set_attn_processor(current)
            self._originals = {}

    def __enter__(self) -> ProcessorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_processors(model: nn.Module, processors: dict[str, Any]) -> ProcessorHandle:
    """Set processors on some layers (keys as in ``model.attn_processors``); the handle puts the old ones back."""
    current = dict(model.attn_processors)
    unknown = set(processors) - set(current)
    if unknown:
        raise ValueError(f"not attention processors of this {type(model).__name__}: {sorted(unknown)[:3]}")
    originals = {key: current[key] for key in processors}
    current.update(processors)
    model.set_attn_processor(current)
    return ProcessorHandle(model, originals)

"""Choose UNet attention layers by what they are: self or cross attention, and resolution level.

A layer's level is the number of 2x downsamplings above it (0 = full latent resolution), read from its
place in the UNet's block structure, never from a table of names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn


@dataclass(frozen=True)
class AttentionLayer:
    """An attention module of the UNet and where it sits."""

    name: str
    module: Any
    is_cross: bool
    level: int
    block: str
    """"down", "mid" or "up": the part of the UNet it sits in."""

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


def attention_layers(unet: nn.Module) -> list[AttentionLayer]:
    """Every attention module of a ``UNet2DConditionModel``, with its kind, level and block."""
    from diffusers.models.attention_processor import Attention

    num_blocks = len(unet.config.block_out_channels)
    return [
        AttentionLayer(name, module, bool(module.is_cross_attention), _level(name, num_blocks), _block(name))
        for name, module in unet.named_modules()
        if isinstance(module, Attention)
    ]


def select_layers(
    unet: nn.Module,
    *,
    kind: Literal["self", "cross", "any"] = "any",
    levels: Iterable[int] | None = None,
    name_pattern: str | None = None,
    blocks: Iterable[str] | None = None,
) -> list[AttentionLayer]:
    """Attention layers matching every given criterion; selecting nothing is an error.

    Args:
        unet: The UNet.
        kind: Self attention (``attn1``), cross attention (``attn2``) or both.
        levels: Resolution levels to keep (0 = full latent resolution, 1 = half...).
        name_pattern: Regular expression the module name must match (``re.search``).
        blocks: Parts of the UNet to keep: "down", "mid", "up".
    """
    wanted_levels = set(levels) if levels is not None else None
    wanted_blocks = set(blocks) if blocks is not None else None
    pattern = re.compile(name_pattern) if name_pattern else None
    chosen = [
        layer
        for layer in attention_layers(unet)
        if (kind == "any" or layer.is_cross == (kind == "cross"))
        and (wanted_levels is None or layer.level in wanted_levels)
        and (wanted_blocks is None or layer.block in wanted_blocks)
        and (pattern is None or pattern.search(layer.name))
    ]
    if not chosen:
        raise ValueError(
            f"no {kind} attention layer matches levels={sorted(wanted_levels) if wanted_levels else 'any'}, "
            f"blocks={sorted(wanted_blocks) if wanted_blocks else 'any'} and name_pattern={name_pattern!r}; the UNet "
            f"has levels {sorted({layer.level for layer in attention_layers(unet)})}"
        )
    return chosen


class ProcessorHandle:
    """Restores the processors that were replaced; returned by :func:`install_processors`."""

    def __init__(self, unet: nn.Module, originals: dict[str, Any]):
        self._unet = unet
        self._originals = originals

    def remove(self) -> None:
        if self._originals:
            current = dict(self._unet.attn_processors)
            current.update(self._originals)
            self._unet.set_attn_processor(current)
            self._originals = {}

    def __enter__(self) -> ProcessorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install_processors(unet: nn.Module, processors: dict[str, Any]) -> ProcessorHandle:
    """Set processors on some layers (keys as in ``unet.attn_processors``); the handle puts the old ones back."""
    current = dict(unet.attn_processors)
    unknown = set(processors) - set(current)
    if unknown:
        raise ValueError(f"not attention processors of this UNet: {sorted(unknown)[:3]}")
    originals = {key: current[key] for key in processors}
    current.update(processors)
    unet.set_attn_processor(current)
    return ProcessorHandle(unet, originals)

"""Tokens one denoising call keeps for later calls: the one cache type of the attention family.

StoryDiffusion's identity frames leave their sampled tokens for every frame that reads them, Storynizor's and
ConsiStory's anchors their masked tokens (and ConsiStory's their injected outputs); the frames that read them are
drawn by later calls. A :class:`TokenCache` holds such values by key (a layer and step, with the owner first where
there are several), in the model's dtype, on the model's device or on the CPU to spare accelerator memory.

What a cache holds does not outlive the method object: a group drawn in an earlier run is not in memory, and the
runner asks the method to restore it (``StoryMethod.restore``) before it draws a group that reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch


def _moved(value: Any, device: Any) -> Any:
    """``value`` (a tensor, or lists, tuples, dicts and dataclasses of them) with every tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _moved(getattr(value, f.name), device) for f in dataclasses.fields(value)}
        )
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


class TokenCache:
    """Values kept between denoising calls, by key.

    Args:
        device: Where values are kept: the device they come on when None (the model's), or e.g. "cpu".
        what: What the cache holds, for the message when a key is missing ("the identity frames' tokens").
        fix: How a missing key is avoided, for the same message.
    """

    def __init__(self, device: Any = None, *, what: str = "tokens", fix: str = "draw what writes them first"):
        self.device = device
        self.what = what
        self.fix = fix
        self._values: dict[Hashable, Any] = {}

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` (tensors, or nests of them: copies already, e.g. gathered tokens) under ``key``."""
        self._values[key] = value if self.device is None else _moved(value, self.device)

    def get(self, key: Hashable) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"no {self.what} for {key}: {self.fix}") from None

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def owners(self) -> set[Any]:
        """The first parts of the keys (the characters of a bank keyed (character, layer, step))."""
        return {key[0] for key in self._values if isinstance(key, tuple)}

    def drop(self, where: Callable[[Hashable], bool]) -> None:
        """Forget the values whose key ``where`` accepts."""
        for key in [k for k in self._values if where(k)]:
            del self._values[key]

    def clear(self) -> None:
        self._values.clear()

    @property
    def empty(self) -> bool:
        return not self._values

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor kept."""
        return sum(t.numel() * t.element_size() for value in self._values.values() for t in _tensors(value))

"""Features on disk, keyed by what was encoded (image or text sha256) and by which extractor.

Layout: ``<root>/<namespace>/<key[:2]>/<key>.safetensors`` plus ``<root>/<namespace>/extractor.json``
describing the extractor. The namespace is a hash of the extractor's identity (checkpoint, dtype,
preprocessing versions, face settings), so a feature is reused by every preset and run that asks
the same extractor about the same bytes, and never by another extractor. Files are written
atomically; an unreadable file counts as absent and is rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from storycast.utils.io import atomic_write_bytes, atomic_write_json, sha256_json

logger = logging.getLogger(__name__)

NAMESPACE_LENGTH = 20


def namespace_of(identity: Mapping[str, Any]) -> str:
    """Cache namespace of an extractor identity (a JSON-able mapping)."""
    return sha256_json(dict(identity))[:NAMESPACE_LENGTH]


class FeatureCache:
    """Tensors by (extractor identity, content key), in memory and, when ``root`` is set, on disk."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None
        self.memory: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self._described: set[str] = set()

    def _path(self, namespace: str, key: str) -> Path:
        assert self.root is not None
        return self.root / namespace / key[:2] / f"{key}.safetensors"

    def describe(self, namespace: str, identity: Mapping[str, Any]) -> None:
        """Write the namespace's ``extractor.json`` once, so that a cache folder explains itself."""
        if self.root is None or namespace in self._described:
            return
        path = self.root / namespace / "extractor.json"
        if not path.is_file():
            atomic_write_json(path, dict(identity))
        self._described.add(namespace)

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        found = self.memory.get((namespace, key))
        if found is None and self.root is not None:
            path = self._path(namespace, key)
            if path.is_file():
                from safetensors.torch import load

                try:
                    found = load(path.read_bytes())
                except Exception as err:  # a truncated or foreign file: recompute it
                    logger.warning("ignoring unreadable cached feature %s (%s)", path, err)
                    found = None
                if found is not None:
                    self.memory[(namespace, key)] = found
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, namespace: str, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        values = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        self.memory[(namespace, key)] = values
        if self.root is not None:
            from safetensors.torch import save

            atomic_write_bytes(self._path(namespace, key), save(values))

    def stats(self) -> dict[str, Any]:
        return {"root": str(self.root) if self.root else None, "hits": self.hits, "misses": self.misses}

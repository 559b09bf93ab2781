"""The identity library: identities stored once, keyed by what determines them, reused across runs.

An identity is an ID embedding (a 1-D tensor) with a preview sheet and the settings that made it. Its key
is a hash of everything that determines it (description, class word, models, discovery settings, seed, or
the photos it was embedded from), so the same character in another story or run finds it again.

Layout: ``<root>/<key>/identity.safetensors`` (tensor ``identity``), ``preview.png``, ``info.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.utils.io import atomic_directory, sha256_json

if TYPE_CHECKING:
    import torch

KEY_LENGTH = 24


@dataclass
class IdentityRecord:
    """A stored identity.

    Attributes:
        key: The library key.
        embedding: The identity, a (D,) float32 tensor.
        info: What made it (character, settings, model, counts, timings).
        folder: Where it is stored.
    """

    key: str
    embedding: torch.Tensor
    info: dict[str, Any]
    folder: Path

    @property
    def preview_path(self) -> Path | None:
        path = self.folder / "preview.png"
        return path if path.is_file() else None


def identity_key(parts: Mapping[str, Any]) -> str:
    """Library key of an identity from everything that determines it (JSON-able values)."""
    return sha256_json(dict(parts))[:KEY_LENGTH]


class IdentityLibrary:
    """Identities on disk under ``root``; writes are atomic (a folder is renamed into place)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def info(self, key: str) -> dict[str, Any] | None:
        """What made a stored identity (its ``info.json``), without loading the embedding; None when absent."""
        info_file = self.path(key) / "info.json"
        if not info_file.is_file():
            return None
        return json.loads(info_file.read_text(encoding="utf-8"))

    def get(self, key: str) -> IdentityRecord | None:
        folder = self.path(key)
        tensor_file, info_file = folder / "identity.safetensors", folder / "info.json"
        if not (tensor_file.is_file() and info_file.is_file()):
            return None
        from safetensors.torch import load_file

        embedding = load_file(str(tensor_file))["identity"]
        return IdentityRecord(key, embedding, json.loads(info_file.read_text(encoding="utf-8")), folder)

    def put(
        self, key: str, embedding: torch.Tensor, info: Mapping[str, Any], preview: Any | None = None
    ) -> IdentityRecord:
        """Store an identity (replacing one with the same key)."""
        import torch
        from safetensors.torch import save_file

        vector = embedding.detach().reshape(-1).to(device="cpu", dtype=torch.float32).contiguous()
        record_info = {"key": key, **dict(info)}
        with atomic_directory(self.path(key)) as staging:
            save_file({"identity": vector}, str(staging / "identity.safetensors"))
            if preview is not None:
                preview.save(staging / "preview.png")
            (staging / "info.json").write_text(json.dumps(record_info, indent=2, default=str) + "\n", encoding="utf-8")
        return IdentityRecord(key, vector, record_info, self.path(key))

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

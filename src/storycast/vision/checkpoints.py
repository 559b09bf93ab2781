"""Find feature-extractor checkpoints (Hub id or local folder) and turn 'not there' into an error naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storycast.models.checkpoints import load_checkpoint as shared_load_checkpoint

T = TypeVar("T")


def load_checkpoint(
    load: Callable[[str, bool], T],
    source: str | Path,
    *,
    what: str,
    setting: str,
    local_files_only: bool = False,
) -> T:
    """:func:`storycast.models.checkpoints.load_checkpoint` with the fix phrased as a flag (``--clip-model``)."""
    return shared_load_checkpoint(
        load, source, what=what, point_at=f"pass {setting}", local_files_only=local_files_only
    )


def pil_image_processor_class(name: str) -> Any:
    """The PIL-backend image processor class ``name`` (transformers 5: ``<name>Pil``; 4.x: ``<name>``).

    Pinned to PIL so that a machine with torchvision does not silently switch to torchvision resizing
    (CLIP's PIL path reproduces OpenAI ``clip``'s preprocessing; docs/metrics.md §4).
    """
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def load_pil_image_processor(source: str, local_files_only: bool) -> Any:
    """``AutoImageProcessor.from_pretrained`` pinned to the PIL backend on transformers 4 and 5."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only, **backend)

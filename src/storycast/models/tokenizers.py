"""A model's first (CLIP) tokenizer without loading its weights: what the run planner counts prompt tokens with
(a benchmark's per-frame limits, :mod:`storycast.methods.limits`) before any model loads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from storycast.models.presets import BASE_PRESETS
from storycast.models.spec import ModelSpec

logger = logging.getLogger(__name__)


def first_tokenizer(model: Any) -> Any | None:
    """The first tokenizer (``tokenizer/``, CLIP's, on every family) of loaded models or of a spec: the tiny one
    for the random-weight presets, else read from the preset's repository or the model's folder (a few small files,
    from the local cache when ``local_files_only``). None, with a warning, where it cannot be had."""
    if not isinstance(model, ModelSpec):
        pipeline = getattr(model, "pipeline", None)
        return getattr(pipeline, "tokenizer", None)
    preset = BASE_PRESETS.get(model.source)
    if preset is not None and (preset.tiny or preset.random):
        from storycast.models.tiny import tiny_tokenizer

        return tiny_tokenizer()
    location = preset.repo_id if preset is not None else model.source
    if location is None or Path(location).expanduser().is_file():
        location = model.config  # a single-file checkpoint: its configs' repository or folder
    if location is None:
        logger.warning("no tokenizer for %s before loading it: limits that count tokens are not looked for", model)
        return None
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(
            str(location), subfolder="tokenizer", revision=model.revision, local_files_only=model.local_files_only
        )
    except (OSError, ValueError) as err:
        logger.warning(
            "the tokenizer of %s cannot be read (%s): limits that count tokens are not looked for", location, err
        )
        return None

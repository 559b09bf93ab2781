"""Speed options applied to loaded models, each of which must leave the output as it was (within the dtype's
tolerance; tests hold them to it): the UNet's memory layout, and compilation.

- ``channels_last``: the UNet's convolutions in NHWC memory layout (faster convolution kernels on recent GPUs).
- ``compile``: regional compilation of the UNet's repeated transformer blocks (diffusers'
  ``compile_repeated_blocks``; one block compiled once and reused, so cold starts stay short), falling back to the
  uncompiled UNet, with a warning saying why, where torch cannot compile (no C compiler for the CPU backend, no
  triton for CUDA).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Any

logger = logging.getLogger(__name__)


def compile_unavailable(device: str) -> str | None:
    """Why torch cannot compile for ``device`` here, or None when it can."""
    import torch

    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if str(device).startswith("cuda"):
        return None if importlib.util.find_spec("triton") is not None else "triton is not installed"
    if str(device).startswith("mps"):
        return "torch.compile does not support mps"
    if not any(shutil.which(compiler) for compiler in ("cc", "gcc", "clang", "cl")):
        return "no C compiler was found for the CPU backend"
    return None


def apply_speed_options(pipe: Any, device: str, *, channels_last: bool, compile: bool) -> dict[str, Any]:
    """Apply the options to ``pipe``'s UNet; returns what was applied (for the run manifest)."""
    import torch

    applied: dict[str, Any] = {}
    unet = pipe.unet
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if compile:
        reason = compile_unavailable(device)
        if reason is not None:
            logger.warning("--compile: %s; the UNet runs uncompiled", reason)
            applied["compile"] = f"off ({reason})"
        elif hasattr(unet, "compile_repeated_blocks") and getattr(unet, "_repeated_blocks", None):
            unet.compile_repeated_blocks(fullgraph=False)
            applied["compile"] = "repeated blocks"
        else:
            # Compiling the whole UNet would wrap it, hiding the processors methods install: not done.
            logger.warning("--compile: this UNet declares no repeated blocks to compile; it runs uncompiled")
            applied["compile"] = "off (no repeated blocks)"
    return applied

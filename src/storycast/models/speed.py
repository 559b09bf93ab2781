"""Speed options applied to loaded models, each of which must leave the output as it was (within the dtype's
tolerance; tests hold them to it): the UNet's memory layout, and compilation.

- ``channels_last``: the UNet's convolutions in NHWC memory layout (faster convolution kernels on recent GPUs);
  FLUX's transformer has no convolutions, so there it is left out with a warning.
- ``compile``: regional compilation of the denoiser's repeated transformer blocks (diffusers'
  ``compile_repeated_blocks``: the UNet's transformer blocks; FLUX's ``FluxTransformerBlock`` and
  ``FluxSingleTransformerBlock``, its ``_repeated_blocks``): each block compiled in place (``nn.Module.compile``),
  one graph per block class reused by every block of it, so cold starts stay short, and the model itself is not
  wrapped, so the attention processors methods install after loading stay reachable. Dynamo guards on the
  processor a block's attention calls: installing or removing processors recompiles the blocks that changed, and
  the installed processors run (tests/models/test_speed.py holds FLUX to it). Where torch cannot compile (no C
  compiler for the CPU backend, no triton for CUDA) the denoiser runs uncompiled, with a warning saying why.
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


def apply_speed_options(
    denoiser: Any, device: str, *, channels_last: bool, compile: bool, backend: str = "inductor"
) -> dict[str, Any]:
    """Apply the options to ``denoiser`` (a UNet or FLUX's transformer); returns what was applied (for the run
    manifest). ``backend``: torch.compile's backend ("inductor"; tests may name a lighter one)."""
    import torch

    applied: dict[str, Any] = {}
    convolutional = any(isinstance(module, torch.nn.Conv2d) for module in denoiser.children())
    if channels_last and convolutional:
        denoiser.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    elif channels_last:
        logger.warning("--channels-last: %s has no convolutional stem; left as it is", type(denoiser).__name__)
        applied["channels_last"] = "off (no convolutions)"
    if compile:
        reason = compile_unavailable(device) if backend == "inductor" else None
        if reason is not None:
            logger.warning("--compile: %s; the denoiser runs uncompiled", reason)
            applied["compile"] = f"off ({reason})"
        elif hasattr(denoiser, "compile_repeated_blocks") and getattr(denoiser, "_repeated_blocks", None):
            # fullgraph=False: methods' processors keep Python bookkeeping (banks, step counters) that dynamo
            # runs between graphs instead of refusing.
            denoiser.compile_repeated_blocks(fullgraph=False, backend=backend)
            applied["compile"] = "repeated blocks" if backend == "inductor" else f"repeated blocks ({backend})"
        else:
            # Compiling the whole model would wrap it, hiding the processors methods install: not done.
            logger.warning("--compile: this denoiser declares no repeated blocks to compile; it runs uncompiled")
            applied["compile"] = "off (no repeated blocks)"
    return applied

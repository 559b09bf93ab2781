"""Weight quantization of the denoiser through torchao (the ``quant`` pip extra): what ``ModelSpec.quantize`` does.

Weight-only: each ``nn.Linear`` of the denoiser (FLUX's transformer, the UNet) keeps its weights in int8, float8 or
int4 with per-row (per-group for int4) scales and computes in the model's dtype, so activations, attention
processors and the VAE are untouched. What runs where was decided by trying torchao 0.18 here:

- "int8": ``Int8WeightOnlyConfig``, per-row int8: CPU and CUDA;
- "fp8": ``Float8WeightOnlyConfig``, per-row float8 e4m3: CUDA compute capability 8.9 or newer (torchao's float8
  kernels; older GPUs are refused) and the CPU (weights dequantized in the matmul);
- "int4": ``Int4WeightOnlyConfig`` in groups of 128, tile-packed for torch's int4 CUDA matmul (tinygemm): CUDA
  with bf16 weights only (torchao's CPU int4 needs kernels it does not ship for this torch). Layers whose input
  width is not a multiple of 128 (FLUX's 64-wide patch embedding) stay in ``dtype``.

Every refusal comes before any weights are read (:func:`check_quantize`), as a ``SettingsError`` naming the fix.
"""

from __future__ import annotations

import logging
from typing import Any

from storycast.errors import SettingsError

logger = logging.getLogger(__name__)

INT4_GROUP_SIZE = 128
"""Input channels per int4 scale (torchao's default group size)."""
FP8_MIN_CAPABILITY = (8, 9)
"""CUDA compute capability of torchao's float8 kernels (Ada Lovelace, Hopper and newer)."""
QUANT_EXTRA = "quant"


def check_quantize(mode: str, device: str, dtype: Any, *, capability: tuple[int, int] | None = None) -> None:
    """Refuse a quantization ``device`` cannot run, and a missing torchao, before any weights are loaded.

    Args:
        mode: One of ``QUANTIZE_MODES``.
        device: The resolved device the denoiser runs on.
        dtype: The resolved weight dtype.
        capability: The CUDA device's compute capability (default: asked of torch).

    Raises:
        SettingsError: The mode needs other hardware or another dtype.
        ExtraNotInstalledError: torchao is not installed (an ImportError naming the ``quant`` extra).
    """
    import torch

    if mode == "none":
        return
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise SettingsError(
            f"--quantize {mode} runs on CUDA GPUs and the CPU, not on '{device}'. Fix: drop --quantize, or run with "
            f"--device cuda or cpu."
        )
    if mode == "int4":
        if kind != "cuda":
            raise SettingsError(
                "--quantize int4 needs a CUDA GPU (torchao's int4 matmul is a CUDA kernel). Fix: use --quantize int8 "
                "(or fp8) on a CPU."
            )
        if dtype != torch.bfloat16:
            raise SettingsError(
                "--quantize int4 computes in bf16 only (torchao's tile-packed int4 layout). Fix: add --dtype bf16."
            )
    if mode == "fp8" and kind == "cuda":
        capability = capability or torch.cuda.get_device_capability(device)
        if tuple(capability) < FP8_MIN_CAPABILITY:
            raise SettingsError(
                f"--quantize fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is "
                f"{capability[0]}.{capability[1]}. Fix: use --quantize int8 (or int4)."
            )
    torchao_module()


def torchao_module() -> Any:
    """torchao, or an ImportError that names the pip extra to install."""
    from storycast.utils.imports import require

    return require("torchao", extra=QUANT_EXTRA, purpose="--quantize (weight quantization)")


def quantize_config(mode: str) -> Any:
    """The torchao configuration of ``mode`` ("int8", "fp8" or "int4")."""
    torchao_module()
    from torchao.quantization import Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if mode == "int8":
        return Int8WeightOnlyConfig()
    if mode == "fp8":
        return Float8WeightOnlyConfig()
    if mode == "int4":
        return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
    raise SettingsError(f"quantize '{mode}' is not known. Fix: use int8, fp8 or int4.")


def quantizable(mode: str, module: Any) -> bool:
    """Whether torchao quantizes ``module`` in ``mode``: every ``nn.Linear``; for int4, those whose input width
    is a multiple of the group size."""
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    return mode != "int4" or module.in_features % INT4_GROUP_SIZE == 0


def quantize_denoiser(denoiser: Any, mode: str, device: str) -> dict[str, Any]:
    """Quantize ``denoiser``'s linear layers in place, each moved to ``device`` first (so the full-precision model
    never sits on the GPU whole); returns what was done, for the run manifest.

    Call :func:`check_quantize` first: this assumes the mode runs on ``device``.
    """
    import torch

    config = quantize_config(mode)
    from torchao.quantization import quantize_

    linears = [m for m in denoiser.modules() if isinstance(m, torch.nn.Linear)]
    chosen = sum(quantizable(mode, m) for m in linears)
    quantize_(denoiser, config, filter_fn=lambda module, _name: quantizable(mode, module), device=device)
    logger.info("quantized %d of %d linear layers of the denoiser to %s", chosen, len(linears), mode)
    return {"mode": mode, "layers": chosen, "of": len(linears), "library": f"torchao {_version()}"}


def _version() -> str:
    from importlib.metadata import version

    return version("torchao")

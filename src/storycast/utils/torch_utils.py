"""Device, dtype and random-generator helpers. Nothing here leaves global RNG state changed (:func:`seeded`
restores it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from storycast.errors import SettingsError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu. Explicit names ('cuda:1') are checked for availability."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = name.split(":")[0]
    if kind not in DEVICE_NAMES:
        raise SettingsError(f"device '{name}' is not known. Fix: use one of auto, cpu, cuda, cuda:N, mps.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device '{name}' was asked for but CUDA is not available. Fix: use --device cpu.")
    if kind == "cuda" and ":" in name:
        index, count = name.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise SettingsError(
                f"device '{name}' does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}. "
                f"Fix: pick one of them."
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device '{name}' was asked for but MPS is not available. Fix: use --device cpu.")
    return name


def resolve_dtype(name: str, device: str, *, auto: str = "fp16") -> torch.dtype:
    """'auto' is ``auto`` on CUDA (fp16 for the UNet families, what the papers run; bf16 for FLUX, whose T5 and
    transformer overflow in fp16) and fp32 elsewhere; the others are explicit."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return table[auto] if device.startswith("cuda") else torch.float32
    if name not in table:
        raise SettingsError(f"dtype '{name}' is not known. Fix: use one of {', '.join(DTYPE_NAMES)}.")
    return table[name]


def dtype_name(dtype: torch.dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def make_generator(seed: int, device: str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed``. Noise is drawn on the CPU for MPS, whose generators are unreliable,
    so that a seed gives the same image on CPU and MPS (CUDA noise differs; diffusers does the same)."""
    import torch

    generator_device = "cpu" if device.startswith("mps") else device
    return torch.Generator(device=generator_device).manual_seed(int(seed))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG inside the block (random-weight models are built from it) and restore the caller's RNG
    state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

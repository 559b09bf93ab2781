"""Optional dependencies: check for them without importing, and fail with the pip extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from storycast.errors import ExtraNotInstalledError

# Which pip extra brings which importable module.
EXTRA_OF_MODULE = {
    "peft": "lora",
    "scipy": "masks",
    "onnxruntime": "faces",
    "accelerate": "train",
    "datasets": "data",
    "av": "data",
    "gradio": "ui",
}


def is_available(module: str) -> bool:
    """True when ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import an optional module or raise :class:`ExtraNotInstalledError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or EXTRA_OF_MODULE.get(module, module)
        why = f" for {purpose}" if purpose else ""
        raise ExtraNotInstalledError(
            f"'{module}' is needed{why} but is not installed. Install it with: pip install 'storycast[{extra}]'"
        ) from err

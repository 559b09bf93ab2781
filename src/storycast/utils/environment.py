"""What this machine runs: versions, devices and installed extras (for ``storycast env`` and manifests)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from storycast.utils.imports import EXTRA_OF_MODULE, is_available

CORE_PACKAGES = (
    "storycast",
    "torch",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "pillow",
)
OPTIONAL_PACKAGES = ("peft", "accelerate", "datasets", "av", "scipy", "onnxruntime", "gradio")


def default_cache_dir() -> Path:
    """storycast's cache (identities, features, downloads): ``$STORYCAST_CACHE``, else
    ``$XDG_CACHE_HOME/storycast``, else ``~/.cache/storycast``."""
    root = (
        os.environ.get("STORYCAST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "storycast"
    )
    return Path(root)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = CORE_PACKAGES + OPTIONAL_PACKAGES) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def devices() -> list[dict[str, Any]]:
    """The accelerators torch sees (CPU always listed)."""
    import torch

    found: list[dict[str, Any]] = [{"device": "cpu", "name": platform.processor() or platform.machine()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(
                {
                    "device": f"cuda:{index}",
                    "name": props.name,
                    "memory_gb": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append({"device": "mps", "name": "Apple Metal"})
    return found


def extras_status() -> dict[str, bool]:
    """Which optional modules import, keyed as '<module> [extra]'."""
    return {f"{module} [{extra}]": is_available(module) for module, extra in EXTRA_OF_MODULE.items()}


def environment_summary() -> dict[str, Any]:
    """A JSON-able snapshot for run manifests."""
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {k: v for k, v in package_versions().items() if v is not None},
        "cuda": torch.version.cuda,
        "devices": devices(),
    }

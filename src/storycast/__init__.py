"""storycast: turn a written story into illustrations whose characters stay the same.

The package root is kept light: importing it loads no torch, diffusers or model code. The public
names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storycast.version import __version__

_LAZY = {
    "Story": "storycast.story.model",
    "Character": "storycast.story.model",
    "Frame": "storycast.story.model",
    "GenerationSettings": "storycast.story.model",
    "load_story": "storycast.story.parse",
    "ModelSpec": "storycast.models.spec",
    "load_models": "storycast.models.loading",
    "models_from_pipeline": "storycast.models.loading",
    "get_method": "storycast.methods.registry",
    "list_methods": "storycast.methods.registry",
    "generate_story": "storycast.runs.runner",
    "RunOptions": "storycast.runs.runner",
    "plan_run": "storycast.runs.plan",
    "RunPlan": "storycast.runs.plan",
    "draw": "storycast.runs.draw",
    "DrawResult": "storycast.runs.draw",
    "export_run": "storycast.export.api",
    "ExportSettings": "storycast.export.settings",
}

__all__ = [
    "Character",
    "DrawResult",
    "ExportSettings",
    "Frame",
    "GenerationSettings",
    "ModelSpec",
    "RunOptions",
    "RunPlan",
    "Story",
    "__version__",
    "draw",
    "export_run",
    "generate_story",
    "get_method",
    "list_methods",
    "load_models",
    "load_story",
    "models_from_pipeline",
    "plan_run",
]

if TYPE_CHECKING:
    from storycast.export.api import export_run
    from storycast.export.settings import ExportSettings
    from storycast.methods.registry import get_method, list_methods
    from storycast.models.loading import load_models, models_from_pipeline
    from storycast.models.spec import ModelSpec
    from storycast.runs.draw import DrawResult, draw
    from storycast.runs.plan import RunPlan, plan_run
    from storycast.runs.runner import RunOptions, generate_story
    from storycast.story.model import Character, Frame, GenerationSettings, Story
    from storycast.story.parse import load_story


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'storycast' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

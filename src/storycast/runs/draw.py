"""Draw a story in memory: the frames as PIL images with their records, and no run folder written.

The same planner (:func:`~storycast.runs.plan.plan_run`) and the same group loop
(:func:`~storycast.runs.runner.draw_groups`) as :func:`~storycast.runs.runner.generate_story`, so a frame
drawn here has the pixels, seed and record a run folder would hold.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.methods.base import FrameResult, ProgressCallback, RunContext, StoryMethod, no_progress
from storycast.models.loading import LoadedModels, load_models
from storycast.models.spec import ModelSpec
from storycast.runs.plan import RunPlan, plan_run
from storycast.runs.runner import draw_groups, frame_record
from storycast.story.model import Story
from storycast.utils.environment import default_cache_dir

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class DrawResult:
    """What :func:`draw` produced.

    Attributes:
        frames: The frames in story order: image, seed, the method's metadata and side images.
        records: Per frame, what a run's manifest records of it (prompt, negative prompt, characters, seed,
            group, key, seconds, metadata), in story order.
        plan: The plan that was drawn: the story with resolved settings, the method's settings, groups, keys.
        loaded_models: The models drawn with (loaded here when a spec was given: pass them to the next call).
        timings: Seconds spent loading (``load_s``), preparing (``prepare_s``) and drawing (``generate_s``).
    """

    frames: list[FrameResult]
    records: list[dict[str, Any]]
    plan: RunPlan
    loaded_models: LoadedModels
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> list[Image.Image]:
        """The frames' images in story order."""
        return [frame.image for frame in self.frames]

    def storyboard(self, columns: int | None = None) -> Image.Image:
        """The storyboard sheet of these frames (the one a run folder holds as ``storyboard.png``)."""
        from storycast.runs.storyboard import render_storyboard

        story = self.plan.story
        captions = [story.caption(i) for i in range(len(story))]
        images = [image.convert("RGB") for image in self.images]
        return render_storyboard(images, captions, title=story.title, columns=columns)


def _as_story(story: Story | str | Path | Mapping[str, Any]) -> Story:
    if isinstance(story, Story):
        return story
    if isinstance(story, (str, Path)):
        from storycast.story.parse import load_story

        return load_story(story)
    if isinstance(story, Mapping):
        from storycast.story.parse import parse_story

        return parse_story(story)
    raise TypeError(f"story must be a Story, a story file's path or a story dict, not a {type(story).__name__}")


def draw(
    story: Story | str | Path | Mapping[str, Any],
    method: str | StoryMethod,
    models: LoadedModels | ModelSpec,
    *,
    method_settings: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
    progress: ProgressCallback = no_progress,
    cache_dir: str | Path | None = None,
) -> DrawResult:
    """Draw every frame of ``story`` with ``method`` and return them in memory; no file is written.

    Args:
        story: A parsed story, a story file's path, or a story document (a dict, as read from a file; relative
            paths in it are resolved against the current folder).
        method: A method name or an instantiated method.
        models: Loaded models (:func:`~storycast.models.loading.load_models`, or
            :func:`~storycast.models.loading.models_from_pipeline` for a pipeline you have), or a spec to load.
        method_settings: Overrides of the method's settings (on top of the story's ``methods``).
        generation: Overrides of the generation settings (width, height, steps, guidance_scale, seed...).
        progress: Receives ``frames`` events per drawn frame and the method's own events.
        cache_dir: storycast's cache (identity library...); default ``$STORYCAST_CACHE`` or ~/.cache/storycast.

    Raises:
        TypeError: ``models`` is a diffusers pipeline (wrap it once with ``models_from_pipeline``).
        UnknownMethodError, SettingsError, StoryError, StorycastError: bad input, naming it and the fix.
    """
    if not isinstance(models, (LoadedModels, ModelSpec)):
        raise TypeError(
            f"models must be LoadedModels or a ModelSpec, not a {type(models).__name__}. Fix: wrap a diffusers "
            f"pipeline once with storycast.models_from_pipeline(pipe) and pass the result to every call."
        )
    plan = plan_run(
        _as_story(story),
        method,
        model=models,
        method_settings=method_settings,
        generation=generation,
        settings_origin="method_settings",
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    loaded = models if isinstance(models, LoadedModels) else load_models(models)
    if isinstance(models, ModelSpec):
        timings["load_s"] = round(time.perf_counter() - started, 3)
    context = RunContext(progress=progress, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    instance = method if isinstance(method, StoryMethod) else None
    frames: dict[int, FrameResult] = {}
    records: dict[int, dict[str, Any]] = {}
    for planned, results, seconds in draw_groups(plan, instance, loaded, context, timings=timings):
        for result in results:
            frames[result.index] = result
            records[result.index] = frame_record(plan.story, result, planned.key, planned.frames, seconds)
    order = sorted(frames)
    return DrawResult(
        frames=[frames[i] for i in order],
        records=[records[i] for i in order],
        plan=plan,
        loaded_models=loaded,
        timings=timings,
    )

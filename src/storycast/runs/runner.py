"""Draw a story into a run folder: frames, storyboard sheet and manifest, resumable.

Layout of a run folder::

    DIR/manifest.json       what was drawn, how, with which seeds, models and versions
    DIR/story.yaml          the story as drawn (our format)
    DIR/frames/frame_000.png
    DIR/storyboard.png      the frames in a grid with captions

Every file is written atomically. The manifest is rewritten after each group of frames, so a run
stopped at any point (Ctrl-C, kill, power cut) resumes where it stopped: frames whose inputs are
unchanged are kept, the rest are drawn.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast.methods.base import FrameResult, ProgressCallback, ProgressEvent, RunContext, StoryMethod, no_progress
from storycast.methods.limits import limits_by_frame
from storycast.models.loading import LoadedModels, load_models
from storycast.models.spec import ModelSpec
from storycast.runs.folder import (
    FRAMES_DIR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    STORY_NAME,
    STORYBOARD_NAME,
    WORKERS_DIR,
    RunFolder,
    frame_file,
)
from storycast.runs.plan import PlannedGroup, RunPlan, plan_run
from storycast.runs.shards import Share
from storycast.story.model import Story
from storycast.story.parse import story_to_dict
from storycast.utils.environment import default_cache_dir
from storycast.utils.io import atomic_save_image, atomic_write_json, atomic_write_text, sha256_file
from storycast.version import __version__

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run writes its output.

    Attributes:
        out_dir: The run folder.
        overwrite: Redraw every frame, and replace a run of other settings in ``out_dir``.
        storyboard: Write the storyboard sheet.
        columns: Frames per storyboard row (default: about square).
        cache_dir: storycast's cache (identity library...); default ``$STORYCAST_CACHE`` or ~/.cache/storycast.
        command: The command line, recorded in the manifest.
    """

    out_dir: Path
    overwrite: bool = False
    storyboard: bool = True
    columns: int | None = None
    cache_dir: Path | None = None
    command: str | None = None


@dataclass
class RunResult:
    """What a run produced. ``drawn`` were drawn now, ``kept`` were already in the folder."""

    out_dir: Path
    manifest_path: Path
    storyboard_path: Path | None
    frame_paths: list[Path]
    drawn: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    loaded_models: LoadedModels | None = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def generate_story(
    story: Story,
    method: str | StoryMethod,
    models: LoadedModels | ModelSpec,
    options: RunOptions,
    *,
    method_settings: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
    progress: ProgressCallback = no_progress,
    settings_origin: str = "--set",
) -> RunResult:
    """Draw ``story`` with ``method`` into ``options.out_dir``, skipping frames already drawn.

    Everything is planned and checked first (:func:`storycast.runs.plan.plan_run`); models given as a spec are
    loaded only when some frame needs drawing.

    Args:
        story: The parsed story.
        method: A method name or an instantiated method.
        models: Loaded models, or a spec to load them from.
        options: Output folder and behaviour.
        method_settings: Overrides of the method's settings (on top of the story file's ``methods``).
        generation: Overrides of the generation settings (width, height, steps, guidance_scale, seed...).
        progress: Receives ``frames`` events per drawn frame and the method's own events.
        settings_origin: Where ``method_settings`` come from, for messages ("--set" on the command line).
    """
    plan = plan_run(
        story,
        method,
        model=models,
        method_settings=method_settings,
        generation=generation,
        out_dir=options.out_dir,
        overwrite=options.overwrite,
        settings_origin=settings_origin,
    )
    plan.check_folder(options.overwrite)
    return execute_plan(plan, method if isinstance(method, StoryMethod) else None, models, options, progress=progress)


def execute_plan(
    plan: RunPlan,
    method: StoryMethod | None,
    models: LoadedModels | ModelSpec,
    options: RunOptions,
    *,
    progress: ProgressCallback = no_progress,
    share: Share | None = None,
) -> RunResult:
    """Draw what ``plan`` says is left (loading ``models`` first when they are a spec and something is left),
    then write the storyboard and the manifest.

    With a ``share`` of several processes (one story split over them, :func:`split_groups`), this process draws
    its share of the groups left and records its frames in the folder's workers file; the main process then
    plans again and runs this without a share, which writes every record into the manifest.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    story = plan.story
    split = share is not None and share.processes > 1
    todo = split_groups(plan.todo, share) if split else plan.todo
    out_dir = Path(options.out_dir)
    loaded = models if isinstance(models, LoadedModels) else None
    if todo and isinstance(models, ModelSpec):
        logger.info("loading %s", models.source)
        loaded = load_models(models)
        timings["load_s"] = round(time.perf_counter() - started, 3)
    folder = RunFolder(out_dir)
    previous = folder.previous or {}
    records: list[dict[str, Any] | None] = [plan.previous.get(i) for i in range(len(story))]
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "storycast_version": __version__,
        "status": "running",
        "created": previous.get("created", _now()) if not options.overwrite else _now(),
        "updated": _now(),
        "command": options.command,
        "story": {
            "title": story.title,
            "source": str(story.source) if story.source else None,
            "source_sha256": sha256_file(story.source) if story.source and story.source.is_file() else None,
            "source_format": story.source_format,
            "frames": len(story),
        },
        "method": {"name": plan.method.name, "settings": plan.settings.to_dict()},
        "generation": dataclasses.asdict(plan.generation),
        "model": loaded.info if loaded is not None else previous.get("model", dict(plan.model.identity)),
        "run_key": plan.run_key,
        "run_summary": plan.summary,
        "groups": [
            {"frames": list(g.frames), "role": g.group.role, "depends_on": list(g.group.depends_on), "key": g.key}
            for g in plan.groups
        ],
        "environment": _environment(),
        "timings": timings,
        "frames": records,
        "storyboard": None,
    }
    if plan.limits:  # a benchmark run's fallbacks and notes, per frame (storycast.methods.limits)
        manifest["limits"] = limits_by_frame(plan.limits)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = share is None or share.main
    if not split:
        _remove_stale_parts(out_dir)  # never while other processes write into the folder
    if main:
        atomic_write_text(out_dir / STORY_NAME, _story_yaml(story))
        atomic_write_json(folder.manifest_path, manifest)
    if split:
        assert share is not None
        return _draw_share(plan, method, loaded, todo, share, options, progress, started)

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    context = RunContext(progress=progress, run_dir=out_dir, cache_dir=cache_dir, overwrite=options.overwrite)
    drawn: list[int] = []
    try:
        if not todo:
            logger.info("all %d frames are already drawn in %s", len(story), out_dir)
        written = time.perf_counter()
        for planned, results, seconds in draw_groups(plan, method, loaded, context, timings=timings):
            for result in results:
                records[result.index] = _save_frame(out_dir, story, result, planned.key, planned.frames, seconds)
                drawn.append(result.index)
            manifest["frames"] = records
            # After every group for ordinary stories; for long ones at most every few seconds, so that the
            # manifest (which grows with the story) is not rewritten thousands of times. A killed run then
            # redraws at most those seconds of frames, to the same pixels.
            if len(story) <= MANIFEST_EVERY_GROUP_UP_TO or time.perf_counter() - written >= MANIFEST_INTERVAL_S:
                manifest["updated"] = _now()
                atomic_write_json(folder.manifest_path, manifest)
                written = time.perf_counter()
        storyboard_path = None
        if options.storyboard:
            storyboard_path = write_storyboard(out_dir, story, records, columns=options.columns)
            manifest["storyboard"] = STORYBOARD_NAME
    except BaseException:
        # Stopped while drawing or while the storyboard was written: the manifest says so (the frames are kept).
        manifest["status"] = "interrupted"
        manifest["updated"] = _now()
        atomic_write_json(folder.manifest_path, manifest)
        raise
    timings["total_s"] = round(time.perf_counter() - started, 3)
    manifest.update(status="complete", updated=_now(), timings=timings)
    atomic_write_json(folder.manifest_path, manifest)
    shutil.rmtree(out_dir / WORKERS_DIR, ignore_errors=True)  # the processes' records are in the manifest now
    return RunResult(
        out_dir=out_dir,
        manifest_path=folder.manifest_path,
        storyboard_path=storyboard_path,
        frame_paths=[out_dir / r["file"] for r in records if r],
        drawn=sorted(drawn),
        kept=sorted(set(range(len(story))) - set(drawn)),
        loaded_models=loaded,
    )


def split_groups(groups: list[PlannedGroup], share: Share) -> list[PlannedGroup]:
    """This process's share of a story's groups (round-robin over the processes of its job)."""
    return [g for number, g in enumerate(groups) if number % share.processes == share.process]


def independent_groups(plan: RunPlan) -> bool:
    """Whether the groups left can be drawn by different processes: none reads another's output."""
    return not any(planned.group.depends_on for planned in plan.groups)


def _draw_share(
    plan: RunPlan,
    method: StoryMethod | None,
    models: LoadedModels | None,
    todo: list[PlannedGroup],
    share: Share,
    options: RunOptions,
    progress: ProgressCallback,
    started: float,
) -> RunResult:
    """Draw this process's share of the groups, keeping its frames' records in ``.workers/<process>.json``
    (written after every group, so that a rerun after a crash keeps them)."""
    out_dir = Path(options.out_dir)
    workers = out_dir / WORKERS_DIR / f"process-{share.process}.json"
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    context = RunContext(progress=progress, run_dir=out_dir, cache_dir=cache_dir, overwrite=options.overwrite)
    records: list[dict[str, Any]] = []
    for planned, results, seconds in draw_groups(plan, method, models, context, groups=todo):
        for result in results:
            records.append(_save_frame(out_dir, plan.story, result, planned.key, planned.frames, seconds))
        atomic_write_json(workers, {"run_key": plan.run_key, "process": share.process, "frames": records})
    return RunResult(
        out_dir=out_dir,
        manifest_path=out_dir / MANIFEST_NAME,
        storyboard_path=None,
        frame_paths=[out_dir / r["file"] for r in records],
        drawn=sorted(r["index"] for r in records),
        loaded_models=models,
    )


def draw_groups(
    plan: RunPlan,
    method: StoryMethod | None,
    models: LoadedModels | None,
    context: RunContext,
    *,
    timings: dict[str, float] | None = None,
    groups: list[PlannedGroup] | None = None,
) -> Iterator[tuple[PlannedGroup, list[FrameResult], float]]:
    """Draw the groups ``plan`` has left to draw, in order: the loop that run folders and :func:`storycast.draw`
    share.

    ``method`` (default: the plan's method on ``models`` with the plan's settings) is prepared once, then each
    group is drawn without gradients and yielded with its frames (checked against the group) and the seconds
    per frame. A group's ``frames`` progress event goes out once the caller has taken the group, so a callback
    that stops the run after N frames finds those N frames kept. ``timings`` receives ``prepare_s`` and
    ``generate_s``. ``groups``: a subset of the groups left (this process's share), default all of them.
    """
    import torch

    todo = plan.todo if groups is None else groups
    if not todo:
        return
    if method is None and models is None:
        raise ValueError("draw_groups needs loaded models or a method instance when there are groups to draw")
    timings = timings if timings is not None else {}
    total = sum(len(g.frames) for g in todo)
    logger.info("drawing %d of %d frames with %s", total, len(plan.story), plan.method.name)
    t0 = time.perf_counter()
    # Drawing never needs gradients; without this a method's own loop would keep every step's graph.
    with torch.no_grad():
        if method is None:
            method = plan.method(models, plan.settings)
        method.prepare(plan.story, context)
    timings["prepare_s"] = round(time.perf_counter() - t0, 3)
    context.progress(ProgressEvent("frames", 0, total, "frames"))
    t0 = time.perf_counter()
    done = 0
    numbers = {planned.key: number for number, planned in enumerate(plan.groups)}
    in_memory: set[int] = set()  # groups generated (or restored) by this method object in this run
    for planned in todo:
        group_started = time.perf_counter()
        with torch.no_grad():
            for needed in _dependencies(plan, numbers[planned.key]):
                if needed not in in_memory:
                    # Drawn in an earlier run: what it left in memory (a bank, anchors) is rebuilt, once.
                    method.restore(plan.story, plan.groups[needed].group, context)
                    in_memory.add(needed)
            results = method.generate(plan.story, planned.frames, context)
        in_memory.add(numbers[planned.key])
        seconds = (time.perf_counter() - group_started) / max(1, len(results))
        _check_results(plan.method.name, planned.frames, results)
        yield planned, results, seconds
        done += len(results)
        context.progress(ProgressEvent("frames", done, total, "frames"))
    timings["generate_s"] = round(time.perf_counter() - t0, 3)


def _dependencies(plan: RunPlan, number: int) -> list[int]:
    """The groups group ``number`` reads, directly or through others, earliest first (a dependency before what
    reads it)."""
    found: set[int] = set()
    pending = list(plan.groups[number].group.depends_on)
    while pending:
        group = pending.pop()
        if group not in found:
            found.add(group)
            pending.extend(plan.groups[group].group.depends_on)
    return sorted(found)


def _check_results(name: str, group: tuple[int, ...], results: list[FrameResult]) -> None:
    if [r.index for r in results] != list(group):
        raise RuntimeError(f"method '{name}' returned frames {[r.index for r in results]} for group {list(group)}")


def _save_frame(
    out_dir: Path, story: Story, result: FrameResult, key: str, group: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    name = frame_file(result.index)
    atomic_save_image(out_dir / name, result.image)
    extras = {}
    for extra_name, image in result.extras.items():
        extra_file = name.replace(".png", f"_{extra_name}.png")
        atomic_save_image(out_dir / extra_file, image)
        extras[extra_name] = extra_file
    return {"file": name, **frame_record(story, result, key, group, seconds), "extras": extras}


def frame_record(
    story: Story, result: FrameResult, key: str, group: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    """What a manifest records of a drawn frame, besides its files: inputs, seed, group, key, time, metadata."""
    return {
        "index": result.index,
        "key": key,
        "group": list(group),
        "seed": result.seed,
        "prompt": story.prompt(result.index),
        "negative_prompt": story.negative_prompt(result.index),
        "characters": list(story.frames[result.index].characters),
        "seconds": round(seconds, 3),
        "metadata": result.metadata,
        "drawn": _now(),
    }


def write_storyboard(
    out_dir: Path, story: Story, records: list[dict[str, Any] | None], columns: int | None = None
) -> Path:
    """Render the storyboard sheet from the frames on disk."""
    from PIL import Image

    from storycast.runs.storyboard import render_storyboard

    images = []
    for record in records:
        if record is None:
            images.append(None)
            continue
        with Image.open(out_dir / record["file"]) as image:
            images.append(image.convert("RGB"))
    sheet = render_storyboard(
        images, [story.caption(i) for i in range(len(story))], title=story.title, columns=columns
    )
    return atomic_save_image(out_dir / STORYBOARD_NAME, sheet)


MANIFEST_EVERY_GROUP_UP_TO = 200
"""Stories up to this many frames rewrite their manifest after every group."""
MANIFEST_INTERVAL_S = 5.0
"""Longer stories rewrite it at most this often (and when the run ends or stops)."""


def _remove_stale_parts(out_dir: Path) -> None:
    """Temporary files of atomic writes a killed run left behind (``.<name>.<random>.part``): no run writes them
    in this folder now, so they are removed."""
    for folder in (out_dir, out_dir / FRAMES_DIR):
        for stale in folder.glob(".*.part") if folder.is_dir() else ():
            stale.unlink(missing_ok=True)


def _story_yaml(story: Story) -> str:
    import yaml

    # Absolute paths: the copy lives in the run folder, not beside the original story file.
    data = story_to_dict(story)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _environment() -> dict[str, Any]:
    from storycast.utils.environment import environment_summary

    return environment_summary()

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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast import __version__
from storycast.errors import RunFolderError, SettingsError
from storycast.methods.base import FrameResult, ProgressCallback, ProgressEvent, RunContext, StoryMethod, no_progress
from storycast.methods.registry import get_method
from storycast.models.loading import LoadedModels, load_models
from storycast.models.spec import ModelSpec
from storycast.story.model import GenerationSettings, Story
from storycast.story.parse import story_to_dict
from storycast.utils.io import atomic_save_image, atomic_write_json, atomic_write_text, sha256_file, sha256_json

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
STORY_NAME = "story.yaml"
STORYBOARD_NAME = "storyboard.png"
FRAMES_DIR = "frames"
MANIFEST_FORMAT = 1


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


def default_cache_dir() -> Path:
    import os

    root = (
        os.environ.get("STORYCAST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "storycast"
    )
    return Path(root)


GENERATION_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def resolve_generation(
    story: Story, models: LoadedModels, method: StoryMethod, overrides: Mapping[str, Any] | None = None
) -> GenerationSettings:
    """Fill every generation setting: model defaults < method defaults < story file < ``overrides``."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(GENERATION_FIELDS)
    if unknown:
        raise SettingsError(
            f"unknown generation setting(s): {', '.join(sorted(unknown))}. Fix: use {', '.join(GENERATION_FIELDS)}."
        )
    values: dict[str, Any] = dataclasses.asdict(models.defaults)
    values["negative_prompt"] = method.default_negative_prompt()
    values.update(method.generation_defaults())
    story_values = dataclasses.asdict(story.settings)
    explicit = {k: v for k, v in story_values.items() if v is not None and v != getattr(GenerationSettings(), k)}
    values.update(explicit)
    values.update(overrides)
    for key in ("seed", "batch_size"):
        values.setdefault(key, story_values[key])
    resolved = GenerationSettings(**{k: values.get(k) for k in GENERATION_FIELDS})
    for key in ("width", "height"):
        if resolved.__dict__[key] % 8:
            raise SettingsError(f"{key} {resolved.__dict__[key]} is not a multiple of 8. Fix: use e.g. 512 or 1024.")
    if resolved.steps < 1 or resolved.batch_size < 1:
        raise SettingsError("steps and batch_size must be at least 1.")
    return resolved


def _character_record(story: Story, character_id: str) -> dict[str, Any]:
    character = story.character(character_id)
    return {
        "id": character.id,
        "description": character.description,
        "class_word": character.class_word,
        "references": [sha256_file(p) for p in character.references],
    }


def frame_inputs(story: Story, index: int) -> dict[str, Any]:
    """Everything about frame ``index`` that its image depends on, besides run-wide settings."""
    frame = story.frames[index]
    return {
        "prompt": story.prompt(index),
        "negative_prompt": story.negative_prompt(index),
        "seed": story.frame_seed(index),
        "characters": [_character_record(story, cid) for cid in frame.characters],
        "masks": {cid: sha256_file(path) for cid, path in frame.masks.items()},
        "control_image": sha256_file(frame.control_image) if frame.control_image else None,
    }


def group_key(story: Story, group: tuple[int, ...]) -> str:
    """Hash of a group's inputs: a frame is redrawn when anything its group was drawn from changes."""
    return sha256_json({"group": list(group), "frames": [frame_inputs(story, i) for i in group]})


def frame_file(index: int) -> str:
    return f"{FRAMES_DIR}/frame_{index:03d}.png"


class RunFolder:
    """The manifest of one run folder and the decision of what is already done."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.manifest_path = self.out_dir / MANIFEST_NAME
        self.previous: dict[str, Any] | None = None
        if self.manifest_path.is_file():
            import json

            try:
                self.previous = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except ValueError:
                logger.warning("%s is unreadable; frames will be redrawn", self.manifest_path)

    def check_compatible(self, run_key: str, summary: Mapping[str, Any], overwrite: bool) -> None:
        """Refuse to mix two different runs in one folder unless ``overwrite`` is set."""
        if self.previous is None or overwrite:
            return
        if self.previous.get("run_key") == run_key:
            return
        old = self.previous.get("run_summary", {})
        changed = sorted(k for k in set(old) | set(summary) if old.get(k) != summary.get(k)) or ["settings"]
        raise RunFolderError(
            f"'{self.out_dir}' holds a run drawn with different {', '.join(changed)}. Fix: pass --overwrite to "
            f"replace it, or choose another --out folder (nothing was changed)."
        )

    def finished_record(self, index: int, key: str) -> dict[str, Any] | None:
        """The previous record of frame ``index`` if it was drawn from the same inputs and its file exists."""
        if self.previous is None:
            return None
        frames = self.previous.get("frames") or []
        record = frames[index] if index < len(frames) else None
        if not record or record.get("key") != key:
            return None
        if not (self.out_dir / record.get("file", "")).is_file():
            return None
        return record


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
) -> RunResult:
    """Draw ``story`` with ``method`` into ``options.out_dir``, skipping frames already drawn.

    Args:
        story: The parsed story.
        method: A method name or an instantiated method.
        models: Loaded models, or a spec to load them from.
        options: Output folder and behaviour.
        method_settings: Overrides of the method's settings (on top of the story file's ``methods``).
        generation: Overrides of the generation settings (width, height, steps, guidance_scale, seed...).
        progress: Receives ``frames`` events per drawn frame and the method's own events.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if isinstance(models, ModelSpec):
        models = load_models(models)
        timings["load_s"] = round(time.perf_counter() - started, 3)
    if isinstance(method, str):
        method_class = get_method(method)
        file_settings = dict(story.methods.get(method, {}))
        file_settings.update(method_settings or {})
        where = f"{story.source}: methods.{method}" if story.source else f"methods.{method}"
        settings = method_class.settings_class.from_mapping(file_settings, where=where)
        method = method_class(models, settings)
    elif method_settings:
        raise SettingsError("method_settings apply to a method given by name; configure the method object instead.")

    resolved = resolve_generation(story, models, method, generation)
    story = dataclasses.replace(story, settings=resolved)

    out_dir = Path(options.out_dir)
    folder = RunFolder(out_dir)
    summary = {
        "method": method.name,
        "method settings": method.settings.to_dict(),
        "model": {
            k: models.info.get(k)
            for k in ("source", "repo_id", "revision", "path", "family", "dtype", "seed", "loras")
        },
        "generation settings": {
            k: v for k, v in dataclasses.asdict(resolved).items() if k not in ("seed", "batch_size")
        },
    }
    run_key = sha256_json(summary)
    folder.check_compatible(run_key, summary, options.overwrite)

    groups = method.plan(story)
    covered = sorted(i for group in groups for i in group)
    if covered != list(range(len(story))):
        raise RuntimeError(f"method '{method.name}' planned frames {covered} for a story of {len(story)} frames")
    keys = {group: group_key(story, group) for group in groups}
    records: list[dict[str, Any] | None] = [None] * len(story)
    todo: list[tuple[int, ...]] = []
    for group in groups:
        previous = [None if options.overwrite else folder.finished_record(i, keys[group]) for i in group]
        if all(previous):
            for i, record in zip(group, previous, strict=True):
                records[i] = record
        else:
            todo.append(group)

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "storycast_version": __version__,
        "status": "running",
        "created": (folder.previous or {}).get("created", _now()) if not options.overwrite else _now(),
        "updated": _now(),
        "command": options.command,
        "story": {
            "title": story.title,
            "source": str(story.source) if story.source else None,
            "source_sha256": sha256_file(story.source) if story.source and story.source.is_file() else None,
            "source_format": story.source_format,
            "frames": len(story),
        },
        "method": {"name": method.name, "settings": method.settings.to_dict()},
        "generation": dataclasses.asdict(resolved),
        "model": models.info,
        "run_key": run_key,
        "run_summary": summary,
        "environment": _environment(),
        "timings": timings,
        "frames": records,
        "storyboard": None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / STORY_NAME, _story_yaml(story))
    atomic_write_json(folder.manifest_path, manifest)

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    context = RunContext(progress=progress, run_dir=out_dir, cache_dir=cache_dir)
    drawn: list[int] = []
    todo_frames = sum(len(g) for g in todo)
    import torch

    # Drawing never needs gradients; without this a method's own loop would keep every step's graph.
    with torch.no_grad():
        try:
            if todo:
                logger.info("drawing %d of %d frames with %s", todo_frames, len(story), method.name)
                t0 = time.perf_counter()
                method.prepare(story, context)
                timings["prepare_s"] = round(time.perf_counter() - t0, 3)
                progress(ProgressEvent("frames", 0, todo_frames, "frames"))
                t0 = time.perf_counter()
                for group in todo:
                    group_started = time.perf_counter()
                    results = method.generate(story, group, context)
                    seconds = (time.perf_counter() - group_started) / max(1, len(results))
                    _check_results(method.name, group, results)
                    for result in results:
                        records[result.index] = _save_frame(out_dir, story, result, keys[group], group, seconds)
                        drawn.append(result.index)
                    manifest["frames"] = records
                    manifest["updated"] = _now()
                    atomic_write_json(folder.manifest_path, manifest)
                    progress(ProgressEvent("frames", len(drawn), todo_frames, "frames"))
                timings["generate_s"] = round(time.perf_counter() - t0, 3)
            else:
                logger.info("all %d frames are already drawn in %s", len(story), out_dir)
        except BaseException:
            manifest["status"] = "interrupted"
            manifest["updated"] = _now()
            atomic_write_json(folder.manifest_path, manifest)
            raise

    storyboard_path = None
    if options.storyboard:
        storyboard_path = write_storyboard(out_dir, story, records, columns=options.columns)
        manifest["storyboard"] = STORYBOARD_NAME
    timings["total_s"] = round(time.perf_counter() - started, 3)
    manifest.update(status="complete", updated=_now(), timings=timings)
    atomic_write_json(folder.manifest_path, manifest)
    return RunResult(
        out_dir=out_dir,
        manifest_path=folder.manifest_path,
        storyboard_path=storyboard_path,
        frame_paths=[out_dir / r["file"] for r in records if r],
        drawn=sorted(drawn),
        kept=sorted(set(range(len(story))) - set(drawn)),
    )


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
    return {
        "index": result.index,
        "file": name,
        "key": key,
        "group": list(group),
        "seed": result.seed,
        "prompt": story.prompt(result.index),
        "negative_prompt": story.negative_prompt(result.index),
        "characters": list(story.frames[result.index].characters),
        "seconds": round(seconds, 3),
        "metadata": result.metadata,
        "extras": extras,
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


def _story_yaml(story: Story) -> str:
    import yaml

    # Absolute paths: the copy lives in the run folder, not beside the original story file.
    data = story_to_dict(story)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _environment() -> dict[str, Any]:
    from storycast.utils.environment import environment_summary

    return environment_summary()

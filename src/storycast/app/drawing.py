"""Drawing a story into one of the app's run folders, with progress, one drawing at a time per device.

The app draws as ``storycast generate`` does: :func:`~storycast.runs.plan.plan_run` decides what is left to
draw in the run folder, :func:`~storycast.runs.runner.execute_plan` draws it and writes frames, storyboard and
manifest; the folder resumes, and ``storycast evaluate`` and ``storycast export`` read it. Drawing again into the
same folder after changing one frame's seed or text redraws that frame and what depends on it, nothing else.

The models are loaded once and kept for the next drawing with the same preset. A lock lets one drawing use the
device at a time (Gradio's queue already serialises drawing requests; the lock holds for any other caller).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.app.config import DEFAULT_MAX_FRAMES
from storycast.app.folders import AppFolders, AppRequestError, new_run_name, zip_folder
from storycast.errors import StorycastError
from storycast.methods.base import ProgressEvent
from storycast.runs.folder import FRAMES_DIR, MANIFEST_NAME, STORY_NAME, STORYBOARD_NAME

if TYPE_CHECKING:
    from PIL import Image

    from storycast.models.loading import LoadedModels
    from storycast.models.spec import ModelSpec
    from storycast.runs.plan import RunPlan
    from storycast.story.model import Story

logger = logging.getLogger(__name__)

COMMAND = "storycast app"
"""What the manifest records as the command that drew a run."""
STAGE_NAMES = {"frames": "frames", "denoise": "denoising", "discovery": "identity discovery"}
EVALUATION_PICTURES = ("scores.png", "results.png")
"""What ``storycast evaluate`` writes into an evaluated run folder: the contact sheet and the chart
(:mod:`storycast.evaluation.runfolders`: ``CONTACT_SHEET_NAME``, ``RESULTS_CHART``)."""
EVALUATION_TABLE = "results.md"
HEARTBEAT_S = 1.0
"""Longest wait between two updates of a drawing: one is yielded at least this often, even while a model loads
or a step runs, so that the server notices a client that left (Gradio closes the drawing's generator when it
next yields to a gone client, which stops the drawing)."""
PREVIEW_DPI = 60
"""Resolution of the comic preview's pages (an A4 page is 496 x 702 pixels): enough to see the layout on the page,
quick to draw; the export itself is 150 DPI."""


class DrawStopped(Exception):
    """Raised inside the runner's progress callback when the person stopped the drawing (or left the page):
    the runner records the run as interrupted, keeping the frames drawn so far."""


@dataclass
class DrawUpdate:
    """What the page shows while a drawing runs.

    Attributes:
        status: One line: what is drawn, progress, or the outcome.
        run: The run folder's name.
        frames: (frame file, caption) of every frame the folder holds now, in story order.
        finished: The drawing ended (done, stopped or failed).
        failed: It ended with an error (``status`` says which).
        drawn: Frames drawn by this drawing (when finished).
        kept: Frames kept from before (when finished).
    """

    status: str
    run: str
    frames: list[tuple[Path, str]] = field(default_factory=list)
    finished: bool = False
    failed: bool = False
    drawn: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def progress_line(stages: Mapping[str, ProgressEvent]) -> str:
    """``frames 1/2 · denoising 3/4`` from the latest event of each stage."""
    parts = []
    for stage, event in stages.items():
        label = event.description or STAGE_NAMES.get(stage, stage)
        parts.append(f"{label} {event.completed}/{event.total}")
    return " · ".join(parts)


def held_frames(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(file, manifest record) of each frame the run's manifest records and the folder holds, in story order."""
    from storycast.evaluation.runfolders import read_json

    manifest = read_json(run_dir / MANIFEST_NAME) or {}
    found = []
    for record in manifest.get("frames") or []:
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            continue
        path = run_dir / str(record.get("file", ""))
        if path.is_file() and path.resolve().is_relative_to((run_dir / FRAMES_DIR).resolve()):
            found.append((path, record))
    return found


def run_frames(run_dir: Path) -> list[tuple[Path, str]]:
    """(file, caption) of each frame the run's manifest records and the folder holds, in story order."""
    return [
        (path, f"frame {record['index'] + 1} · seed {record.get('seed')}") for path, record in held_frames(run_dir)
    ]


def shown_frame(run_dir: Path, position: int) -> dict[str, Any]:
    """The manifest record of the frame shown at ``position`` (0-based) of the run's gallery (:func:`run_frames`):
    what a click on a frame picks to redraw.

    Raises:
        AppRequestError: The run holds no frame at that position (it changed since the page showed it).
    """
    held = held_frames(run_dir)
    if not 0 <= position < len(held):
        raise AppRequestError(
            f"run {run_dir.name} shows {len(held)} frame(s), none at position {position + 1}. Fix: open the run "
            f"again and click one of its frames."
        )
    return held[position][1]


def comic_preview(run_dir: Path) -> list[Image.Image]:
    """The run's comic layout (``storycast export --layout comic``) as page images at :data:`PREVIEW_DPI`,
    planned and drawn by the exporter's own functions; nothing is written.

    Raises:
        ExportError: The run is not finished (the exporter lays out a whole story), or a frame is damaged.
    """
    from storycast.export.api import plan_export
    from storycast.export.render import render_pages
    from storycast.export.settings import ExportSettings
    from storycast.export.source import read_run

    settings = ExportSettings(dpi=PREVIEW_DPI)
    content = read_run(run_dir)
    return list(render_pages(plan_export(content, "comic", settings), content, settings))


@dataclass
class RunView:
    """What the page shows of a run folder.

    Attributes:
        frames: (file, caption) of its frames.
        storyboard: Its storyboard sheet.
        pictures: The evaluation's contact sheet and chart, for an evaluated run.
        scores: The evaluation's table (Markdown), for an evaluated run.
        summary: Method, model, status and frame count, in one line.
    """

    frames: list[tuple[Path, str]]
    storyboard: Path | None
    pictures: list[tuple[Path, str]]
    scores: str
    summary: str


def run_view(run_dir: Path) -> RunView:
    from storycast.evaluation.runfolders import read_json

    manifest = read_json(run_dir / MANIFEST_NAME) or {}
    storyboard = run_dir / STORYBOARD_NAME
    pictures = [(run_dir / name, name) for name in EVALUATION_PICTURES if (run_dir / name).is_file()]
    table = run_dir / EVALUATION_TABLE
    frames = run_frames(run_dir)
    method = (manifest.get("method") or {}).get("name", "?")
    model = (manifest.get("model") or {}).get("source", "?")
    total = (manifest.get("story") or {}).get("frames", len(frames))
    summary = f"run `{run_dir.name}`: {method} on {model}, {len(frames)} of {total} frames, {manifest.get('status')}"
    return RunView(
        frames=frames,
        storyboard=storyboard if storyboard.is_file() else None,
        pictures=pictures,
        scores=table.read_text(encoding="utf-8") if table.is_file() else "",
        summary=summary,
    )


def run_document(run_dir: Path, folders: AppFolders) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A run's story (its ``story.yaml``, sanitized as any loaded story), its manifest, and notes."""
    from storycast.app.story_form import load_document
    from storycast.evaluation.runfolders import read_json

    manifest = read_json(run_dir / MANIFEST_NAME)
    if manifest is None or not (run_dir / STORY_NAME).is_file():
        raise AppRequestError(f"run '{run_dir.name}' has no readable manifest or story. Fix: pick another run.")
    doc, notes = load_document(run_dir / STORY_NAME, folders)
    return doc, manifest, notes


class Drawer:
    """Draws into the app's run folders; keeps the last loaded models; one drawing at a time."""

    def __init__(
        self,
        folders: AppFolders,
        *,
        cache_dir: Path | None = None,
        device: str = "auto",
        max_frames: int = DEFAULT_MAX_FRAMES,
    ):
        self.folders = folders
        self.cache_dir = cache_dir
        self.device = device
        self.max_frames = max_frames
        self._lock = threading.Lock()
        self._loaded: tuple[ModelSpec, LoadedModels] | None = None

    def keep(self, models: LoadedModels) -> None:
        """Draw with these loaded models when a drawing asks for their spec (instead of loading them again)."""
        self._loaded = (models.spec, models)

    def spec(self, preset: str) -> ModelSpec:
        from storycast.models.presets import BASE_PRESETS
        from storycast.models.spec import ModelSpec

        if preset not in BASE_PRESETS:
            raise AppRequestError(f"unknown model preset {preset!r}. Fix: use one of {', '.join(BASE_PRESETS)}.")
        return ModelSpec(source=preset, device=self.device)

    def plan(
        self,
        story: Story,
        method: str,
        preset: str,
        settings: Mapping[str, Any] | None,
        run: str | None,
    ) -> tuple[RunPlan, str, str]:
        """The plan of drawing ``story`` into run ``run`` (a new run when None, or when ``run`` holds a run of
        other settings), the run's name, and a note saying which it is. Nothing is loaded or written.

        Raises:
            AppRequestError: A story longer than the app's ``max_frames``, an unknown preset, a bad run name.
            StorycastError: A bad method, setting or story (the planner's messages).
        """
        from storycast.runs.plan import plan_run

        if len(story) > self.max_frames:
            raise AppRequestError(
                f"the story has {len(story)} frames; this app draws at most {self.max_frames} (its --max-frames), "
                f"since one drawing holds its only drawing slot. Fix: shorten the story or split it, draw it with "
                f"`storycast generate`, or start the app with --max-frames {len(story)}."
            )
        spec = self.spec(preset)
        note = ""

        def planned(name: str) -> RunPlan:
            return plan_run(
                story, method, model=spec, method_settings=settings, out_dir=self.folders.run_dir(name),
                settings_origin="the method settings",
            )  # fmt: skip

        if run is not None:
            plan = planned(run)
            if plan.conflict is None:
                plan.check_folder(False)
                return plan, run, note
            note = f"run {run} was drawn with other {', '.join(plan.conflict)}, so this is a new run. "
        name = new_run_name(story.title, method)
        plan = planned(name)
        plan.check_folder(False)
        return plan, name, note

    def draw(
        self,
        story: Story,
        method: str,
        preset: str,
        settings: Mapping[str, Any] | None = None,
        run: str | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> Iterator[DrawUpdate]:
        """Draw what is left of ``story`` in run ``run`` (see :meth:`plan`), yielding an update on each progress
        event and after each group of frames. Closing the iterator, or setting ``stop``, stops the drawing at the
        next progress event (the frames drawn so far are kept, and drawing again resumes). An update comes at least
        every :data:`HEARTBEAT_S` seconds, so that a server closing the iterator when its client has gone stops the
        drawing even while a model loads or a long step runs."""
        plan, name, note = self.plan(story, method, preset, settings, run)
        out_dir = self.folders.run_dir(name)
        todo = plan.frames_to_draw
        stop = stop or threading.Event()
        if todo:
            shown = ", ".join(str(i + 1) for i in todo)
            yield DrawUpdate(
                f"{note}drawing frame(s) {shown} of {len(story)} into run {name}", name, run_frames(out_dir)
            )
        events: queue.Queue[ProgressEvent | BaseException | None] = queue.Queue()
        outcome: dict[str, Any] = {}

        def progress(event: ProgressEvent) -> None:
            if stop.is_set():
                raise DrawStopped
            events.put(event)

        def work() -> None:
            try:
                outcome["result"] = self._execute(plan, self.spec(preset), out_dir, progress)
            except BaseException as err:  # handed to the page, never lost in the thread
                events.put(err)
            else:
                events.put(None)

        worker = threading.Thread(target=work, name=f"storycast-draw-{name}", daemon=True)
        worker.start()
        stages: dict[str, ProgressEvent] = {}
        shown_at = 0.0
        waiting = f"{note}drawing into run {name}"
        try:
            while True:
                try:
                    item = events.get(timeout=HEARTBEAT_S)
                except queue.Empty:
                    said = f"run {name}: {progress_line(stages)}" if stages else waiting
                    yield DrawUpdate(said, name, run_frames(out_dir))
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    yield self._failure(item, name, out_dir)
                    return
                stages[item.stage] = item
                new_frames = item.stage == "frames" and item.completed > 0
                if new_frames or time.monotonic() - shown_at > 0.2:
                    shown_at = time.monotonic()
                    yield DrawUpdate(f"run {name}: {progress_line(stages)}", name, run_frames(out_dir))
        finally:
            stop.set()  # a closed page stops the drawing at its next step
        result = outcome["result"]
        if result.drawn:
            kept = f"; kept {len(result.kept)} from before" if result.kept else ""
            said = f"drew frame(s) {', '.join(str(i + 1) for i in result.drawn)}{kept}"
        else:
            said = f"nothing to draw: all {len(result.kept)} frames are in the run already"
        yield DrawUpdate(
            f"{note}run {name}: {said}",
            name,
            run_frames(out_dir),
            finished=True,
            drawn=list(result.drawn),
            kept=list(result.kept),
        )

    def _execute(self, plan: RunPlan, spec: ModelSpec, out_dir: Path, progress: Any) -> Any:
        from storycast.runs.runner import RunOptions, execute_plan

        options = RunOptions(out_dir=out_dir, cache_dir=self.cache_dir, command=COMMAND)
        with self._lock:
            models: Any = self._loaded[1] if self._loaded and self._loaded[0] == spec and plan.todo else spec
            if plan.todo and models is spec and self._loaded is not None:
                self._loaded = None  # the other preset's models go before this one's load
            result = execute_plan(plan, None, models, options, progress=progress)
            if result.loaded_models is not None:
                self._loaded = (spec, result.loaded_models)
            return result

    def _failure(self, err: BaseException, name: str, out_dir: Path) -> DrawUpdate:
        if isinstance(err, DrawStopped):
            status = f"run {name}: stopped; the frames drawn so far are kept, and Draw resumes"
        elif isinstance(err, StorycastError):
            status = f"run {name}: {err}"
        else:
            logger.error("drawing run %s failed", name, exc_info=err)
            status = f"run {name}: drawing failed ({type(err).__name__}: {err})"
        return DrawUpdate(status, name, run_frames(out_dir), finished=True, failed=True)


def export_download(run_dir: Path, format: str, layout: str, folders: AppFolders) -> Path:
    """The run exported by ``storycast.export.export_run`` (into ``RUN/exports/``), as one file to download:
    the PDF, CBZ or HTML file, or PNG pages zipped into ``ROOT/downloads/``."""
    from storycast.export import export_run

    written = export_run(run_dir, format, layout)
    if format != "png":
        return written[0]
    folder = written[0].parent
    return zip_folder(folder, folders.downloads / f"{run_dir.name}-{layout}-png.zip", top=folder.name)


def readiness(plan: RunPlan, name: str, note: str, run: str | None) -> str:
    """What Draw would do, in one line, from :meth:`Drawer.plan`'s answer (the planner's checks and the app's
    limits passed, nothing loaded or written): what the page says of the story as it is written."""
    todo, total = plan.frames_to_draw, len(plan.story)
    if not todo:
        return f"{note}ready: all {total} frames are in run {name}; Draw has nothing left to draw"
    frames = "every frame" if len(todo) == total else f"frame(s) {', '.join(str(i + 1) for i in todo)}"
    where = f"run {name}" if name == run else "a new run"
    return f"{note}ready: Draw draws {frames} of {total} with {plan.method.name} into {where}"


FRAME_TABLE_HEADERS = ["frame", "seed", "in the run", "characters", "text"]


def frame_table(story: Story, run_dir: Path | None) -> list[list[Any]]:
    """One row per frame: number, seed (the run's when drawn, else the story's), whether the run folder holds it,
    characters and text."""
    from storycast.evaluation.runfolders import read_json

    records = ((read_json(run_dir / MANIFEST_NAME) or {}).get("frames") or []) if run_dir is not None else []
    rows = []
    for index, frame in enumerate(story.frames):
        record = records[index] if index < len(records) and isinstance(records[index], dict) else None
        seed = record.get("seed") if record else frame.seed if frame.seed is not None else "auto"
        held = "drawn" if record and (run_dir / str(record.get("file", ""))).is_file() else "to draw"
        rows.append([index + 1, seed, held, ", ".join(frame.characters), story.caption(index)])
    return rows

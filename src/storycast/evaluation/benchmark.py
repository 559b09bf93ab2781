"""Generate and score a benchmark split in one go, resumably.

A suite is a folder of story files (ConsiStory-Human JSON or our YAML). The named ConsiStory-Human
splits (``single``, ``multi-2``, ``multi-3``) are looked up under, in order: the ``bench_root`` given,
``$STORYCAST_BENCH``, and ``shared/bench/ConsiStory-Human`` beside the current folder and beside the
storycast checkout (``../shared/bench/ConsiStory-Human`` relative to the repository).

Layout: each story is drawn into ``OUT/<suite>/<story file stem>/`` by
:func:`storycast.runs.runner.generate_story` and scored there (``scores.json``, ``scores.png``); then
``OUT/results.json``, ``results.md`` and ``results.png`` cover every run under ``OUT``, and
``OUT/benchmark.json`` records what was asked. A story that is drawn (complete manifest, same method,
model and generation settings, unchanged story file) and scored (``scores.json`` of the same protocol
and extractors from the same frames) is neither redrawn nor rescored, and the base model is not even
loaded when every story is done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast.errors import SettingsError
from storycast.evaluation.evaluator import EvaluationResult, Evaluator
from storycast.evaluation.runfolders import BENCHMARK_RECORD, read_json, run_status
from storycast.methods.base import ProgressCallback, ProgressEvent, no_progress
from storycast.models.loading import LoadedModels, load_models
from storycast.models.spec import ModelSpec
from storycast.runs.runner import MANIFEST_NAME, RunOptions, generate_story
from storycast.utils.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

BENCH_ENV = "STORYCAST_BENCH"
BENCH_NAME = "ConsiStory-Human"
NAMED_SPLITS = ("single", "multi-2", "multi-3")
STORY_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class Suite:
    """A set of story files scored together.

    Attributes:
        name: The split name ('single', 'multi-2', or the folder's name); also the sub-folder of the output.
        folder: Where the story files are.
        files: The story files, sorted.
    """

    name: str
    folder: Path
    files: tuple[Path, ...]


def bench_roots(bench_root: str | Path | None = None) -> list[Path]:
    """Folders searched for the named ConsiStory-Human splits, in order."""
    roots: list[Path] = []
    if bench_root is not None:
        roots.append(Path(bench_root).expanduser())
    if os.environ.get(BENCH_ENV):
        roots.append(Path(os.environ[BENCH_ENV]).expanduser())
    repo = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), Path.cwd().parent, repo.parent):
        roots.append(base / "shared" / "bench" / BENCH_NAME)
    return list(dict.fromkeys(roots))


def _story_files(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in STORY_SUFFIXES))


def resolve_suite(name: str | Path, bench_root: str | Path | None = None) -> Suite:
    """A named split ('single', 'multi-2', ...) or a folder of story files.

    Raises:
        SettingsError: Neither a folder nor a split found under the bench roots (the message lists them).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        files = _story_files(path)
        if not files:
            raise SettingsError(f"suite folder '{path}' has no story files ({', '.join(STORY_SUFFIXES)}).")
        return Suite(path.resolve().name, path, files)
    roots = bench_roots(bench_root)
    for root in roots:
        for candidate in (root / str(name), root / f"{BENCH_NAME}-{name}"):
            if candidate.is_dir() and _story_files(candidate):
                return Suite(str(name), candidate, _story_files(candidate))
    searched = ", ".join(str(r) for r in roots)
    raise SettingsError(
        f"suite '{name}' is neither a folder nor a split found under {searched}. Fix: pass a folder of story files, "
        f"or point --bench-root (or ${BENCH_ENV}) at the {BENCH_NAME} folder that holds {', '.join(NAMED_SPLITS)}."
    )


@dataclass(frozen=True)
class BenchmarkOptions:
    """Where and how a benchmark writes.

    Attributes:
        out_dir: The benchmark folder (``<out_dir>/<suite>/<story>/``).
        limit: Only the first N stories of each suite.
        cache_dir: storycast's cache (identity library, features); default ``$STORYCAST_CACHE``.
        command: The command line, recorded in the run manifests and benchmark.json.
        storyboard: Write each run's storyboard sheet.
    """

    out_dir: Path
    limit: int | None = None
    cache_dir: Path | None = None
    command: str | None = None
    storyboard: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise SettingsError(f"limit must be at least 1, got {self.limit}.")


@dataclass
class BenchmarkResult:
    """What a benchmark did. ``drawn`` were generated now (fully or partly), ``finished`` were already done."""

    evaluation: EvaluationResult
    drawn: list[Path] = field(default_factory=list)
    scored: list[Path] = field(default_factory=list)
    finished: list[Path] = field(default_factory=list)


def _model_source(models: LoadedModels | ModelSpec) -> str:
    return models.spec.source if isinstance(models, LoadedModels) else models.source


def _model_loras(models: LoadedModels | ModelSpec) -> list[list[Any]]:
    spec = models.spec if isinstance(models, LoadedModels) else models
    return [[lora.source, float(lora.scale)] for lora in getattr(spec, "loras", ())]


def is_drawn(
    run_dir: Path,
    story_file: Path,
    method: str,
    models: LoadedModels | ModelSpec,
    generation: Mapping[str, Any] | None = None,
    method_settings: Mapping[str, Any] | None = None,
) -> bool:
    """True when ``run_dir`` holds a finished run of ``story_file`` by ``method`` on the same base model and
    LoRAs, with the ``generation`` overrides asked. Method-setting overrides always go through the runner,
    which compares them with the run's."""
    if run_status(run_dir) is not None or method_settings:
        return False
    manifest = read_json(run_dir / MANIFEST_NAME) or {}
    if (manifest.get("method") or {}).get("name") != method:
        return False
    model = manifest.get("model") or {}
    if model.get("source") != _model_source(models):
        return False
    if [[r.get("source"), float(r.get("scale", 1.0))] for r in model.get("loras") or []] != _model_loras(models):
        return False
    if (manifest.get("story") or {}).get("source_sha256") != sha256_file(story_file):
        return False
    drawn_with = manifest.get("generation") or {}
    return all(drawn_with.get(k) == v for k, v in (generation or {}).items() if v is not None)


def run_benchmark(
    suites: Sequence[Suite],
    method: str,
    models: LoadedModels | ModelSpec,
    evaluator: Evaluator,
    options: BenchmarkOptions,
    *,
    method_settings: Mapping[str, Any] | None = None,
    generation: Mapping[str, Any] | None = None,
    progress: ProgressCallback = no_progress,
) -> BenchmarkResult:
    """Draw and score every story of ``suites`` into ``options.out_dir``, then write the results there.

    Args:
        suites: The splits to run (``resolve_suite``).
        method: Method name.
        models: Loaded models, or a spec loaded only if some story needs drawing.
        evaluator: Scores the runs (one protocol, extractors loaded once).
        options: Output folder, limit, cache.
        method_settings: Overrides of the method's settings.
        generation: Overrides of the generation settings (steps, width, seed...).
        progress: Receives 'stories' events, and the runner's and method's own events.
    """
    from storycast.story.parse import load_story

    if not suites:
        raise SettingsError("no suite to run. Fix: name a split (single, multi-2) or a folder of story files.")
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise SettingsError(
            f"suites {names} share a name, so their stories would share folders. Fix: rename a folder."
        )
    out_dir = Path(options.out_dir)
    plan = [
        (suite, story_file, out_dir / suite.name / story_file.stem)
        for suite in suites
        for story_file in suite.files[: options.limit]
    ]
    stories = [load_story(story_file) for _, story_file, _ in plan]  # every story file is checked before any work

    source = _model_source(models)
    todo = {
        i
        for i, (_, story_file, run_dir) in enumerate(plan)
        if not (
            is_drawn(run_dir, story_file, method, models, generation, method_settings) and evaluator.is_scored(run_dir)
        )
    }
    if todo:
        evaluator.load()  # a missing extractor is reported before hours of drawing
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "method": method,
        "model": source,
        "suites": [
            {"name": s.name, "folder": str(s.folder), "stories": len(s.files[: options.limit])} for s in suites
        ],
        "limit": options.limit,
        "generation": {k: v for k, v in (generation or {}).items() if v is not None},
        "method_settings": dict(method_settings or {}),
        "eval_preset": evaluator.preset.name,
        "command": options.command,
    }
    atomic_write_json(out_dir / BENCHMARK_RECORD, record)

    result = BenchmarkResult(evaluation=EvaluationResult(results={}))
    loaded = models if isinstance(models, LoadedModels) else None
    progress(ProgressEvent("stories", 0, len(plan), "stories"))
    for number, ((_, story_file, run_dir), story) in enumerate(zip(plan, stories, strict=True), start=1):
        if number - 1 not in todo:
            result.finished.append(run_dir)
        else:
            if not is_drawn(run_dir, story_file, method, models, generation, method_settings):
                if loaded is None:
                    logger.info("loading %s", source)
                    loaded = load_models(models)
                generate_story(
                    story,
                    method,
                    loaded,
                    RunOptions(
                        out_dir=run_dir,
                        storyboard=options.storyboard,
                        cache_dir=options.cache_dir,
                        command=options.command,
                    ),
                    method_settings=method_settings,
                    generation=generation,
                    progress=progress,
                )
                result.drawn.append(run_dir)
            evaluator.score_run(run_dir, split=run_dir.parent.relative_to(out_dir).as_posix())
            result.scored.append(run_dir)
        progress(ProgressEvent("stories", number, len(plan), "stories"))
    result.evaluation = evaluator.evaluate(out_dir, extra=record)
    return result

"""Generate and score a benchmark split in one go, resumably.

A suite is a folder of story files (ConsiStory-Human JSON or our YAML). The named ConsiStory-Human
splits (``single``, ``multi-2``, ``multi-3``) are looked up under, in order: the ``bench_root`` given,
``$STORYCAST_BENCH``, the storycast cache (``<cache>/bench/ConsiStory-Human``, filled by ``storycast download
consistory-human``; a split there counts only when complete), and ``shared/bench/ConsiStory-Human`` beside the
current folder and beside the storycast checkout (``../shared/bench/ConsiStory-Human`` relative to the repository).
``vistorybench`` names the ViStoryBench folder (numbered stories), looked up as ``ViStoryBench/`` under the same
``bench_root`` and ``$STORYCAST_BENCH``, then the cache (``<cache>/bench/ViStoryBench``, filled by ``storycast download
vistorybench``; counted only when the stories asked for are all there) and ``shared/bench/ViStoryBench``.

Layout: each story is drawn into ``OUT/<suite>/<story file stem>/`` by
:func:`storycast.runs.runner.generate_story` and scored there (``scores.json``, ``scores.png``); then
``OUT/results.json``, ``results.md`` and ``results.png`` cover every run under ``OUT``, and
``OUT/benchmark.json`` records what was asked. Every story is planned first
(:func:`storycast.runs.plan.plan_run`: settings resolved, inputs checked, drawn frames found); a story that
is drawn (the planner finds every frame up to date in a complete run) and scored (``scores.json`` of the
same protocol and extractors from the same frames) is neither redrawn nor rescored, and the base model is
not even loaded when every story is done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import SettingsError, StoryError
from storycast.evaluation import bench_data, vistory_data
from storycast.evaluation.evaluator import EvaluationResult, Evaluator
from storycast.evaluation.runfolders import BENCHMARK_RECORD
from storycast.methods.base import ProgressCallback, ProgressEvent, no_progress
from storycast.models.loading import LoadedModels
from storycast.models.spec import ModelSpec
from storycast.runs.plan import RunPlan, plan_run
from storycast.runs.runner import RunOptions, execute_plan
from storycast.utils.io import atomic_write_json

if TYPE_CHECKING:
    from storycast.story.model import Story

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


def bench_roots(bench_root: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for the named ConsiStory-Human splits, in order (``cache_dir``: storycast's cache)."""
    roots: list[Path] = []
    if bench_root is not None:
        roots.append(Path(bench_root).expanduser())
    if os.environ.get(BENCH_ENV):
        roots.append(Path(os.environ[BENCH_ENV]).expanduser())
    roots.append(bench_data.default_target(cache_dir))
    return list(dict.fromkeys([*roots, *_shared_copies(BENCH_NAME)]))


def _shared_copies(name: str) -> list[Path]:
    """``shared/bench/<name>`` beside the current folder, its parent, and the storycast checkout."""
    repo = Path(__file__).resolve().parents[3]
    return [base / "shared" / "bench" / name for base in (Path.cwd(), Path.cwd().parent, repo.parent)]


def vistory_folders(bench_root: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for the ``vistorybench`` suite, in order (see the module's docstring)."""
    given = [Path(r).expanduser() / vistory_data.BENCH_NAME for r in (bench_root, os.environ.get(BENCH_ENV)) if r]
    downloaded = vistory_data.default_target(cache_dir)
    return list(dict.fromkeys([*given, downloaded, *_shared_copies(vistory_data.BENCH_NAME)]))


def _vistory_suite(bench_root: str | Path | None, cache_dir: str | Path | None, limit: int | None) -> Suite:
    """The ViStoryBench folder of :func:`vistory_folders` that holds stories; the download only when the stories
    asked for (all, or the first ``limit``) are all there."""
    downloaded = vistory_data.default_target(cache_dir)
    folders = vistory_folders(bench_root, cache_dir)
    for folder in folders:
        if not (folder.is_dir() and _story_files(folder)):
            continue
        if folder == downloaded:
            present, expected = vistory_data.stories_ready(folder, first=limit)
            if present < expected:
                logger.warning(
                    "%s holds %d of the %d files asked for; skipped. Run `storycast download %s` to finish it.",
                    folder,
                    present,
                    expected,
                    vistory_data.NAME,
                )
                continue
        return Suite(vistory_data.BENCH_NAME, folder, _story_files(folder))
    raise SettingsError(
        f"suite '{vistory_data.NAME}' was found under none of {', '.join(str(f) for f in folders)}. Fix: fetch it "
        f"with `storycast download {vistory_data.NAME}` (add --from FOLDER for a local copy of {vistory_data.REPO_ID}), "
        "or pass the folder of numbered stories itself."
    )


def _story_files(folder: Path) -> tuple[Path, ...]:
    """The story files of a suite folder: its own YAML/JSON files (hidden ones, such as a download's record, left
    out), else, in ViStoryBench's layout, the ``story.json`` of each numbered story folder in number order (as the
    benchmark's ``get_story_name_list``)."""
    files = tuple(
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in STORY_SUFFIXES and not p.name.startswith(".")
        )
    )
    if files:
        return files
    numbered = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return tuple(p / "story.json" for p in numbered if (p / "story.json").is_file())


def select_split(suite: Suite, split: str) -> Suite:
    """``suite`` reduced to a ViStoryBench split ("full": as it is; "lite": the benchmark's 20 lite stories, its name
    ending in "-lite" so that its runs and tables are its own).

    Raises:
        SettingsError: "lite" asked of a suite that is not in ViStoryBench's layout.
    """
    from storycast.story.vistory import split_stories

    if split == "full":
        return suite
    if not is_vistory_suite(suite):
        raise SettingsError(
            f"--split {split} selects ViStoryBench stories, but suite '{suite.name}' is not a ViStoryBench folder "
            f"(numbered story folders holding story.json). Fix: leave --split out, or pass the ViStory folder."
        )
    kept = set(split_stories([f.parent.name for f in suite.files], split))
    return Suite(f"{suite.name}-{split}", suite.folder, tuple(f for f in suite.files if f.parent.name in kept))


def is_vistory_suite(suite: Suite) -> bool:
    """Whether ``suite`` is a folder in ViStoryBench's layout (numbered story folders holding story.json)."""
    return bool(suite.files) and all(f.name == "story.json" for f in suite.files)


def story_name(story_file: Path) -> str:
    """A story's name in a suite: a ViStory story's folder (``01``), else the file's name without its ending."""
    return story_file.parent.name if story_file.name == "story.json" else story_file.stem


def resolve_suite(
    name: str | Path,
    bench_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> Suite:
    """A named split ('single', 'multi-2', ...) or a folder of story files. A downloaded split whose download was
    interrupted is used only when the stories asked for (all, or the first ``limit``) are there.

    Raises:
        SettingsError: Neither a folder nor a split found under the bench roots (the message lists them).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        files = _story_files(path)
        if not files:
            raise SettingsError(
                f"suite folder '{path}' has no story files ({', '.join(STORY_SUFFIXES)}) and no numbered story folders "
                f"holding a story.json (ViStoryBench's layout). Fix: pass a folder of stories."
            )
        return Suite(path.resolve().name, path, files)
    if str(name).lower() == vistory_data.NAME:
        return _vistory_suite(bench_root, cache_dir, limit)
    roots = bench_roots(bench_root, cache_dir)
    downloaded = bench_data.default_target(cache_dir)
    for root in roots:
        for candidate in (root / str(name), root / f"{BENCH_NAME}-{name}"):
            if not (candidate.is_dir() and _story_files(candidate)):
                continue
            if candidate == downloaded / str(name):
                present, expected = bench_data.split_files(downloaded, str(name), first=limit)
                if present < expected:
                    # An interrupted `storycast download`: finish it rather than score a part of the split.
                    logger.warning(
                        "%s holds %d of the %d files of split '%s'; skipped. Run `storycast download %s` to finish it.",
                        candidate,
                        present,
                        expected,
                        name,
                        bench_data.NAME,
                    )
                    continue
            return Suite(str(name), candidate, _story_files(candidate))
    searched = ", ".join(str(r) for r in roots)
    raise SettingsError(
        f"suite '{name}' is neither a folder nor a split found under {searched}. Fix: fetch the benchmark with "
        f"`storycast download {bench_data.NAME}` (add --from FOLDER for a local copy), pass a folder of story "
        f"files, or point --bench-root (or ${BENCH_ENV}) at the {BENCH_NAME} folder that holds "
        f"{', '.join(NAMED_SPLITS)}."
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
        overwrite: Redraw every story, replacing runs of other settings in its folder.
        language: The language ViStoryBench stories are read in ("en" or "ch"; recorded in benchmark.json).
    """

    out_dir: Path
    limit: int | None = None
    cache_dir: Path | None = None
    command: str | None = None
    storyboard: bool = True
    overwrite: bool = False
    language: str = "en"
    shard: tuple[int, int] = (0, 1)
    """(I, N): draw and score only stories i with i % N == I (a job array's task), write no tables."""
    merge: bool = False
    """Draw nothing: build the tables from the runs the shards finished."""
    outputs: Path | None = None
    """ViStoryBench suites: where their scorer's ``outputs/`` tree is written (default ``<out_dir>/outputs``)."""
    outputs_mode: str | None = None
    """ViStoryBench suites: the tree's ``<mode>`` folder (default ``img_ref`` or ``text_only``, as the method reads
    the stories' reference images or not)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise SettingsError(f"limit must be at least 1, got {self.limit}.")


@dataclass
class BenchmarkResult:
    """What a benchmark did. ``drawn`` were generated now (fully or partly), ``finished`` were already done,
    ``failed`` could not be read ({'story': its folder under the benchmark's, 'reason': the error})."""

    evaluation: EvaluationResult
    drawn: list[Path] = field(default_factory=list)
    scored: list[Path] = field(default_factory=list)
    finished: list[Path] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


def _readable(
    layout: Sequence[tuple[Suite, Path, Path]], out_dir: Path, language: str
) -> tuple[list[tuple[Suite, Path, Path]], list[Story], list[dict[str, str]]]:
    """The stories of ``layout`` that read, and the others with their errors (which name the file and the field).

    Raises:
        StoryError: The only story does not read.
        SettingsError: No story reads (each named with its error).
    """
    from storycast.story.parse import load_story

    kept, stories, failed, errors = [], [], [], []
    for entry in layout:
        try:
            stories.append(load_story(entry[1], language=language))
        except StoryError as err:
            failed.append({"story": entry[2].relative_to(out_dir).as_posix(), "reason": str(err)})
            errors.append(err)
        else:
            kept.append(entry)
    if not kept and len(errors) == 1:
        raise errors[0]
    if not kept and errors:
        raise SettingsError("no story can be drawn:\n  " + "\n  ".join(f"{f['story']}: {f['reason']}" for f in failed))
    return kept, stories, failed


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
    if not suites:
        raise SettingsError("no suite to run. Fix: name a split (single, multi-2) or a folder of story files.")
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise SettingsError(
            f"suites {names} share a name, so their stories would share folders. Fix: rename a folder."
        )
    out_dir = Path(options.out_dir)
    layout = [
        (suite, story_file, out_dir / suite.name / story_name(story_file))
        for suite in suites
        for story_file in suite.files[: options.limit]
    ]
    # Every story file is checked before any work; one that cannot be read is reported (in the results, and by the
    # command's exit status) and the others go on.
    layout, stories, failed = _readable(layout, out_dir, options.language)
    # ViStoryBench stories are the benchmark's: a frame a method cannot take as it is falls back, recorded per frame
    # (storycast.methods.limits), instead of the story being refused.
    vistory = {suite.name for suite in suites if is_vistory_suite(suite)}
    tokenizer = None
    if vistory:
        from storycast.models.tokenizers import first_tokenizer

        tokenizer = first_tokenizer(models)
    # The method's own protocol (its paper's seeds...) unless the command line says otherwise.
    from storycast.methods.registry import get_method

    protocol = get_method(method).benchmark_protocol()
    generation = {**protocol, **{k: v for k, v in (generation or {}).items() if v is not None}}
    method_settings = {**get_method(method).benchmark_settings(), **(method_settings or {})}

    # Every story is planned (settings, inputs, what is drawn) before any model loads.
    plans = [
        plan_run(
            story,
            method,
            model=models,
            method_settings=method_settings,
            generation=generation,
            out_dir=run_dir,
            overwrite=options.overwrite,
            fallback=suite.name in vistory,
            tokenizer=tokenizer,
        )
        for (suite, _, run_dir), story in zip(layout, stories, strict=True)
    ]
    if failed:
        logger.error(
            "%d stor(ies) cannot be drawn and are left out: %s", len(failed), "; ".join(f["story"] for f in failed)
        )
    for run_plan in plans:
        run_plan.check_folder(options.overwrite)
    if options.merge:  # nothing is drawn: the tables of what the shards drew (and the record they wrote)
        result = BenchmarkResult(evaluation=evaluator.evaluate(out_dir), failed=failed)
        result.finished = [run_dir for _, _, run_dir in layout]
        return result
    if plans:
        plans[0].method.check_benchmark(plans[0].settings, plans[0].model.family)
    # This process's stories: its shard of a job array, split again over the processes torchrun started.
    from storycast.runs.shards import current_share

    share, state = current_share(options.shard)
    mine = set(share.mine(len(layout)))
    todo = {
        i
        for i, ((_, _, run_dir), run_plan) in enumerate(zip(layout, plans, strict=True))
        if i in mine and not (run_plan.finished and evaluator.is_scored(run_dir))
    }
    if state is not None and isinstance(models, ModelSpec) and models.device in ("auto", "cuda"):
        models = dataclasses.replace(models, device=str(state.device))  # each process on its own GPU
    source = models.spec.source if isinstance(models, LoadedModels) else models.source
    if todo:
        evaluator.load()  # a missing extractor is reported before hours of drawing
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "method": method,
        "model": source,
        "suites": [
            {"name": s.name, "folder": str(s.folder), "stories": len(s.files[: options.limit])} for s in suites
        ],
        "limit": options.limit,
        "language": options.language,
        "generation": {k: v for k, v in generation.items() if v is not None},
        "protocol": protocol,
        "method_settings": dict(method_settings or {}),
        "eval_preset": evaluator.preset.name,
        "command": options.command,
        "failed": failed,
    }
    outputs = _vistory_outputs(layout, plans, vistory, options) if vistory else None
    if outputs is not None:
        record["vistory"] = outputs.record(plans, [suite.name in vistory for suite, _, _ in layout], out_dir)
    if share.main:  # every shard asks the same (suites, method, settings): any one's record serves --merge
        atomic_write_json(out_dir / BENCHMARK_RECORD, record)

    result = BenchmarkResult(evaluation=EvaluationResult(results={}), failed=failed)
    loaded = models if isinstance(models, LoadedModels) else None
    progress(ProgressEvent("stories", 0, len(layout), "stories"))
    for number, ((_, _, run_dir), run_plan) in enumerate(zip(layout, plans, strict=True), start=1):
        if number - 1 not in mine:
            continue
        if number - 1 not in todo:
            result.finished.append(run_dir)
        else:
            if not run_plan.finished:
                # Models load once, for the first story with a frame to draw, and are shared after that.
                drawn = execute_plan(
                    run_plan,
                    None,
                    loaded or models,
                    RunOptions(
                        out_dir=run_dir,
                        storyboard=options.storyboard,
                        cache_dir=options.cache_dir,
                        command=options.command,
                        overwrite=options.overwrite,
                    ),
                    progress=progress,
                )
                loaded = drawn.loaded_models or loaded
                if drawn.drawn:
                    result.drawn.append(run_dir)
            evaluator.score_run(run_dir, split=run_dir.parent.relative_to(out_dir).as_posix())
            result.scored.append(run_dir)
        suite, story_file, _ = layout[number - 1]
        if outputs is not None and suite.name in vistory:
            outputs.write(story_file, run_dir)
        progress(ProgressEvent("stories", number, len(layout), "stories"))
    if state is not None:
        state.wait_for_everyone()  # every process has scored its runs: the main one writes the tables
    if options.shard != (0, 1) or not share.main:
        # A shard of a job array (or a helper process) writes no tables: `--merge` builds them from every shard.
        return result
    result.evaluation = evaluator.evaluate(out_dir, extra=record)
    return result


@dataclass(frozen=True)
class VistoryOutputs:
    """Where a benchmark writes its ViStoryBench stories' images as the benchmark's scorer reads them
    (:mod:`storycast.evaluation.vistory_outputs`)."""

    root: Path
    method: str
    mode: str
    language: str
    timestamp: str

    def write(self, story_file: Path, run_dir: Path) -> list[Path]:
        """The run's frames as the story's shots (nothing rewritten that is there already)."""
        from storycast.evaluation.vistory_outputs import story_folder, write_shots
        from storycast.runs.folder import RunFolder
        from storycast.story.vistory import shot_numbers

        frames = (RunFolder(run_dir).previous or {}).get("frames") or []
        files = [record["file"] for record in frames if isinstance(record, dict)]
        target = story_folder(self.root, self.method, self.mode, self.language, self.timestamp, story_name(story_file))
        return write_shots(run_dir, files, shot_numbers(story_file), target)

    def record(self, plans: Sequence[RunPlan], chosen: Sequence[bool], out_dir: Path) -> dict[str, Any]:
        """benchmark.json's record: the tree, its mode and timestamp, and the frames drawn by a fallback."""
        from storycast.methods.limits import count_limits, limits_by_frame

        mine = [plan for plan, keep in zip(plans, chosen, strict=True) if keep]
        per_story = {
            plan.out_dir.relative_to(out_dir).as_posix(): len({limit.frame for limit in plan.limits})
            for plan in mine
            if plan.out_dir is not None and plan.limits
        }
        return {
            "outputs": str(self.root),
            "method": self.method,
            "mode": self.mode,
            "language": self.language,
            "timestamp": self.timestamp,
            "limits": {**count_limits(limits_by_frame(plan.limits) for plan in mine), "stories": per_story},
        }


def _vistory_outputs(
    layout: Sequence[tuple[Suite, Path, Path]], plans: Sequence[RunPlan], vistory: set[str], options: BenchmarkOptions
) -> VistoryOutputs:
    """The benchmark's outputs tree: its mode from whether the method reads the stories' reference images, its
    timestamp the one the benchmark folder keeps."""
    from storycast.evaluation.vistory_outputs import mode_name, outputs_timestamp

    chosen = [plan for plan, (suite, _, _) in zip(plans, layout, strict=True) if suite.name in vistory]
    reads = any(p.method.reads_references(p.settings, p.model.family) and p.story.uses_references() for p in chosen)
    mode = options.outputs_mode or mode_name(reads)
    root = Path(options.outputs) if options.outputs is not None else Path(options.out_dir) / "outputs"
    method = chosen[0].method.name
    facts = {"outputs": str(root), "method": method, "mode": mode, "language": options.language}
    return VistoryOutputs(root, method, mode, options.language, outputs_timestamp(Path(options.out_dir), facts))

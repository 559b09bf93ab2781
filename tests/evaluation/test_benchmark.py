"""The benchmark runner: suites, generate-then-score, resume without redrawing or rescoring."""

from __future__ import annotations

import json

import pytest

from storycast.errors import SettingsError, UnknownMethodError
from storycast.evaluation import benchmark as B
from storycast.evaluation.evaluator import Evaluator, ExtractorOptions
from storycast.evaluation.presets import resolve_preset
from storycast.models.spec import LoraSpec, ModelSpec
from storycast.runs.plan import plan_run
from storycast.story.parse import load_story
from tests.evaluation.fakes import write_suite
from tests.helpers import BENCH, needs_shared_bench

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

GENERATION = {"steps": 1, "width": 64, "height": 64, "batch_size": 2}


@pytest.fixture
def evaluator(tmp_path):
    return Evaluator(
        resolve_preset("identitystory", tiny=True), ExtractorOptions(tiny=True), cache_dir=tmp_path / "cache"
    )


@needs_shared_bench
def test_named_splits_and_folders(tmp_path, monkeypatch):
    single = B.resolve_suite("single", bench_root=BENCH)
    assert single.name == "single" and len(single.files) == 70 and single.files[0].name == "story_000.json"
    monkeypatch.setenv(B.BENCH_ENV, str(BENCH))
    assert len(B.resolve_suite("multi-2").files) == 10
    monkeypatch.delenv(B.BENCH_ENV)
    monkeypatch.chdir(tmp_path)
    assert B.resolve_suite("multi-2").folder.resolve() == (BENCH / "multi-2").resolve()  # ../shared beside the repo
    folder = B.resolve_suite(write_suite(tmp_path / "mine"))
    assert folder.name == "mine" and len(folder.files) == 2
    with pytest.raises(SettingsError, match=r"suite 'multi-9' is neither a folder nor a split.*--bench-root"):
        B.resolve_suite("multi-9", bench_root=tmp_path)


def test_benchmark_draws_scores_and_resumes_without_redrawing_or_rescoring(
    tiny_sd15, evaluator, tmp_path, monkeypatch
):
    suite = B.resolve_suite(write_suite(tmp_path / "suite"))
    out = tmp_path / "bench"
    events = []
    options = B.BenchmarkOptions(out_dir=out)
    result = B.run_benchmark(
        [suite], "vanilla", tiny_sd15, evaluator, options, generation=GENERATION, progress=events.append
    )
    runs = [out / "suite" / "story_000", out / "suite" / "story_001"]
    assert result.drawn == runs and result.scored == runs and result.finished == []
    for run in runs:
        assert (run / "manifest.json").is_file() and (run / "scores.png").is_file()
        assert json.loads((run / "scores.json").read_text())["run"]["method"] == "vanilla"
    for name in ("results.json", "results.md", "results.png", "benchmark.json"):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    assert [(g["split"], g["stories"]) for g in results["groups"]] == [("suite", 2)]
    assert results["benchmark"]["generation"] == GENERATION and results["benchmark"]["suites"][0]["stories"] == 2
    stories = [e for e in events if e.stage == "stories"]
    assert (stories[0].completed, stories[-1].completed, stories[-1].total) == (0, 2, 2)
    assert any(e.stage == "frames" for e in events)

    # Again, from a model spec that must not even be loaded: everything is finished.
    def no_loading(spec):
        raise AssertionError("finished stories must not load the model")

    import storycast.runs.runner

    monkeypatch.setattr(storycast.runs.runner, "load_models", no_loading)
    mtimes = [(run / "scores.json").stat().st_mtime_ns for run in runs]
    again = B.run_benchmark(
        [suite], "vanilla", ModelSpec(source="tiny-sd15"), evaluator, options, generation=GENERATION
    )
    assert again.finished == runs and again.drawn == [] and again.scored == []
    assert [(run / "scores.json").stat().st_mtime_ns for run in runs] == mtimes
    assert again.evaluation.reused == runs

    # A lost scores.json is rescored without drawing; a lost frame is redrawn.
    (runs[0] / "scores.json").unlink()
    rescored = B.run_benchmark(
        [suite], "vanilla", ModelSpec(source="tiny-sd15"), evaluator, options, generation=GENERATION
    )
    assert rescored.scored == [runs[0]] and rescored.drawn == [] and rescored.finished == [runs[1]]
    (runs[1] / "frames" / "frame_001.png").unlink()
    redrawn = B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator, options, generation=GENERATION)
    assert redrawn.drawn == [runs[1]] and redrawn.finished == [runs[0]]


def test_limit_and_what_counts_as_drawn(tiny_sd15, evaluator, tmp_path):
    suite = B.resolve_suite(write_suite(tmp_path / "suite", stories=3))
    out = tmp_path / "bench"
    B.run_benchmark(
        [suite], "vanilla", tiny_sd15, evaluator, B.BenchmarkOptions(out_dir=out, limit=1), generation=GENERATION
    )
    assert sorted(p.name for p in (out / "suite").iterdir()) == ["story_000"]
    run, story, spec = out / "suite" / "story_000", suite.files[0], ModelSpec(source="tiny-sd15")

    def is_drawn(story_file, method, model, generation=GENERATION, settings=None):
        plan = plan_run(
            load_story(story_file), method, model=model, generation=generation, method_settings=settings, out_dir=run
        )
        return plan.finished

    assert is_drawn(story, "vanilla", spec) and is_drawn(story, "vanilla", tiny_sd15)
    assert not is_drawn(story, "vanilla", spec, generation={})  # the preset's own 4 steps: another run
    assert not is_drawn(story, "vanilla", ModelSpec(source="tiny-sd15", dtype="bf16"))
    assert not is_drawn(story, "vanilla", ModelSpec(source="tiny-sd15", loras=(LoraSpec("style"),)))
    assert not is_drawn(story, "vanilla", spec, {**GENERATION, "steps": 2})
    assert not is_drawn(suite.files[1], "vanilla", spec)
    with pytest.raises(UnknownMethodError, match="did you mean 'vanilla'"):
        is_drawn(story, "vanila", spec)
    with pytest.raises(SettingsError, match=r"--set anything: unknown setting"):
        is_drawn(story, "vanilla", spec, settings={"anything": 1})
    with pytest.raises(SettingsError, match="limit must be at least 1"):
        B.BenchmarkOptions(out_dir=out, limit=0)


def test_a_benchmark_over_runs_of_other_settings_is_refused_unless_overwrite(tiny_sd15, evaluator, tmp_path):
    from storycast.errors import RunFolderError

    suite = B.resolve_suite(write_suite(tmp_path / "suite", stories=1))
    options = B.BenchmarkOptions(out_dir=tmp_path / "bench")
    B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator, options, generation=GENERATION)
    frame = tmp_path / "bench" / "suite" / "story_000" / "frames" / "frame_000.png"
    before = frame.read_bytes()
    other = {**GENERATION, "steps": 2}
    with pytest.raises(RunFolderError, match="--overwrite"):
        B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator, options, generation=other)
    assert frame.read_bytes() == before  # refused before anything was drawn
    forced = B.BenchmarkOptions(out_dir=tmp_path / "bench", overwrite=True)
    again = B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator, forced, generation=other)
    assert again.drawn == [tmp_path / "bench" / "suite" / "story_000"] and frame.read_bytes() != before


def test_the_benchmark_follows_the_methods_protocol_unless_told_otherwise(tiny_sd15, evaluator, tmp_path, monkeypatch):
    from storycast.methods import registry

    monkeypatch.setitem(registry._REGISTERED, "protocol-vanilla", "tests.evaluation.protocol_method:ProtocolVanilla")
    suite = B.resolve_suite(write_suite(tmp_path / "suite"))
    generation = {k: v for k, v in GENERATION.items() if k != "batch_size"}
    B.run_benchmark([suite], "protocol-vanilla", tiny_sd15, evaluator, B.BenchmarkOptions(out_dir=tmp_path / "a"),
                    generation=generation)  # fmt: skip
    manifest = json.loads((tmp_path / "a" / "suite" / "story_000" / "manifest.json").read_text())
    assert {frame["seed"] for frame in manifest["frames"]} == {0}
    record = json.loads((tmp_path / "a" / "benchmark.json").read_text())
    assert record["protocol"] == {"seed": 0, "seed_policy": "same"}
    assert (
        "Seeds: same (every frame from the story seed); story seed(s) 0."
        in (tmp_path / "a" / "results.md").read_text()
    )
    B.run_benchmark([suite], "protocol-vanilla", tiny_sd15, evaluator, B.BenchmarkOptions(out_dir=tmp_path / "b"),
                    generation={**generation, "seed": 5})  # fmt: skip
    manifest = json.loads((tmp_path / "b" / "suite" / "story_000" / "manifest.json").read_text())
    assert {frame["seed"] for frame in manifest["frames"]} == {5}  # the command line's seed wins


def test_identitystory_refuses_a_benchmark_without_the_authors_masks(monkeypatch):
    from storycast.methods.identitystory.method import IdentityStoryMethod
    from storycast.methods.identitystory.settings import IdentityStorySettings

    monkeypatch.setattr("storycast.masks.registry.detector_available", lambda settings: False)
    allowed = IdentityStorySettings.from_mapping({"auto_detector": True})
    with pytest.raises(SettingsError, match=r"authors' masks come from GroundingDINO \+ SAM.*mask_provider=attention"):
        IdentityStoryMethod.check_benchmark(allowed, "sdxl")
    IdentityStoryMethod.check_benchmark(IdentityStorySettings.from_mapping({"mask_provider": "attention"}), "sdxl")
    IdentityStoryMethod.check_benchmark(IdentityStorySettings.from_mapping({"auto_detector": False}), "sdxl")  # tiny

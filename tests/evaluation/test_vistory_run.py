"""Every ViStoryBench metric through the evaluator on tiny extractors: CSD, aesthetics and the Inception Score equal
naive computations from the same tiny models; the judge's metrics are skipped with the reason recorded, or judged
by a fake local server; the Inception Score is one number per results row."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from PIL import Image

from storycast.evaluation.evaluator import Evaluator, ExtractorOptions
from storycast.evaluation.presets import VISTORY_JUDGE_METRICS, resolve_preset
from storycast.evaluation.vistory_judge import JudgeOptions, load_prompt
from storycast.story.parse import load_story, story_to_dict
from tests.evaluation.fakes import frame, write_run
from tests.evaluation.test_vistory_judge import FakeJudge, chat
from tests.story.vistory_fixture import write_vistory


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def vistory_run(folder, source, seed=0, method="vanilla"):
    """A run of ``source`` (a ViStory story.json) holding frames with a face each."""
    story = load_story(source)
    frames = [frame([(8, 8, seed + k)], shade=30 + 20 * k + seed) for k in range(len(story))]
    run = write_run(folder, frames, story_to_dict(story), method=method)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["story"].update({"source": str(source), "source_format": "vistory"})
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture
def stories(tmp_path):
    root = write_vistory(tmp_path / "ViStory")
    for k, path in enumerate(sorted((root / "01" / "image" / "Mara").iterdir())):
        frame([(8, 8, 0)], shade=40 + k).save(path)  # the human's photos show a face the tiny SCRFD finds
    return root


def evaluator(tmp_path, judge=None, metrics=None):
    preset = resolve_preset("vistorybench", tiny=True)
    if metrics is not None:
        preset = preset.customize(remove=[m for m in preset.metrics if m not in metrics])
    return Evaluator(preset, ExtractorOptions(tiny=True, judge=judge), cache_dir=tmp_path / "cache", pictures=False)


def _opened(run):
    return [Image.open(p).convert("RGB") for p in sorted((run / "frames").iterdir())]


def test_style_quality_and_diversity_equal_naive_computations_and_the_judge_is_skipped_with_its_reason(
    tmp_path, stories
):
    from storycast.vision.aesthetic import AestheticScorer
    from storycast.vision.csd import CsdFeatures
    from storycast.vision.inception import InceptionClassifier

    source = stories / "01" / "story.json"
    run = vistory_run(tmp_path / "runs" / "01", source)
    found = evaluator(tmp_path).evaluate(tmp_path / "runs")
    scores = json.loads((run / "scores.json").read_text())
    values = scores["values"]
    images = _opened(run)

    style = CsdFeatures.tiny(0).encode_images(images)
    pairs = [float(style[i] @ style[j]) for i, j in itertools.combinations(range(len(images)), 2)]
    assert values["self_csd"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    story = load_story(source)
    ids = [c.id for c in story.characters]
    first = {
        c.id: CsdFeatures.tiny(0).encode_images([Image.open(c.references[0]).convert("RGB")])[0]
        for c in story.characters
    }
    shot_scores = []
    for shot in story.frames:  # a shot without characters is compared with the story's first character
        listed = list(shot.characters) or [ids[0]]
        shot_scores.append(sum(float(style[len(shot_scores)] @ first[c]) for c in listed) / len(listed))
    assert values["cross_csd"] == pytest.approx(sum(shot_scores) / len(shot_scores), abs=1e-5)
    assert [f["cross_csd"] for f in scores["frames"]] == pytest.approx(shot_scores, abs=1e-5)

    aesthetic = AestheticScorer.tiny(0).score_images(images)
    assert values["aesthetic"] == pytest.approx(float(aesthetic.mean()), abs=1e-5)

    probs = InceptionClassifier.tiny(0).class_probabilities(images).double()
    marginal = probs.mean(dim=0)
    naive_is = math.exp(float((probs * (probs / marginal).log()).sum(dim=1).mean()))
    row = found.results["groups"][0]["metrics"]["inception_score"]
    assert row["mean"] == pytest.approx(naive_is, rel=1e-5) and row["n"] == len(images) and row["over"] == "frames"
    assert "inception_score" not in values  # one per results row, none per story

    for metric in VISTORY_JUDGE_METRICS:
        assert values[metric] is None  # NaN in scores.json
        assert "--judge-url" in scores["details"]["skipped_metrics"][metric]
    assert set(found.results["metric_notes"]) == set(VISTORY_JUDGE_METRICS)
    assert "Not computed: `prompt_align_scene`" in (tmp_path / "runs" / "results.md").read_text()
    assert [c["metric"] for c in found.results["columns"]][:7] == [
        "cross_csd", "self_csd", "cids_cross", "cids_self", "aesthetic", "inception_score", "occm",
    ]  # fmt: skip
    assert found.results["published"] and all(
        set(p["values"]) <= {c["metric"] for c in found.results["columns"]} for p in found.results["published"]
    )  # every leaderboard column is one of ours


def test_the_inception_score_pools_every_frame_of_a_row_and_features_come_from_the_cache(tmp_path, stories):
    from storycast.evaluation.vistory_diversity import inception_score
    from storycast.vision.inception import InceptionClassifier

    runs = [vistory_run(tmp_path / "runs" / name, stories / name / "story.json", seed=k) for k, name in
            enumerate(("01", "02"))]  # fmt: skip
    metrics = ("inception_score", "self_csd")  # no CIDS: no GroundingDINO is loaded
    first = evaluator(tmp_path, metrics=metrics)
    found = first.evaluate(tmp_path / "runs")
    assert "detector" not in first.sources and set(first.sources) == {"csd", "inception"}
    probs = InceptionClassifier.tiny(0).class_probabilities([i for run in runs for i in _opened(run)])
    row = found.results["groups"][0]["metrics"]["inception_score"]
    assert row["n"] == 6 and row["mean"] == pytest.approx(inception_score(probs).mean, rel=1e-5)
    again = evaluator(tmp_path, metrics=metrics)
    second = again.evaluate(tmp_path / "runs")
    assert len(second.reused) == 2 and again.cache.misses == 0  # nothing encoded again
    assert second.results["groups"][0]["metrics"]["inception_score"] == row


def test_a_judge_scores_each_shot_and_each_matched_character_and_a_judge_given_later_rescores(tmp_path, stories):
    aspects = {load_prompt("scene"): 4, load_prompt("character_action"): 2, load_prompt("camera"): 1}

    def answer(body):
        messages = body["messages"]
        if messages[0]["role"] == "system":  # a character's crop
            return chat("Score: 3")
        return chat(f"The shot fits. Score: {aspects[messages[0]['content'][0]['text']]}")

    run = vistory_run(tmp_path / "runs" / "01", stories / "01" / "story.json")
    assert len(evaluator(tmp_path).evaluate(run).scored) == 1
    server = FakeJudge(answer)
    try:
        judge = JudgeOptions(url=server.url, cache_dir=str(tmp_path / "judge"))
        found = evaluator(tmp_path, judge=judge).evaluate(run)
    finally:
        server.close()
    assert len(found.scored) == 1  # scores made without a judge are made again with one
    scores = json.loads((run / "scores.json").read_text())
    values = scores["values"]
    assert (values["prompt_align_scene"], values["prompt_align_camera"], values["prompt_align_character_action"]) == (
        4.0, 1.0, 2.0,
    )  # fmt: skip
    judged = scores["details"]["vistory"]["single_character_action"]
    assert set(judged) == {"0", "1", "3"}  # the shots with characters
    shots = [3 if judged[s] else 0 for s in sorted(judged)]
    assert values["single_character_action"] == round(sum(shots) / len(shots))
    single = values["single_character_action"]
    assert values["prompt_align"] == pytest.approx((4 + 1 + 2 + 2 * single) / 5)
    names = {c.id: c.name for c in load_story(stories / "01" / "story.json").characters}
    asked = [
        r["body"]["messages"][1]["content"][1]["text"]
        for r in server.requests
        if r["body"]["messages"][0]["role"] == "system"
    ]
    assert sorted(asked) == sorted(f"Evaluated Character Name is {names[c]}" for s in judged.values() for c in s)
    assert scores["details"]["judge"]["unparsed"] == 0 and "skipped_metrics" not in scores["details"]
    assert found.results["groups"][0]["metrics"]["prompt_align"]["mean"] == pytest.approx(values["prompt_align"])
    assert asked and len(server.requests) == 3 * 4 + len(asked)  # three aspects of four shots, one per crop


@pytest.mark.parametrize(
    ("flag", "metric"),
    [("--csd-model", "self_csd"), ("--aesthetic-model", "aesthetic"), ("--inception-model", "inception_score")],
)
def test_each_model_flag_replaces_its_tiny_stand_in_and_a_missing_file_is_named_with_the_flag(
    tmp_path, stories, capsys, flag, metric
):
    from storycast.cli.main import main

    run = vistory_run(tmp_path / "run", stories / "02" / "story.json")
    others = [m for m in resolve_preset("vistorybench").metrics if m != metric]
    command = ["evaluate", str(run), "--eval-preset", "vistorybench", "--preset", "tiny", "--no-progress",
               "--cache-dir", str(tmp_path / "cache"), *itertools.chain(*(("--skip", m) for m in others))]  # fmt: skip
    assert main([*command, flag, str(tmp_path / "missing.pth")]) == 2
    assert flag in capsys.readouterr().err
    assert main(command) == 0  # the tiny stand-in

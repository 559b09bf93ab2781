"""ViStoryBench's per-story driver on hand-made detections and encoders, and `storycast evaluate` on a ViStory run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.evaluation import vistory_metrics as V
from storycast.evaluation.vistory_scoring import CharacterRef, score_vistory_story

WHOLE = torch.tensor([[0.5, 0.5, 1.0, 1.0]])


def _colour_features(crop: Image.Image) -> dict[str, torch.Tensor]:
    mean = torch.tensor(np.asarray(crop, dtype=np.float64).reshape(-1, 3).mean(0))
    return {"clip": torch.nn.functional.normalize(mean + 1.0, dim=0)}


def _image(tmp_path, name, colour, size=32):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_one_box_per_shot_gives_the_cosines_of_the_crops(tmp_path):
    ref = _image(tmp_path, "ref", (200, 10, 10))
    frames = [Image.new("RGB", (32, 32), c) for c in ((190, 20, 10), (10, 200, 10), (50, 50, 50))]
    calls = []

    def detect(image):
        return (
            (WHOLE, torch.tensor([0.9]))
            if image.getpixel((0, 0)) != (50, 50, 50)
            else (torch.zeros(0, 4), torch.zeros(0))
        )

    def encode(crops, human):
        calls.append(human)
        return [_colour_features(c) for c in crops]

    fox = CharacterRef("fox", human=False, references=(ref,))
    out = score_vistory_story([fox], [["fox"], ["fox"], ["fox"]], frames, detect=detect, encode=encode)
    r = _colour_features(Image.open(ref).convert("RGB"))["clip"]
    a, b = (_colour_features(f)["clip"] for f in frames[:2])
    assert out.values["cids_cross"] == pytest.approx(float((a @ r + b @ r) / 2))
    assert out.values["cids_self"] == pytest.approx(float(a @ b))
    # OCCM: one box for one character twice, none once: (100 + 100 + 100 e^-1) / 3.
    assert out.values["occm"] == pytest.approx((200 + 100 * math.exp(-1)) / 3, rel=1e-5)
    assert out.frames[2]["occm"] == pytest.approx(100 * math.exp(-1), rel=1e-5)
    # A uniform reference is its own mirror image: no preference, 0.5.
    assert out.values["copy_paste"] == pytest.approx(0.5)
    assert set(calls) == {False}


def test_unmatched_characters_count_zero_and_empty_shots_have_no_occm(tmp_path):
    ref_a, ref_b = _image(tmp_path, "a", (200, 10, 10)), _image(tmp_path, "b", (10, 10, 200))
    frames = [Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (0, 0, 0))]

    def detect(image):
        return WHOLE, torch.tensor([0.8])

    def encode(crops, human):
        return [_colour_features(c) for c in crops]

    characters = [CharacterRef("a", False, (ref_a,)), CharacterRef("b", False, (ref_b,))]
    out = score_vistory_story(characters, [["a", "b"], []], frames, detect=detect, encode=encode)
    # One box, two characters: the Hungarian method gives it to 'a' (the closer); 'b' is unmatched -> (0, 0).
    assert out.details["cids"]["b"] == {"cross": 0.0, "self": 0.0}
    assert out.values["cids_self"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert out.values["occm"] == pytest.approx(100 * math.exp(-1 / 2), rel=1e-5)
    assert "occm" not in out.frames[1]
    assert out.details["matched_characters"] == 1 and out.details["expected_characters"] == 2


def test_humans_go_to_the_face_encoder_and_a_faceless_reference_is_refused(tmp_path):
    ref = _image(tmp_path, "h", (120, 90, 80))
    seen = {}

    def detect(image):
        return WHOLE, torch.tensor([0.7])

    def encode(crops, human):
        seen.setdefault(human, 0)
        seen[human] += len(crops)
        return (
            [{"arcface": _colour_features(c)["clip"]} for c in crops]
            if human
            else [_colour_features(c) for c in crops]
        )

    people = [CharacterRef("mara", True, (ref,)), CharacterRef("pip", False, (ref,))]
    frame = Image.new("RGB", (32, 32), (120, 90, 80))
    score_vistory_story(people, [["mara", "pip"]], [frame], detect=detect, encode=encode)
    assert seen[True] > 0 and seen[False] > 0

    def faceless(crops, human):
        return [None for _ in crops] if human else [_colour_features(c) for c in crops]

    with pytest.raises(V.MetricInputError, match="'mara': no reference image gives features"):
        score_vistory_story(people, [["mara"]], [frame], detect=detect, encode=faceless)


def test_storycast_evaluate_scores_a_vistory_run_with_the_tiny_extractors(tmp_path, monkeypatch):
    from storycast.cli.main import main
    from storycast.story.parse import load_story, story_to_dict
    from tests.evaluation.fakes import frame, write_run
    from tests.story.vistory_fixture import write_vistory

    monkeypatch.setenv("STORYCAST_CACHE", str(tmp_path / "cache"))
    source = write_vistory(tmp_path / "ViStory") / "01" / "story.json"
    for k, path in enumerate(sorted((source.parent / "image" / "Mara").iterdir())):
        frame([(8, 8, 0)], shade=40 + k).save(path)  # the human character's photos show a face the tiny SCRFD finds
    story = load_story(source)
    run = write_run(tmp_path / "run", [frame([(8, 8, k)]) for k in range(len(story))], story_to_dict(story))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["story"].update({"source": str(source), "source_format": "vistory"})
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", str(run), "--eval-preset", "vistorybench", "--preset", "tiny", "--no-progress"]) == 0
    scores = json.loads((run / "scores.json").read_text())
    from storycast.evaluation.presets import VISTORYBENCH

    per_story = [m for m in VISTORYBENCH.ordered_metrics if m != "inception_score"]  # IS: one per results row
    assert list(scores["values"]) == per_story  # every other metric, the judge's NaN
    assert 0 < scores["values"]["occm"] <= 100
    assert "occm" not in scores["frames"][2]  # the shot without characters
    assert set(scores["details"]["vistory"]["cids"]) == {c.id for c in story.characters}
    results = json.loads((run / "results.json").read_text())
    assert results["preset"] == "vistorybench" or results["evaluation"]["preset"]["name"] == "vistorybench"

"""ConsiStory on tiny SDXL: the anchors first and every later frame alone, UNet evaluations as stated, anchors
that do not depend on later frames, later frames that see only the anchors, resume through rebuilt anchors,
memory flat in story length, everything switched off equal to the stock pipeline, and bad input refused before
drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from storycast.errors import SettingsError, StoryError
from storycast.methods.base import RunContext
from storycast.methods.consistory.method import ConsiStoryMethod
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from tests.methods.helpers import pixels, plan_for, two_friends

STEPS = 10
GEN = {"steps": STEPS, "width": 64, "height": 64}
PER_PASS = 2 * (STEPS + STEPS // 10)  # guided steps and the vanilla passes of steps 1 .. T/10
DOG = {
    "title": "Rex",
    "style": "A photo of",
    "characters": [{"id": "rex", "description": "a cute dog", "class_word": "dog"}],
    "frames": [
        {"text": "{rex} sitting on the beach"},
        {"text": "{rex} standing in the snow"},
        {"text": "{rex} running in a park"},
        {"text": "{rex} asleep on a sofa"},
    ],
}


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def planned(data, model=None, settings=None, generation=GEN):
    return plan_for("consistory", data, preset="tiny", model=model, settings=settings, generation=generation)


def draw(models, data, settings=None, groups=None):
    """Every group of the plan (or the chosen ones) drawn by one method instance through the runner's loop, which
    restores the groups the chosen ones read."""
    from storycast.runs.runner import draw_groups

    plan = planned(data, model=models, settings=settings)
    method = ConsiStoryMethod(models, plan.settings)
    chosen = None if groups is None else [plan.groups[g] for g in groups]
    results = {}
    for _, frames, _ in draw_groups(plan, method, models, RunContext(), groups=chosen):
        for result in frames:
            results[result.index] = result
    return results


def test_the_anchors_come_first_and_every_later_frame_is_its_own_group():
    plan = planned(DOG)
    assert [(g.frames, g.group.depends_on, g.group.role) for g in plan.groups] == [
        ((0, 1), (), "anchors"),
        ((2,), (0,), "frames"),
        ((3,), (0,), "frames"),
    ]
    real = planned(DOG, model=ModelSpec(source="sdxl"), generation={})
    assert (real.generation.steps, real.generation.guidance_scale) == (50, 5.0)  # consistory_run, the pipeline
    assert real.settings.scheduler == "ddim" and real.settings.freeu


def test_consistory_draws_a_two_character_story_end_to_end(tmp_path):
    from storycast.cli.main import main

    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(two_friends()))
    out = tmp_path / "run"
    args = ["generate", str(story), "--method", "consistory", "--preset", "tiny", "--out", str(out), "--steps", "10"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 5
    records = {r["index"]: r for r in manifest["frames"]}
    assert [records[i]["metadata"]["role"] for i in range(5)] == ["anchor", "anchor", *["reads the anchors"] * 3]
    for index in (0, 1, 2, 4):
        assert records[index]["metadata"]["passes"] == 2
        assert records[index]["metadata"]["denoiser_evaluations"] == 2 * PER_PASS  # 220 at T = 50
    # Frame 3 names nobody: it shares nothing and takes nothing, so its second pass would repeat its first.
    assert records[3]["metadata"]["passes"] == 1
    assert records[3]["metadata"]["denoiser_evaluations"] == PER_PASS
    assert set(records[2]["extras"]) == {"mask-mara", "mask-tom"} and records[3]["extras"] == {}
    assert (out / "storyboard.png").is_file()


def test_the_evaluations_per_frame_follow_the_settings(sdxl):
    one_pass = draw(sdxl, DOG, {"injection": "false"}, groups=[0, 1])
    assert {r.metadata["denoiser_evaluations"] for r in one_pass.values()} == {PER_PASS}
    no_blend = draw(sdxl, DOG, {"share_queries": "false", "injection": "false"}, groups=[0])
    assert {r.metadata["denoiser_evaluations"] for r in no_blend.values()} == {2 * STEPS}


def test_anchors_do_not_depend_on_later_frames_and_later_frames_see_only_the_anchors(sdxl):
    story = draw(sdxl, DOG)
    anchors_alone = draw(sdxl, {**DOG, "frames": DOG["frames"][:2]})
    for index in (0, 1):
        assert np.array_equal(pixels(story[index].image), pixels(anchors_alone[index].image))
    # Frame 3 with its own seed drawn in a story without frame 2: the same image (later frames never meet).
    seeded = {**DOG, "frames": [dict(f, seed=100 + i) for i, f in enumerate(DOG["frames"])]}
    full = draw(sdxl, seeded)
    skipping = draw(sdxl, {**seeded, "frames": [seeded["frames"][i] for i in (0, 1, 3)]})
    assert np.array_equal(pixels(full[3].image), pixels(skipping[2].image))
    # And the anchors matter to it: without sharing and injection the frame is another image.
    alone = draw(sdxl, seeded, {"sdsa": "false", "injection": "false", "share_queries": "false"}, groups=[0, 2])
    assert np.abs(pixels(full[3].image) - pixels(alone[3].image)).max() > 0
    assert full[3].metadata["injected_pixels"] > 0


def test_later_frames_batched_together_are_the_frames_of_one_by_one(sdxl):
    batched_plan = planned(DOG, settings={"frames_per_group": "2"})
    assert [g.frames for g in batched_plan.groups] == [(0, 1), (2, 3)]
    alone = draw(sdxl, DOG)
    together = draw(sdxl, DOG, {"frames_per_group": "2"})
    for index in (2, 3):
        assert np.abs(pixels(alone[index].image) - pixels(together[index].image)).max() <= 1
        assert together[index].metadata["denoiser_evaluations"] == alone[index].metadata["denoiser_evaluations"]


def test_a_later_frame_drawn_after_a_restart_rebuilds_the_anchors_and_is_the_same(sdxl):
    in_one_run = draw(sdxl, DOG)
    restarted = draw(sdxl, DOG, groups=[2])  # a new method instance: the anchors were drawn by an earlier run
    assert np.array_equal(pixels(in_one_run[3].image), pixels(restarted[3].image))


def test_memory_is_flat_in_story_length(sdxl):
    short = draw(sdxl, DOG, groups=[0, 1])
    longer = {**DOG, "frames": DOG["frames"] * 2}
    long = draw(sdxl, longer, groups=[0, 1, 5])
    assert short[2].metadata["anchor_bytes"] == long[6].metadata["anchor_bytes"] > 0


def test_with_everything_off_consistory_equals_the_stock_pipeline(sdxl):
    """The stock pipeline called as the authors call theirs: without a negative prompt (zero unconditional
    embeddings), or with the one a frame writes."""
    from storycast.utils.torch_utils import make_generator

    off = {"sdsa": "false", "share_queries": "false", "injection": "false", "freeu": "false", "scheduler": "model"}
    data = {**DOG, "frames": [dict(DOG["frames"][0], negative_prompt="blurry"), *DOG["frames"][1:]]}
    plan = planned(data, model=sdxl, settings=off)
    results = draw(sdxl, data, off)
    for index, result in results.items():
        stock = sdxl.pipeline(
            plan.story.prompt(index),
            negative_prompt=plan.story.negative_prompt(index),
            num_inference_steps=STEPS,
            guidance_scale=plan.story.settings.guidance_scale,
            width=64,
            height=64,
            generator=make_generator(plan.story.frame_seed(index)),
        ).images[0]
        assert np.abs(pixels(result.image) - pixels(stock)).max() <= 1


def spy_on_encode(models, monkeypatch):
    """The guidance pairs the method encodes, in order."""
    encoded = []
    original = models.backbone.encode

    def encode(*args, **kwargs):
        encoded.append(original(*args, **kwargs))
        return encoded[-1]

    monkeypatch.setattr(models.backbone, "encode", encode)
    return encoded


def test_no_negative_prompt_gives_zero_unconditional_embeddings_and_a_written_one_is_encoded(sdxl, monkeypatch):
    """The authors call their SDXL pipeline without a negative prompt, so diffusers' force_zeros_for_empty_prompt
    makes the unconditional embeddings zeros, per-token and pooled; a negative prompt the story writes is encoded."""
    encoded = spy_on_encode(sdxl, monkeypatch)
    data = {**DOG, "frames": [dict(DOG["frames"][0], negative_prompt="blurry"), *DOG["frames"][1:]]}
    plan = planned(data, model=sdxl)
    draw(sdxl, data, {"injection": "false", "share_queries": "false"}, groups=[0])  # the anchors, frames 0 and 1
    uncond = encoded[0].uncond
    pipe = sdxl.pipeline
    _, written, _, written_pooled = pipe.encode_prompt(
        prompt=[plan.story.prompt(0)], device="cpu", negative_prompt=["blurry"]
    )
    torch.testing.assert_close(uncond.embeds[0], written[0])  # (encoded in a batch of two here)
    torch.testing.assert_close(uncond.pooled[0], written_pooled[0])
    assert written.abs().max() > 0.1
    assert not uncond.embeds[1].any() and not uncond.pooled[1].any()  # frame 1 has none: zeros
    _, none, _, none_pooled = pipe.encode_prompt(prompt=[plan.story.prompt(1)], device="cpu", negative_prompt=None)
    assert not none.any() and not none_pooled.any()  # what the authors' call gets
    assert uncond.time_ids.equal(encoded[0].cond.time_ids)  # the size ids stay


def test_dift_features_are_read_after_freeu_scaled_them_in_place_unless_set_otherwise(sdxl):
    """The authors keep a view of the first up block's output; the next block's FreeU scales the first half of its
    channels by b2 in place before the correspondences read it. dift_after_freeu=false keeps the unscaled output."""
    from storycast.pipelines.freeu import FREEU_SDXL

    def anchor_features(settings):
        plan = planned(DOG, model=sdxl, settings=settings)
        method = ConsiStoryMethod(sdxl, plan.settings)
        method.prepare(plan.story, RunContext())
        method.generate(plan.story, plan.groups[0].frames, RunContext())
        return torch.stack(method._anchors.features)

    scaled = anchor_features({})
    unscaled = anchor_features({"dift_after_freeu": "false"})
    half = unscaled.shape[1] // 2
    assert sdxl.pipeline.unet.up_blocks[1].resolution_idx == 1  # the block whose FreeU factor is b2
    # The Gaussian smoothing is per channel and linear: scaling before it is scaling after it.
    torch.testing.assert_close(scaled[:, :half], unscaled[:, :half] * FREEU_SDXL.b2)
    torch.testing.assert_close(scaled[:, half:], unscaled[:, half:], rtol=0, atol=0)
    assert not torch.allclose(scaled, unscaled)
    # Without FreeU the two are the same features.
    off = anchor_features({"freeu": "false"})
    torch.testing.assert_close(off, anchor_features({"freeu": "false", "dift_after_freeu": "false"}), rtol=0, atol=0)


def test_the_model_is_left_as_it_was(sdxl):
    processors = dict(sdxl.pipeline.unet.attn_processors)
    draw(sdxl, DOG, groups=[0, 1])
    assert {k: type(v) for k, v in sdxl.pipeline.unet.attn_processors.items()} == {
        k: type(v) for k, v in processors.items()
    }
    assert all(getattr(block, "b1", None) is None for block in sdxl.pipeline.unet.up_blocks)  # FreeU off again
    assert not sdxl.pipeline.unet.up_blocks[0]._forward_hooks


def test_a_benchmark_story_draws_end_to_end(tmp_path):
    from storycast.cli.main import main

    people = ["young boy with curly black hair", "young girl with long wavy hair"]
    settings = ["playing chess in a park", "painting on a canvas", "reading under a lamp"]
    bench = {
        "prompts": [f"A photo of {people[0]}, {people[1]}, {s}" for s in settings],
        "token": ["boy", "girl"],
        "character": people,
        "settings_types": ["action", "action", "background"],
        "settings": settings,
    }
    path = tmp_path / "story_000.json"
    path.write_text(json.dumps(bench))
    out = tmp_path / "run"
    assert (
        main(["generate", str(path), "--method", "consistory", "--preset", "tiny", "--out", str(out), "--steps", "3"])
        == 0
    )
    records = json.loads((out / "manifest.json").read_text())["frames"]
    assert len(records) == 3 and all(len(r["extras"]) == 2 for r in records)  # both located in every frame


def test_bad_input_is_refused_before_drawing(tmp_path):
    with pytest.raises(StoryError, match=r"frames: consistory draws the story's first 2 frames as its anchors"):
        planned({**DOG, "frames": DOG["frames"][:1]})
    assert len(planned({**DOG, "frames": DOG["frames"][:1]}, settings={"anchors": "1"}).groups) == 1
    with pytest.raises(SettingsError, match="runs on sdxl models"):
        plan_for("consistory", DOG, preset="tiny-sd15", generation=GEN)
    with pytest.raises(SettingsError, match="mask_dropout must be between 0 and 1"):
        planned(DOG, settings={"mask_dropout": "2"})


def test_levels_without_layers_are_refused_before_drawing(sdxl):
    for settings, message in (
        ({"mask_level": "0"}, "mask_level=0 has no cross-attention layers"),
        ({"injection_level": "5"}, "injection_level=5 has no self-attention layers"),
    ):
        plan = planned(DOG, model=sdxl, settings=settings)
        with pytest.raises(SettingsError, match=message):
            ConsiStoryMethod(sdxl, plan.settings).prepare(plan.story, RunContext())


def test_the_benchmark_command_runs_consistory_with_the_papers_rows_beside(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from storycast.cli.main import main
    from tests.evaluation.fakes import write_suite

    suite = write_suite(tmp_path / "suite", stories=1, frames=3)
    out = tmp_path / "bench"
    run = ["--method", "consistory", "--preset", "tiny", "--steps", "2", "--width", "64", "--height", "64"]
    assert main(["benchmark", str(suite), *run, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| consistory | suite | 1 |" in table and "ConsiStory" in table and "SIGGRAPH'24" in table
    manifest = json.loads((out / "suite" / "story_000" / "manifest.json").read_text())
    assert manifest["method"]["settings"]["anchors"] == 2 and len(manifest["frames"]) == 3

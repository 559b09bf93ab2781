"""Storynizor end to end on tiny models: anchors then groups, resume through the anchors, memory flat in story
length, the identity branch only where a character is named, AMSA off equal to diffusers' own pipeline, and bad
input refused with the file and the fix (before any model loads where it can be known then)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from storycast.errors import MissingWeightsError, ModelLoadError, StorycastError, StoryError
from storycast.methods.base import RunContext
from storycast.methods.storynizor.method import StorynizorMethod
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import parse_story
from tests.methods.helpers import GEN, TWO_FRIENDS_FRAMES, pixels, plan_for, two_friends


def story_data(frames=None, **extra):
    return two_friends(frames or [*TWO_FRIENDS_FRAMES, {"text": "{tom} asleep in a chair"}], **extra)


@pytest.fixture(scope="module")
def sd15():
    return load_models(ModelSpec(source="tiny-sd15", device="cpu"))


def planned(data, model=None, settings=None, generation=GEN, out_dir=None):
    return plan_for(
        "storynizor", data, preset="tiny-sd15", model=model, settings=settings, generation=generation, out_dir=out_dir
    )


def photo(path, colour=(200, 120, 90)):
    Image.new("RGB", (48, 64), colour).save(path)
    return str(path)


def test_anchors_come_first_and_every_later_group_depends_on_them():
    plan = planned(story_data(), settings={"anchors": "2", "frames_per_group": "3"})
    assert [(g.frames, g.group.depends_on, g.group.role) for g in plan.groups] == [
        ((0, 1), (), "anchors"),
        ((2, 3, 4), (0,), "frames"),
        ((5,), (0,), "frames"),
    ]
    no_anchors = planned(story_data(), settings={"anchors": "0", "frames_per_group": "4"})
    assert [(g.frames, g.group.depends_on) for g in no_anchors.groups] == [((0, 1, 2, 3), ()), ((4, 5), ())]
    # diffusers' Stable Diffusion defaults: 50 steps, guidance 7.5, 512 px on SD 1.5.
    real = planned(story_data(), model=ModelSpec(source="sd15"), generation={})
    assert (real.generation.steps, real.generation.guidance_scale, real.generation.width) == (50, 7.5, 512)


@pytest.mark.parametrize("preset", ["tiny-sd15", "tiny"])
def test_storynizor_draws_a_two_character_story_end_to_end(preset, tmp_path):
    from storycast.cli.main import main

    data = story_data()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png")]
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    args = ["generate", str(story), "--method", "storynizor", "--preset", preset, "--out", str(out)]
    assert main([*args, "--set", "anchors=2", "--set", "identity=first-frame"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 6
    assert [g["role"] for g in manifest["groups"]] == ["anchors", "frames"]
    steps = manifest["generation"]["steps"]
    records = manifest["frames"]
    for record in records:
        assert record["metadata"]["denoiser_evaluations"] == 2 * steps  # each frame denoised once
    assert records[0]["metadata"]["identity"] == {"mara": "photos (1: 0 face crop(s), 0 segmented)"}
    assert records[5]["metadata"]["identity"] == {"tom": "first-frame (frame 1)"}  # tom's crop in anchor 1
    assert records[2]["metadata"]["role"] == "reads the anchors"
    assert set(records[2]["extras"]) == {"mask-mara", "mask-tom"}
    assert records[3]["extras"] == {}  # a frame naming nobody has no character mask
    assert (out / "storyboard.png").is_file()


def test_a_benchmark_story_draws_end_to_end(tmp_path):
    from storycast.cli.main import main

    people = ["young boy with curly black hair", "young girl with long wavy hair"]
    settings = ["playing chess in a park", "painting on a canvas", "reading under a lamp", "baking bread"]
    bench = {
        "prompts": [f"A photo of {people[0]}, {people[1]}, {s}" for s in settings],
        "token": ["boy", "girl"],
        "character": people,
        "settings_types": ["action", "action", "background", "action"],
        "settings": settings,
    }
    path = tmp_path / "story_000.json"
    path.write_text(json.dumps(bench))
    out = tmp_path / "run"
    args = ["generate", str(path), "--method", "storynizor", "--preset", "tiny-sd15", "--out", str(out)]
    assert main([*args, "--steps", "2", "--set", "anchors=2", "--set", "frames_per_group=2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["frames"]) == 4
    assert all(len(r["extras"]) == 2 for r in manifest["frames"])  # both characters located in every frame


def test_without_amsa_and_identity_frames_equal_the_stock_pipeline_with_ddim(sd15):
    from diffusers import DDIMScheduler

    from storycast.utils.torch_utils import make_generator

    plan = planned(story_data(), model=sd15, settings={"amsa": "false", "anchors": "0"})
    results = StorynizorMethod(sd15, plan.settings).generate(plan.story, (0, 1, 2, 3), RunContext())
    pipe = sd15.pipeline
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    try:
        for result in results:
            stock = pipe(
                plan.story.prompt(result.index),
                negative_prompt="",
                num_inference_steps=GEN["steps"],
                guidance_scale=plan.story.settings.guidance_scale,
                width=64,
                height=64,
                generator=make_generator(plan.story.frame_seed(result.index)),
            ).images[0]
            assert np.abs(pixels(result.image) - pixels(stock)).max() <= 1
    finally:
        pipe.scheduler = original


def test_amsa_changes_the_frames_that_share_a_character(sd15):
    plan = planned(story_data(), model=sd15, settings={"anchors": "0", "mask_dropout": "0"})
    shared = StorynizorMethod(sd15, plan.settings).generate(plan.story, (0, 1, 2, 3), RunContext())
    plain_plan = planned(story_data(), model=sd15, settings={"anchors": "0", "amsa": "false"})
    plain = StorynizorMethod(sd15, plain_plan.settings).generate(plan.story, (0, 1, 2, 3), RunContext())
    assert np.abs(pixels(shared[0].image) - pixels(plain[0].image)).max() > 2  # mara shares with frame 2
    assert np.abs(pixels(shared[3].image) - pixels(plain[3].image)).max() <= 1  # nobody: sees only itself


def test_the_identity_reaches_only_the_frames_naming_its_character(sd15, tmp_path):
    data = story_data()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png")]
    plan = planned(data, model=sd15, settings={"anchors": "0", "id_scale": "1.0"})
    method = StorynizorMethod(sd15, plan.settings)
    method.prepare(plan.story, RunContext())
    assert set(method._identity) == {"mara"} and method._identity["mara"].shape[0] == 2  # [uncond, cond]
    injected = method.generate(plan.story, (0, 1, 2, 3), RunContext())
    none_plan = planned(data, model=sd15, settings={"anchors": "0", "identity": "none"})
    text_only = StorynizorMethod(sd15, none_plan.settings)
    text_only.prepare(none_plan.story, RunContext())
    plain = text_only.generate(none_plan.story, (0, 1, 2, 3), RunContext())
    assert np.abs(pixels(injected[0].image) - pixels(plain[0].image)).max() > 2
    assert np.abs(pixels(injected[3].image) - pixels(plain[3].image)).max() <= 1


def test_memory_stays_flat_however_long_the_story_is(sd15):
    """The anchors' cache is as large for 6 frames as for 14, and no layer call attends to more tokens than a
    frame's own, its group's and the anchors' (what one group can hold, whatever the story's length)."""
    from storycast.attention import automask

    def draw(length):
        frames = [{"text": f"{{mara}} in scene {i}"} for i in range(length)]
        plan = planned(story_data(frames), model=sd15, settings={"anchors": "2", "frames_per_group": "2"})
        method = StorynizorMethod(sd15, plan.settings)
        longest = 0
        original = automask.AutoMaskSelfAttention.key_tokens

        def measured(self, attn, hidden, context):
            nonlocal longest
            tokens = original(self, attn, hidden, context)
            longest = max(longest, max(row.shape[0] for row in tokens) / hidden.shape[1])  # in frames' worth
            return tokens

        automask.AutoMaskSelfAttention.key_tokens = measured
        try:
            for group in plan.groups:
                method.generate(plan.story, group.frames, RunContext())
        finally:
            automask.AutoMaskSelfAttention.key_tokens = original
        return method.anchors.nbytes, longest

    short_cache, short_keys = draw(6)
    long_cache, long_keys = draw(14)
    assert short_cache > 0 and long_cache == short_cache
    group, anchors = 2, 2
    assert 1 < short_keys <= group + anchors and 1 < long_keys <= group + anchors


def test_resuming_rebuilds_the_anchors_and_editing_an_anchor_redraws_everything(sd15, tmp_path):
    out = tmp_path / "run"
    options = RunOptions(out_dir=out, storyboard=False)
    settings = {"anchors": "2", "frames_per_group": "2"}
    first = generate_story(
        parse_story(story_data()), "storynizor", sd15, options, generation=GEN, method_settings=settings
    )
    assert first.drawn == [0, 1, 2, 3, 4, 5]
    before = pixels(Image.open(out / "frames" / "frame_004.png"))
    (out / "frames" / "frame_004.png").unlink()
    resumed = generate_story(
        parse_story(story_data()), "storynizor", sd15, options, generation=GEN, method_settings=settings
    )
    assert resumed.drawn == [4, 5]  # its group, drawn again against the rebuilt anchors
    assert np.array_equal(pixels(Image.open(out / "frames" / "frame_004.png")), before)
    edited = story_data()
    edited["frames"][1]["text"] = "{tom} fishing at a river"
    assert planned(edited, settings=settings, out_dir=out).frames_to_draw == [0, 1, 2, 3, 4, 5]


def test_a_seed_gives_the_same_frames(sd15):
    plan = planned(story_data(), model=sd15, settings={"anchors": "0"})
    first = StorynizorMethod(sd15, plan.settings).generate(plan.story, (0, 1, 2, 3), RunContext())
    second = StorynizorMethod(sd15, plan.settings).generate(plan.story, (0, 1, 2, 3), RunContext())
    assert all(np.array_equal(pixels(a.image), pixels(b.image)) for a, b in zip(first, second, strict=True))


def test_bad_input_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    import storycast.runs.runner

    def no_loading(spec):
        raise AssertionError("bad input must be refused before the model loads")

    monkeypatch.setattr(storycast.runs.runner, "load_models", no_loading)
    not_an_image = tmp_path / "mara.png"
    not_an_image.write_text("hello")
    data = story_data()
    data["characters"][0]["references"] = [str(not_an_image)]
    with pytest.raises(StoryError, match=r"characters\[0\]\.references\[0\]: reference photo .*mara\.png.*Fix"):
        planned(data)
    with pytest.raises(StoryError, match=r"characters\[1\]\.references: identity=photos .*'tom' has none.*Fix"):
        planned(story_data(), settings={"identity": "photos"})
    data["characters"][0]["references"] = [photo(tmp_path / "good.png")]
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"det_10g\.onnx.*--set face_models=/path"):
        planned(data, settings={"reference_crop": "face", "face_models": str(tmp_path / "no-faces")})
    for name, value, message in (
        ("mask_dropout", "1.5", "mask_dropout must be between 0 and 1"),
        ("frames_per_group", "0", "frames_per_group must be"),
        ("blocks", "left", "blocks"),
    ):
        with pytest.raises(StorycastError, match=message):
            planned(story_data(), settings={name: value})


def test_a_reference_photo_without_a_face_is_refused_before_drawing(sd15, tmp_path):
    from storycast.vision.tiny_faces import write_tiny_face_pack

    faces = write_tiny_face_pack(tmp_path / "faces")
    data = story_data()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png", colour=(10, 10, 10))]
    plan = planned(data, model=sd15, settings={"reference_crop": "face", "face_models": str(faces)})
    method = StorynizorMethod(sd15, plan.settings)
    with pytest.raises(StorycastError, match=r"mara\.png: no face was found .*reference_crop=segment"):
        method.prepare(plan.story, RunContext())


def test_segmented_references_cut_the_character_out(sd15, tmp_path):
    """reference_crop=segment finds the character with GroundingDINO + SAM (tiny random models, box threshold 0
    so that a box is found) and whitens the background."""
    from tests.masks.tiny_grounded_sam import save_tiny_grounded_sam

    detector, segmenter = save_tiny_grounded_sam(tmp_path)
    data = story_data()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png")]
    settings = {
        "reference_crop": "segment",
        "reference_detector": str(detector),
        "reference_segmenter": str(segmenter),
        "reference_box_threshold": "0",
    }
    plan = planned(data, model=sd15, settings=settings)
    method = StorynizorMethod(sd15, plan.settings)
    images = method._reference_images(plan.story.character("mara"), plan.settings)
    assert method._identity_source["mara"] == "photos (1: 0 face crop(s), 1 segmented)"
    cut = np.asarray(images[0])
    assert cut.shape[0] == cut.shape[1]  # square, as CLIP's centre crop keeps all of it
    missing = planned(data, model=sd15, settings={**settings, "reference_detector": str(tmp_path / "nowhere")})
    with pytest.raises(MissingWeightsError, match="nowhere"):
        StorynizorMethod(sd15, missing.settings)._reference_images(missing.story.character("mara"), missing.settings)


def test_weights_that_do_not_fit_the_model_are_refused_before_drawing(tmp_path):
    from storycast.adapters.tiny import tiny_ip_adapter_plus_weights
    from storycast.models.tiny import tiny_components

    models = load_models(ModelSpec(source="tiny-sd15", device="cpu"))
    sdxl_file = tmp_path / "ip-adapter-plus-face_sdxl.bin"
    torch.save(tiny_ip_adapter_plus_weights(tiny_components("sdxl")["unet"], 32), sdxl_file)
    data = story_data()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png")]
    plan = planned(data, model=models, settings={"weights": str(sdxl_file), "image_encoder": "auto"})
    method = StorynizorMethod(models, plan.settings)
    with pytest.raises(ModelLoadError, match=r"ip-adapter-plus-face_sdxl\.bin has identity k/v for .*Fix"):
        method.prepare(plan.story, RunContext())


def test_groups_with_nothing_to_read_from_the_anchors_never_redraw_them(sd15):
    """With AMSA off and no first-frame identities, the anchors leave nothing to read: each frame is drawn
    once (an anchor group whose frames name nobody leaves an empty cache and must not be redrawn either)."""
    from storycast.pipelines.noise import count_evaluations

    for settings, frames in (
        ({"amsa": "false"}, None),
        ({}, [{"text": "an empty street"}, {"text": "a quiet harbour"}] + [{"text": "{mara} on a bench"}] * 4),
    ):
        plan = planned(story_data(frames), model=sd15, settings={"anchors": "2", "frames_per_group": "2", **settings})
        method = StorynizorMethod(sd15, plan.settings)
        method.prepare(plan.story, RunContext())
        with count_evaluations(sd15.pipeline.unet) as counter:
            for group in plan.groups:
                method.generate(plan.story, group.frames, RunContext())
        assert counter.evaluations == 2 * GEN["steps"] * len(plan.story)

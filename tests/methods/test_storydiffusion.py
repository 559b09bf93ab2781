"""StoryDiffusion end to end on tiny models: identity frames and reading frames, resume through the bank,
plain sampling at rate 0, reference photos, and bad input refused before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import RunContext
from storycast.methods.storydiffusion.method import StoryDiffusionMethod, identity_frames
from storycast.methods.storydiffusion.settings import StoryDiffusionSettings
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import parse_story
from tests.methods.helpers import GEN, pixels, plan_for, two_friends

story_data = two_friends


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def planned(data, model=None, settings=None, generation=GEN, out_dir=None):
    return plan_for(
        "storydiffusion", data, preset="tiny", model=model, settings=settings, generation=generation, out_dir=out_dir
    )


def test_identity_frames_come_first_and_reading_frames_depend_on_them():
    plan = planned(story_data(), settings={"id_length": "1"})
    groups = [(g.frames, g.group.depends_on, g.group.role) for g in plan.groups]
    assert groups == [
        ((0,), (), "identity frames of mara"),
        ((1,), (), "identity frames of tom"),
        ((2,), (0, 1), "frames"),  # a two-character frame reads both banks
        ((3,), (), "frames"),  # a frame naming nobody reads none
        ((4,), (0,), "frames"),
    ]
    two = story_data([{"text": "{mara} at home"}, {"text": "{mara} outside"}, {"text": "{mara} asleep"}])
    assert identity_frames(parse_story(two), 2) == {"mara": (0, 1)}
    # The authors' defaults: the low-VRAM app's 35 steps, guidance 5, 768 px on SDXL.
    sdxl_plan = planned(story_data(), model=ModelSpec(source="sdxl"), generation={})
    assert (sdxl_plan.generation.steps, sdxl_plan.generation.guidance_scale, sdxl_plan.generation.width) == (
        35,
        5.0,
        768,
    )
    assert planned(story_data(), model=ModelSpec(source="sd15"), generation={}).generation.width == 512


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_storydiffusion_draws_a_two_character_story_end_to_end(family, tmp_path):
    from storycast.cli.main import main

    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(story_data()))
    out = tmp_path / "run"
    preset = "tiny" if family == "sdxl" else "tiny-sd15"
    assert main(["generate", str(story), "--method", "storydiffusion", "--preset", preset, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 5
    assert [g["role"] for g in manifest["groups"]][:2] == ["identity frames of mara", "identity frames of tom"]
    steps = manifest["generation"]["steps"]
    for record in manifest["frames"]:
        # Each frame is denoised once: the UNet evaluations of plain text-to-image with the checkpoint's scheduler
        # (SD 1.5's PNDM, skipping its Runge-Kutta steps, evaluates one timestep twice: T + 1 steps).
        assert record["metadata"]["denoiser_evaluations"] == 2 * (steps + (family == "sd15"))
    assert manifest["frames"][2]["metadata"]["reads"] == ["mara", "tom"]
    assert (out / "storyboard.png").is_file()


def test_the_default_scheduler_is_the_one_of_the_authors_default_run(sdxl, tmp_path):
    """The low-VRAM app's default run (text only, the model it loaded at start) keeps the checkpoint's own
    scheduler; with reference photos it reloads the pipeline and sets DDIM. A scheduler the user sets wins."""
    for preset in ("sdxl", "sd15"):  # plans only: nothing loads
        assert planned(story_data(), model=ModelSpec(source=preset)).settings.scheduler == "model"
    photo = tmp_path / "mara.png"
    Image.new("RGB", (8, 8)).save(photo)
    with_photo = story_data()
    with_photo["characters"][0]["references"] = [str(photo)]
    assert planned(with_photo, model=ModelSpec(source="sdxl")).settings.scheduler == "ddim"
    assert planned(with_photo, model=ModelSpec(source="sdxl"), settings={"scheduler": "euler"}).settings.scheduler == (
        "euler"
    )
    assert planned(story_data(), settings={"scheduler": "ddim"}).settings.scheduler == "ddim"
    # The method resolves what the planner recorded.
    for data, expected in ((story_data(), "model"), (with_photo, "ddim")):
        plan = planned(data, model=sdxl)
        method = StoryDiffusionMethod(sdxl, StoryDiffusionSettings())
        assert method.resolved_settings(plan.story).scheduler == plan.settings.scheduler == expected


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_rate_zero_is_the_stock_pipeline_with_its_own_scheduler_and_freeu(family):
    """With nothing sampled, CSA is plain self-attention: frames equal diffusers' own pipeline with the checkpoint's
    scheduler (the authors' default run) and FreeU, seed for seed."""
    from storycast.pipelines.freeu import FREEU
    from storycast.utils.torch_utils import make_generator

    models = load_models(ModelSpec(source="tiny" if family == "sdxl" else "tiny-sd15", device="cpu"))
    plan = planned(story_data(), model=models, settings={"sa64": 0, "sa32": 0, "sa16": 0})
    method = StoryDiffusionMethod(models, plan.settings)
    story = plan.story
    identity = method.generate(story, (0,), RunContext())[0]
    reading = method.generate(story, (4,), RunContext())[0]

    pipe = models.pipeline
    factors = FREEU[family]
    pipe.enable_freeu(s1=factors.s1, s2=factors.s2, b1=factors.b1, b2=factors.b2)
    for result in (identity, reading):
        stock = pipe(
            story.prompt(result.index),
            negative_prompt="",
            num_inference_steps=GEN["steps"],
            guidance_scale=story.settings.guidance_scale,
            width=64,
            height=64,
            generator=make_generator(story.frame_seed(result.index)),
        ).images[0]
        assert np.abs(pixels(result.image) - pixels(stock)).max() <= 1


def test_sampled_attention_changes_frames_and_the_bank_stays_flat_however_many_frames_read_it(sdxl):
    many = story_data([{"text": "{mara} reading"}] + [{"text": f"{{mara}} in scene {i}"} for i in range(6)])
    # DDIM: on the tiny random UNet at three steps, the checkpoint's Euler leaves the frames' difference within
    # two levels; what is measured here is the sharing, with either sampler.
    plan = planned(many, model=sdxl, settings={"sampling": "fixed", "scheduler": "ddim"})
    method = StoryDiffusionMethod(sdxl, plan.settings)
    story = plan.story
    method.generate(story, (0,), RunContext())
    size = method.bank.nbytes
    assert size > 0
    frames = [method.generate(story, (i,), RunContext())[0] for i in range(1, 7)]
    assert method.bank.nbytes == size
    assert all(f.metadata["bank_bytes"] == size for f in frames)
    plain_settings = planned(many, model=sdxl, settings={"sa64": 0, "sa32": 0, "scheduler": "ddim"}).settings
    unshared = StoryDiffusionMethod(sdxl, plain_settings)
    unshared.generate(story, (0,), RunContext())
    assert np.abs(pixels(frames[0].image) - pixels(unshared.generate(story, (1,), RunContext())[0].image)).max() > 2


def test_editing_an_identity_frame_redraws_exactly_the_frames_that_read_it(sdxl, tmp_path):
    out = tmp_path / "run"
    options = RunOptions(out_dir=out, storyboard=False)
    first = generate_story(parse_story(story_data()), "storydiffusion", sdxl, options, generation=GEN)
    assert first.drawn == [0, 1, 2, 3, 4]
    edited = story_data()
    edited["frames"][0]["text"] = "{mara} reading under a tree"
    assert planned(edited, out_dir=out).frames_to_draw == [0, 2, 4]  # mara's identity frame and its readers
    again = generate_story(parse_story(edited), "storydiffusion", sdxl, options, generation=GEN)
    assert again.drawn == [0, 2, 4] and again.kept == [1, 3]


def test_a_reading_frame_drawn_alone_rebuilds_the_bank_and_matches_the_first_run(sdxl, tmp_path):
    out = tmp_path / "run"
    options = RunOptions(out_dir=out, storyboard=False)
    generate_story(parse_story(story_data()), "storydiffusion", sdxl, options, generation=GEN)
    before = pixels(Image.open(out / "frames" / "frame_004.png"))
    (out / "frames" / "frame_004.png").unlink()
    resumed = generate_story(parse_story(story_data()), "storydiffusion", sdxl, options, generation=GEN)
    assert resumed.drawn == [4]
    assert np.array_equal(pixels(Image.open(out / "frames" / "frame_004.png")), before)


def test_portraits_draw_stories_whose_characters_never_appear_alone(sdxl):
    together = story_data([{"text": "{mara} and {tom} at a market"}, {"text": "{mara} and {tom} on a boat"}])
    with pytest.raises(StorycastError, match=r"'mara' appears alone in 0 frame\(s\).*identity_frames=portraits"):
        planned(together)
    plan = planned(together, model=sdxl, settings={"identity_frames": "portraits", "id_length": "2"})
    assert [g.group.depends_on for g in plan.groups] == [(), ()]
    method = StoryDiffusionMethod(sdxl, plan.settings)
    results = method.generate(plan.story, (0,), RunContext()) + method.generate(plan.story, (1,), RunContext())
    assert {r.index for r in results} == {0, 1} and method.bank.owners() == {"mara", "tom"}


def test_a_portrait_reading_frame_is_redrawn_when_its_portraits_change(tmp_path):
    """Portraits are no story frame, so what they are drawn from is part of their readers' keys: the story seed
    (a frame with its own seed does not otherwise see it), the story's negative prompt, the character's place."""
    from tests.runs.test_plan import mark_drawn

    together = story_data(
        [{"text": "{mara} and {tom} at a market", "seed": 5}, {"text": "{tom} on a boat", "seed": 6}]
    )
    settings = {"identity_frames": "portraits"}
    out = tmp_path / "run"
    mark_drawn(planned(together, settings=settings, out_dir=out))
    assert planned(together, settings=settings, out_dir=out).frames_to_draw == []
    reseeded = {**together, "settings": {"seed": 3}}
    assert planned(reseeded, settings=settings, out_dir=out).frames_to_draw == [0, 1]
    negative = {**together, "settings": {"negative_prompt": "blurry"}}
    assert planned(negative, settings=settings, out_dir=out).conflict  # run-wide: refused without --overwrite
    swapped = {**together, "characters": together["characters"][::-1]}
    assert planned(swapped, settings=settings, out_dir=out).frames_to_draw == [0, 1]


def test_reference_photos_go_through_photomaker_and_leave_the_model_as_it_was(tmp_path):
    from storycast.models.tiny import tiny_sdxl_components

    models = load_models(ModelSpec(source="tiny", device="cpu"))  # PhotoMaker attaches to these
    photo = tmp_path / "mara.png"
    Image.new("RGB", (64, 64), (200, 120, 90)).save(photo)
    with_photo = story_data()
    with_photo["characters"][0]["references"] = [str(photo)]
    plan = planned(with_photo, model=models, settings={"style_strength": "0.34"})  # merge after step 1 of 3
    method = StoryDiffusionMethod(models, plan.settings)
    method.prepare(plan.story, RunContext())
    assert set(method._references) == {"mara"}
    referenced = method.generate(plan.story, (0,), RunContext())[0]
    text_only_plan = planned(story_data(), model=models)
    text_only = StoryDiffusionMethod(models, text_only_plan.settings).generate(
        text_only_plan.story, (0,), RunContext()
    )
    assert np.abs(pixels(referenced.image) - pixels(text_only[0].image)).max() > 2
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1)),
        "added_cond_kwargs": {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)},
    }
    with torch.no_grad():  # PhotoMaker's LoRA is off again and the processors are the stock ones
        torch.testing.assert_close(
            models.pipeline.unet(x, 5, **kwargs).sample, tiny_sdxl_components()["unet"](x, 5, **kwargs).sample
        )


def test_bad_input_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    import storycast.runs.runner
    from storycast.cli.main import main

    def no_loading(spec):
        raise AssertionError("bad input must be refused before the model loads")

    monkeypatch.setattr(storycast.runs.runner, "load_models", no_loading)
    with pytest.raises(
        StorycastError,
        match=r"id_length=2 solo frames as its identity frames, but 'tom' appears alone in 1 frame\(s\) \(frames\[1\]\)",
    ):
        planned(story_data(), settings={"id_length": "2"})
    nobody = story_data([{"text": "a lighthouse at dawn"}, {"text": "the sea at noon"}])
    with pytest.raises(StorycastError, match="no frame names a character"):
        planned(nobody)
    for name, value in (("sa32", "1.5"), ("sa64", "-0.1"), ("sa16", "2")):
        with pytest.raises(SettingsError, match=rf"{name} must be between 0 and 1"):
            planned(story_data(), settings={name: value})
    photo = tmp_path / "mara.png"
    Image.new("RGB", (8, 8)).save(photo)
    with_photo = story_data()
    with_photo["characters"][0]["references"] = [str(photo)]
    with pytest.raises(SettingsError, match="PhotoMaker v1, an SDXL adapter; the model is sd15"):
        planned(with_photo, model=ModelSpec(source="tiny-sd15"))
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(story_data()))
    command = ["generate", str(story), "--method", "storydiffusion", "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert main([*command, "--set", "id_length=3"]) == 2
    assert main([*command, "--set", "sa32=7"]) == 2
    assert not (tmp_path / "r").exists()

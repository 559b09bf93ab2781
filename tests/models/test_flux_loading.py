"""FLUX sources before and after loading: presets, a saved pipeline folder (with and without its T5 encoder), a
single-file transformer checkpoint in diffusers' and Black Forest Labs' layouts, and the command line's FLUX
settings refused before any model loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.models.detect import (
    check_single_file_configs,
    detect,
    family_of_checkpoint,
    guidance_of_checkpoint,
)
from storycast.models.facts import model_facts
from storycast.models.flux_components import tiny_flux_components, tiny_flux_pipeline
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.sampler import Sampling, sample
from storycast.utils.torch_utils import make_generator
from tests.helpers import small_story_data


@pytest.fixture(scope="module")
def dev_folder(tiny_flux, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "tiny-flux"
    tiny_flux.pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def schnell_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "tiny-flux-schnell"
    tiny_flux_pipeline(seed=0, guidance_embeds=False).save_pretrained(folder)
    return folder


def no_loading(*args, **kwargs):
    raise AssertionError("refused input must be refused before any model loads")


def draw_one(models, seed=4):
    backbone = models.backbone
    guidance = backbone.guidance(models.defaults.guidance_scale)
    conditioning = backbone.encode(["a lighthouse at dusk"], None, width=64, height=64, guidance=guidance)
    image = sample(backbone, conditioning, [make_generator(seed)], Sampling(64, 64, 2, guidance)).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("flux-dev", ("hub", "flux", "embedded")),
        ("flux-schnell", ("hub", "flux", "none")),
        ("tiny-flux", ("tiny", "flux", "embedded")),
        ("tiny-flux-schnell", ("tiny", "flux", "none")),
        ("flux-random", ("random", "flux", "embedded")),
        ("tiny", ("tiny", "sdxl", "cfg")),
    ],
)
def test_presets_are_detected_without_reading_anything(preset, expected):
    kind, family, guidance, found = detect(ModelSpec(source=preset))
    assert (kind, family, guidance) == expected and found is not None and found.name == preset
    facts = model_facts(ModelSpec(source=preset, device="cpu"))
    assert (facts.family, facts.guidance) == expected[1:]


def test_a_saved_flux_folder_loads_as_the_preset_it_came_from(tiny_flux, dev_folder, monkeypatch):
    assert detect(ModelSpec(source=str(dev_folder)))[:3] == ("folder", "flux", "embedded")
    loaded = load_models(ModelSpec(source=str(dev_folder), device="cpu"))
    assert (loaded.family, loaded.guidance, loaded.info["family"]) == ("flux", "embedded", "flux")
    assert type(loaded.pipeline).__name__ == "FluxPipeline" and loaded.backbone.guidance_embedded
    assert loaded.defaults.guidance_scale == 3.5 and loaded.backbone.max_sequence_length == 512
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(loaded.pipeline, name).state_dict(), getattr(tiny_flux.pipeline, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    # The same pixels within one grey level: weights read from a file sit at other memory alignments, which
    # changes the rounding of the CPU's matrix products by ~1e-7.
    assert np.abs(draw_one(loaded) - draw_one(tiny_flux)).max() <= 1
    assert np.abs(draw_one(loaded, seed=5) - draw_one(tiny_flux)).max() > 10


def test_a_saved_schnell_folder_takes_no_guidance(schnell_folder):
    assert detect(ModelSpec(source=str(schnell_folder)))[:3] == ("folder", "flux", "none")
    facts = model_facts(ModelSpec(source=str(schnell_folder), device="cpu"))
    assert (facts.family, facts.guidance, facts.defaults.guidance_scale, facts.defaults.steps) == (
        "flux",
        "none",
        0,
        4,
    )


@pytest.mark.parametrize("missing", ["text_encoder_2", "tokenizer_2"])
def test_a_flux_folder_without_its_t5_is_refused_before_loading(dev_folder, tmp_path, monkeypatch, missing):
    import storycast.models.loading

    monkeypatch.setattr(storycast.models.loading, "_load_pipeline", no_loading)
    copy = tmp_path / "incomplete"
    shutil.copytree(dev_folder, copy)
    shutil.rmtree(copy / missing)
    with pytest.raises(ModelLoadError, match=rf"has no {missing}: FLUX encodes prompts with T5.*Fix: copy the whole"):
        model_facts(ModelSpec(source=str(copy)))
    with pytest.raises(ModelLoadError, match=missing):
        load_models(ModelSpec(source=str(copy), device="cpu"))
    (copy / missing).mkdir()  # an empty folder is no encoder either
    with pytest.raises(ModelLoadError, match=missing):
        model_facts(ModelSpec(source=str(copy)))


# -- single files --------------------------------------------------------------------------------------------


def save_transformer(path, guidance_embeds):
    transformer = tiny_flux_components(guidance_embeds=guidance_embeds)["transformer"]
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    return path


def test_a_diffusers_layout_transformer_file_is_flux_with_or_without_guidance(tmp_path):
    dev = save_transformer(tmp_path / "flux1-dev-transformer.safetensors", True)
    schnell = save_transformer(tmp_path / "flux1-schnell-transformer.safetensors", False)
    assert family_of_checkpoint(dev) == family_of_checkpoint(schnell) == "flux"
    assert guidance_of_checkpoint(dev, "flux") == "embedded"
    assert guidance_of_checkpoint(schnell, "flux") == "none"
    assert detect(ModelSpec(source=str(dev)))[:3] == ("file", "flux", "embedded")
    assert detect(ModelSpec(source=str(schnell)))[:3] == ("file", "flux", "none")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_black_forest_labs_layout_file_is_flux(tmp_path, prefix):
    keys = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"]
    schnell = tmp_path / "flux1-schnell.safetensors"
    save_file({prefix + key: torch.zeros(2, 2) for key in keys}, str(schnell))
    dev = tmp_path / "flux1-dev.safetensors"
    save_file({prefix + key: torch.zeros(2, 2) for key in [*keys, "guidance_in.in_layer.weight"]}, str(dev))
    assert family_of_checkpoint(dev) == family_of_checkpoint(schnell) == "flux"
    assert guidance_of_checkpoint(dev, "flux") == "embedded" and guidance_of_checkpoint(schnell, "flux") == "none"
    assert model_facts(ModelSpec(source=str(dev), device="cpu")).guidance == "embedded"


def test_a_file_of_no_known_architecture_is_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(other))
    with pytest.raises(ModelLoadError, match=r"cannot tell which architecture.*--family"):
        family_of_checkpoint(other)


def test_a_flux_file_needs_its_t5_from_the_config_source(tmp_path, dev_folder, monkeypatch):
    from diffusers import FluxTransformer2DModel

    monkeypatch.setattr(FluxTransformer2DModel, "from_single_file", no_loading)
    path = save_transformer(tmp_path / "flux1-dev-transformer.safetensors", True)
    offline = ModelSpec(source=str(path), local_files_only=True, device="cpu")
    with pytest.raises(MissingWeightsError, match=r"text_encoder_2/config\.json.*--local-files-only.*--model-config"):
        check_single_file_configs("black-forest-labs/FLUX.1-dev", "flux", offline)
    with pytest.raises(MissingWeightsError, match="text_encoder_2"):
        load_models(offline)  # the default configs of a dev checkpoint, not in the sandbox's cache
    check_single_file_configs(str(dev_folder), "flux", offline)  # a complete folder has everything
    copy = tmp_path / "configs"
    shutil.copytree(dev_folder, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.rmtree(copy / "text_encoder_2")
    with pytest.raises(ModelLoadError, match=r"the configs folder of the FLUX checkpoint.*has no text_encoder_2"):
        check_single_file_configs(str(copy), "flux", offline)
    check_single_file_configs("black-forest-labs/FLUX.1-dev", "sdxl", offline)  # only FLUX files need T5


# -- the command line ----------------------------------------------------------------------------------------


@pytest.fixture
def story_file(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(small_story_data(3)))
    return path


def test_generate_draws_a_story_on_tiny_flux(story_file, tmp_path):
    from storycast.cli.main import main

    out = tmp_path / "run"
    assert main(["generate", str(story_file), "--preset", "tiny-flux", "--method", "vanilla", "--out", str(out)]) == 0
    assert len(list((out / "frames").glob("frame_*.png"))) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"]["family"] == "flux" and manifest["run_summary"]["model"]["family"] == "flux"
    assert manifest["generation"]["guidance_scale"] == 3.5 and manifest["generation"]["width"] == 128
    steps = manifest["generation"]["steps"]
    assert all(frame["metadata"]["denoiser_evaluations"] == steps for frame in manifest["frames"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset", "tiny-flux-schnell", "--guidance-scale", "2"], "guidance_scale 2.0 .*takes no guidance"),
        (["--preset", "tiny", "--true-cfg-scale", "3"], "true_cfg_scale 3.0 .*Fix: drop true_cfg_scale"),
        (["--preset", "tiny-flux", "--width", "136"], "width 136 .*not a multiple of 16.*e.g. 128"),
        (["--preset", "tiny-flux", "--height", "72"], "height 72 .*not a multiple of 16"),
        # As a story file's settings.true_cfg_scale: a finite number of at least 1 (1: off).
        (["--preset", "tiny-flux", "--true-cfg-scale", "0.5"], "true_cfg_scale 0.5"),
        (["--preset", "tiny-flux", "--true-cfg-scale", "nan"], "true_cfg_scale nan"),
    ],
)
def test_generate_refuses_what_the_family_cannot_honour_before_loading(
    story_file, tmp_path, monkeypatch, capsys, flags, message
):
    import re

    import storycast.runs.runner
    from storycast.cli.main import main

    monkeypatch.setattr(storycast.runs.runner, "load_models", no_loading)
    out = tmp_path / "run"
    assert main(["generate", str(story_file), "--method", "vanilla", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not out.exists()


def test_true_cfg_draws_two_rows_a_step_and_records_the_negative_prompt(tiny_flux):
    from storycast.runs.draw import draw

    generation = {"steps": 2, "width": 64, "height": 64, "negative_prompt": "blurry"}
    plain = draw(small_story_data(1), "vanilla", tiny_flux, generation=generation)
    guided = draw(small_story_data(1), "vanilla", tiny_flux, generation={**generation, "true_cfg_scale": 3.0})
    assert (
        plain.frames[0].metadata["denoiser_evaluations"] == 2 and plain.frames[0].metadata["negative_prompt"] is None
    )
    assert (
        guided.frames[0].metadata["denoiser_evaluations"] == 4
        and guided.frames[0].metadata["negative_prompt"] == "blurry"
    )
    assert guided.plan.generation.true_cfg_scale == 3.0
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(guided.images[0]))


def test_true_cfg_needs_a_negative_prompt_and_then_draws_flux_pipelines_pixels(tiny_flux):
    """FluxPipeline applies true CFG only where a negative prompt is given (``do_true_cfg = true_cfg_scale > 1 and
    has_neg_prompt``): without one storycast refuses the setting (it would be silently off); with one, vanilla
    draws the pipeline's pixels (one call of [uncond, cond] rows where the pipeline makes two: within a grey level)."""
    from storycast.runs.draw import draw

    story = small_story_data(1)
    generation = {"steps": 2, "width": 64, "height": 64, "true_cfg_scale": 3.0}
    with pytest.raises(SettingsError, match=r"true_cfg_scale 3.0 .*frames \[0\] have none.*--negative-prompt"):
        draw(story, "vanilla", tiny_flux, generation=generation)
    drawn = draw(story, "vanilla", tiny_flux, generation={**generation, "negative_prompt": "blurry"})
    frame = drawn.frames[0]
    reference = tiny_flux.pipeline(
        drawn.plan.story.prompt(0),
        negative_prompt="blurry",
        num_inference_steps=2,
        guidance_scale=3.5,
        true_cfg_scale=3.0,
        width=64,
        height=64,
        generator=make_generator(frame.seed),
        max_sequence_length=tiny_flux.backbone.max_sequence_length,
    ).images[0]
    difference = np.abs(np.asarray(frame.image, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert difference.max() <= 1
    assert frame.metadata["denoiser_evaluations"] == 4  # [uncond, cond] rows at each of the 2 steps

from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.models.detect import classify_source, family_of_checkpoint
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec


def _draw(pipe, seed=0):
    return pipe(
        "a young woman in a garden",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


@pytest.mark.parametrize("preset", ["tiny", "tiny-sd15"])
def test_load_from_save_pretrained_folder(preset, tmp_path):
    # Models of its own: the session's shared ones may carry adapters other tests attached (LoRA layers).
    models = load_models(ModelSpec(source=preset, device="cpu"))
    models.pipeline.save_pretrained(tmp_path / "pipe")
    loaded = load_models(ModelSpec(source=str(tmp_path / "pipe"), device="cpu"))
    assert loaded.family == models.family
    assert loaded.info["kind"] == "folder"
    np.testing.assert_allclose(_draw(loaded.pipeline), _draw(models.pipeline), atol=1e-5)


def test_missing_weights_error_names_the_model_and_the_fix():
    with pytest.raises(MissingWeightsError) as info:
        load_models(ModelSpec(source="sdxl", device="cpu"))
    message = str(info.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "--model" in message and "HF_HOME" in message
    assert "Traceback" not in message


def test_missing_hub_id_error():
    with pytest.raises(MissingWeightsError, match="someone/some-model"):
        load_models(ModelSpec(source="someone/some-model", device="cpu"))


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(MissingWeightsError, match="neither a preset"):
        classify_source(ModelSpec(source=str(tmp_path / "missing.safetensors")))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        load_models(ModelSpec(source=str(tmp_path), device="cpu"))


def test_family_of_single_file_checkpoint(tmp_path):
    from safetensors.torch import save_file

    xl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(xl))
    v15 = tmp_path / "v15.safetensors"
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)}, str(v15))
    other = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(other))
    assert family_of_checkpoint(xl) == "sdxl"
    assert family_of_checkpoint(v15) == "sd15"
    with pytest.raises(ModelLoadError, match="--family"):
        family_of_checkpoint(other)


def test_single_file_without_configs_offline_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(path))
    with pytest.raises(MissingWeightsError, match="--model-config"):
        load_models(ModelSpec(source=str(path), device="cpu"))


def test_spec_validation():
    with pytest.raises(SettingsError, match="dtype"):
        ModelSpec(dtype="fp8")
    with pytest.raises(SettingsError, match="offload"):
        ModelSpec(offload="disk")
    with pytest.raises(SettingsError, match="family"):
        ModelSpec(family="sd3")


def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SettingsError, match="--device cpu"):
        load_models(ModelSpec(source="tiny", device="cuda"))


def test_tiny_loads_with_defaults(tiny_sdxl):
    assert tiny_sdxl.is_tiny and tiny_sdxl.family == "sdxl" and tiny_sdxl.device == "cpu"
    assert (tiny_sdxl.defaults.width, tiny_sdxl.defaults.steps) == (128, 4)
    assert tiny_sdxl.info["dtype"] == "fp32"


def test_full_size_random_presets_have_the_real_architectures():
    from storycast.models.detect import classify_source
    from storycast.models.random_full import random_full_components

    assert classify_source(ModelSpec(source="sdxl-random"))[0] == "random"
    sdxl = random_full_components("sdxl", device="meta")
    sd15 = random_full_components("sd15", device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # Parameter counts of stabilityai/stable-diffusion-xl-base-1.0 and stable-diffusion-v1-5's UNets.
    assert count(sdxl["unet"]) == 2_567_463_684
    assert count(sd15["unet"]) == 859_520_964

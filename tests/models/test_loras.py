from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.adapters.tiny import tiny_photomaker_weights
from storycast.errors import MissingWeightsError
from storycast.models.loading import active_loras, load_models
from storycast.models.spec import LoraSpec, ModelSpec
from storycast.models.tiny import tiny_sdxl_components


@pytest.fixture(scope="module")
def style_file(tmp_path_factory):
    """A random LoRA for the tiny SDXL UNet, saved as a .safetensors file (diffusers' old key layout)."""
    from safetensors.torch import save_file

    weights = tiny_photomaker_weights(tiny_sdxl_components()["unet"], seed=7)["lora_weights"]
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    return path


def draw(models):
    return models.pipeline(
        "a woman",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


def test_lora_spec_parsing():
    assert LoraSpec.parse("style.safetensors@0.8") == LoraSpec("style.safetensors", 0.8)
    assert LoraSpec.parse("owner/style-lora") == LoraSpec("owner/style-lora", 1.0)
    assert LoraSpec.parse("odd@name.safetensors") == LoraSpec("odd@name.safetensors", 1.0)


def test_a_lora_changes_the_images_and_scale_zero_does_not(style_file, tiny_sdxl):
    plain = draw(tiny_sdxl)
    styled = load_models(ModelSpec(source="tiny", device="cpu", loras=(LoraSpec(str(style_file), 1.0),)))
    assert active_loras(styled) == {"lora_0": 1.0}
    assert np.abs(draw(styled) - plain).max() > 1e-3
    off = load_models(ModelSpec(source="tiny", device="cpu", loras=(LoraSpec(str(style_file), 0.0),)))
    np.testing.assert_allclose(draw(off), plain, atol=1e-5)


def test_photomaker_switching_keeps_the_style_lora_on(style_file):
    from storycast.methods.identitystory.method import IdentityStoryMethod

    models = load_models(ModelSpec(source="tiny", device="cpu", loras=(LoraSpec(str(style_file), 0.8),)))
    adapter = IdentityStoryMethod(models).adapter
    unet = models.pipeline.unet
    assert set(unet.active_adapters()) == {"lora_0"}
    with adapter.lora(True):
        assert set(unet.active_adapters()) == {"lora_0", "photomaker"}
    assert set(unet.active_adapters()) == {"lora_0"}


def test_missing_lora_names_the_flag(tmp_path):
    with pytest.raises(MissingWeightsError, match="--lora"):
        load_models(ModelSpec(source="tiny", device="cpu", loras=(LoraSpec("someone/missing-lora"),)))

"""Memory options of ModelSpec on the tiny FLUX: where the option is exact (text encoders on their own device, group
offloading) the pixels equal the default's; where it is not (int8 and fp8 weights) they stay within a stated number
of grey levels, far from another seed's; and each bad combination is refused, before loading, naming the fix."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from storycast.errors import ExtraNotInstalledError, SettingsError
from storycast.models import loading
from storycast.models.facts import model_facts
from storycast.models.flux_components import tiny_flux_pipeline
from storycast.models.loading import load_models, place_pipeline
from storycast.models.quantization import check_quantize
from storycast.models.spec import ModelSpec
from storycast.pipelines.families.flux import Flux
from storycast.runs.draw import draw
from storycast.utils.imports import is_available
from tests.helpers import small_story_data

GENERATION = {"steps": 2, "width": 64, "height": 64}
needs_torchao = pytest.mark.skipif(not is_available("torchao"), reason="needs torchao: pip install 'storycast[quant]'")


def pixels(models, seed: int = 3) -> np.ndarray:
    story = small_story_data(2)
    story["settings"]["seed"] = seed
    result = draw(story, "vanilla", models, generation=GENERATION)
    return np.stack([np.asarray(image, dtype=np.int16) for image in result.images])


def flux(**options) -> ModelSpec:
    return ModelSpec(source="tiny-flux", device="cpu", **options)


@pytest.fixture(scope="module")
def plain(tiny_flux):
    return pixels(tiny_flux)


def test_text_encoders_on_their_own_device_draw_the_default_pixels(plain):
    models = load_models(flux(text_encoder_device="cpu"))
    assert models.info["text_encoder_device"] == "cpu" and models.info["offload"] == "none"
    parts = (models.pipeline.text_encoder, models.pipeline.text_encoder_2)
    assert all(p.device.type == "cpu" for part in parts for p in part.parameters())
    assert np.array_equal(pixels(models), plain)
    assert models.facts.identity == load_models(flux()).facts.identity  # placement is not part of a run


def test_the_text_encoders_never_visit_the_denoisers_device():
    """A second device stood in for by "meta" (weights moved there are gone): the encoders go straight to theirs;
    group offloading leaves them out of its hooks."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    pipe = tiny_flux_pipeline()
    place_pipeline(pipe, "meta", "none", vae_tiling=False, vae_slicing=False, text_encoder_device="cpu")
    assert pipe.vae.device.type == pipe.transformer.device.type == "meta"
    assert pipe.text_encoder.device.type == pipe.text_encoder_2.device.type == "cpu"
    assert all(torch.isfinite(p).all() for p in pipe.text_encoder_2.parameters())  # never left the CPU
    pipe = tiny_flux_pipeline()
    place_pipeline(pipe, "cpu", "group", vae_tiling=False, vae_slicing=False, text_encoder_device="cpu")
    assert _is_group_offload_enabled(pipe.transformer)
    assert not any(_is_group_offload_enabled(part) for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae))


def test_prompts_are_encoded_where_the_encoders_are_and_handed_to_the_denoisers_device():
    """FluxPipeline.encode_prompt (diffusers 0.42) runs each encoder on its own device and moves the embeddings to
    the one asked for: placing the encoders is all --text-encoder-device needs."""
    pipe = tiny_flux_pipeline()
    on_cpu = Flux(pipe, "cpu")._encode(["a woman with red hair"])
    moved = Flux(pipe, "meta")._encode(["a woman with red hair"])  # encoders on the CPU, denoiser elsewhere
    assert moved.embeds.device.type == "meta" and moved.embeds.shape == on_cpu.embeds.shape
    assert pipe.text_encoder_2.device.type == "cpu"


def test_group_offloading_draws_the_default_pixels(plain):
    """Block-level group offloading of the transformer and both text encoders (on a CPU, onto the CPU: the hooks
    run, nothing moves); the VAE is left out of it."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    models = load_models(flux())
    pipe = models.pipeline
    place_pipeline(pipe, "cpu", "group", vae_tiling=False, vae_slicing=False)
    assert all(_is_group_offload_enabled(part) for part in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2))
    assert not _is_group_offload_enabled(pipe.vae)
    assert np.array_equal(pixels(models), plain)


def test_offload_needs_cuda_and_is_dropped_with_a_warning_elsewhere(caplog):
    with caplog.at_level("WARNING", logger="storycast"):
        models = load_models(flux(offload="group"))
    assert models.info["offload"] == "none"
    assert "offload 'group' needs a CUDA device" in caplog.text


def test_model_offload_sends_t5_back_when_the_transformer_runs(plain):
    """--offload model needs no second mechanism for "T5 off the GPU once prompts are encoded": diffusers chains
    the models' hooks (text_encoder -> text_encoder_2 -> transformer -> vae), and accelerate's hook on the
    transformer moves the model before it (T5) back to the CPU when the transformer is called, as storycast's
    sampler calls it (directly, not through the pipeline). On a CPU nothing moves, and the pixels are the default's."""
    models = load_models(flux())
    pipe = models.pipeline
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe.transformer._hf_hook.prev_module_hook.model is pipe.text_encoder_2
    assert pipe.text_encoder_2._hf_hook.prev_module_hook.model is pipe.text_encoder
    assert np.array_equal(pixels(models), plain)


@needs_torchao
def test_int8_weights_stay_within_two_grey_levels_of_the_full_precision_frames(plain, tiny_flux):
    """Measured: int8 frames differ from the fp32 ones by at most 2 grey levels (seeds 0-7, 64 px, 2 steps), while
    another seed's differ by up to 255 (mean about 50): bound 3."""
    models = load_models(flux(quantize="int8"))
    frames = pixels(models)
    assert np.abs(frames - plain).max() <= 3
    assert not np.array_equal(frames, plain)  # quantized, not a no-op
    assert np.abs(pixels(tiny_flux, seed=4) - plain).mean() > 10 * np.abs(frames - plain).mean()
    assert models.info["quantization"]["layers"] == models.info["quantization"]["of"] > 0
    weight = models.pipeline.transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight).__name__ == "Int8Tensor"
    # A quantized model is another model: it is in the identity (the plan's and the loaded one's alike), and the
    # identity of an unquantized one is what it was before the field existed.
    assert models.facts.identity["quantize"] == "int8" == model_facts(flux(quantize="int8")).identity["quantize"]
    assert model_facts(flux(quantize="int8")).identity == models.facts.identity
    assert "quantize" not in tiny_flux.facts.identity and "quantize" not in model_facts(flux()).identity


@needs_torchao
def test_fp8_weights_on_the_cpu_stay_within_24_grey_levels():
    """Measured: fp8 (e4m3) frames differ from the fp32 ones by 10 to 17 grey levels (seeds 0-7, 64 px, 2 steps):
    bound 24. torchao's weight-only float8 runs on the CPU (dequantized in the matmul)."""
    plain_models = load_models(flux())
    models = load_models(flux(quantize="fp8"))
    assert np.abs(pixels(models, seed=0) - pixels(plain_models, seed=0)).max() <= 24


@needs_torchao
def test_quantized_weights_survive_group_offloading():
    models = load_models(flux(quantize="int8"))
    expected = pixels(models)
    place_pipeline(models.pipeline, "cpu", "group", vae_tiling=False, vae_slicing=False)
    assert np.array_equal(pixels(models), expected)


def test_unknown_modes_and_clashing_options_are_refused():
    with pytest.raises(SettingsError, match=r"quantize 'int2' is not known\. Fix: use one of none, int8, fp8, int4"):
        flux(quantize="int2")
    with pytest.raises(SettingsError, match=r"offload 'disk' is not known.*group"):
        flux(offload="disk")
    with pytest.raises(SettingsError, match=r"Fix: use --offload group \(or model\) with --quantize"):
        flux(quantize="int8", offload="sequential")
    for offload in ("model", "sequential"):
        with pytest.raises(SettingsError, match=r"Fix: drop --text-encoder-device, or use --offload none or group"):
            flux(text_encoder_device="cpu", offload=offload)
    with pytest.raises(SettingsError, match=r"'tiny-sd15' is a sd15 model. Fix: drop --text-encoder-device"):
        load_models(ModelSpec(source="tiny-sd15", device="cpu", text_encoder_device="cpu"))
    with pytest.raises(SettingsError, match="device 'tpu' is not known"):
        load_models(flux(text_encoder_device="tpu"))


def test_hardware_that_cannot_run_a_mode_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(loading, "_load_pipeline", lambda *args: pytest.fail("weights were read"))
    with pytest.raises(SettingsError, match=r"int4 needs a CUDA GPU.*Fix: use --quantize int8 \(or fp8\) on a CPU"):
        load_models(flux(quantize="int4"))
    with pytest.raises(
        SettingsError, match=r"compute capability 8\.9 or newer.*this one is 8\.0\. Fix: use --quantize"
    ):
        check_quantize("fp8", "cuda", torch.bfloat16, capability=(8, 0))
    with pytest.raises(SettingsError, match=r"int4 computes in bf16 only.*Fix: add --dtype bf16"):
        check_quantize("int4", "cuda:0", torch.float16, capability=(9, 0))
    with pytest.raises(SettingsError, match=r"not on 'mps'"):
        check_quantize("int8", "mps", torch.float32)


def test_a_missing_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` raises ImportError
    monkeypatch.setattr(loading, "_load_pipeline", lambda *args: pytest.fail("weights were read"))
    with pytest.raises(ExtraNotInstalledError, match=r"pip install 'storycast\[quant\]'") as caught:
        load_models(flux(quantize="int8"))
    assert isinstance(caught.value, ImportError)

"""The FLUX family held to diffusers' FluxPipeline: latent packing, image positions, the timestep shift and the
scheduler it gives, guidance (embedded, true CFG, none), denoiser evaluations, batching and prompt encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.families.flux import Flux, flow_shift, image_positions, pack_latents, unpack_latents
from storycast.pipelines.noise import count_evaluations
from storycast.pipelines.sampler import Sampling, sample
from storycast.utils.torch_utils import make_generator

PROMPT = "a young woman with red hair reading on a bench"


@pytest.fixture(scope="module")
def tiny_flux_schnell():
    return load_models(ModelSpec(source="tiny-flux-schnell", device="cpu"))


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("height, width", [(16, 16), (12, 16), (16, 6)])
def test_packing_round_trips_exactly_and_equals_the_pipelines(height, width):
    latents = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(height * width))
    packed = pack_latents(latents)
    assert packed.shape == (2, (height // 2) * (width // 2), 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, height, width))
    unpacked = unpack_latents(packed, height, width)
    assert torch.equal(unpacked, latents)
    # The pipeline's unpacking takes the image size in pixels and the VAE's factor.
    assert torch.equal(unpacked, FluxPipeline._unpack_latents(packed, height * 8, width * 8, 8))
    other = torch.randn(2, (height // 2) * (width // 2), 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pack_latents(unpack_latents(other, height, width)), other)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"base_tokens": 256, "max_tokens": 4096, "base_shift": 0.5, "max_shift": 1.15},
        {"base_tokens": 64, "max_tokens": 1024, "base_shift": 0.3, "max_shift": 1.5},
    ],
)
def test_flow_shift_is_calculate_shift(config):
    diffusers_names = {"base_tokens": "base_seq_len", "max_tokens": "max_seq_len"}
    theirs = {diffusers_names.get(k, k): v for k, v in config.items()}
    for tokens in (16, 64, 256, 1024, 4096, 6000):
        assert flow_shift(tokens, **config) == pytest.approx(calculate_shift(tokens, **theirs), rel=1e-12, abs=1e-12)
    assert flow_shift(100, **config) != flow_shift(2000, **config)


def test_image_positions_are_the_pipelines_latent_image_ids():
    ours = image_positions(6, 10)
    theirs = FluxPipeline._prepare_latent_image_ids(1, 6, 10, "cpu", torch.float32)
    assert ours.shape == (60, 3) and torch.equal(ours, theirs)
    assert ours[11].tolist() == [0, 1, 1] and ours[59].tolist() == [0, 5, 9]
    assert image_positions(3, 4, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("size", [(128, 128), (256, 128)])
def test_the_scheduler_has_the_pipelines_timesteps_and_sigmas(tiny_flux, size):
    """FluxPipeline's step 5: sigmas linspace(1, 1/T, T), mu from the packed sequence length, retrieve_timesteps."""
    width, height = size
    pipe, backbone = tiny_flux.pipeline, tiny_flux.backbone
    steps = 4
    ours = backbone.scheduler(steps, width=width, height=height)
    reference = type(pipe.scheduler).from_config(pipe.scheduler.config)
    config = reference.config
    tokens = (height // 16) * (width // 16)
    mu = calculate_shift(
        tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    timesteps, count = retrieve_timesteps(reference, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert count == steps == len(ours.timesteps)
    torch.testing.assert_close(ours.timesteps, timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, reference.sigmas, rtol=0, atol=0)
    # The template the pipeline keeps is left as it was (each trajectory gets its own scheduler).
    assert ours is not pipe.scheduler


def test_the_shift_depends_on_the_image_size(tiny_flux):
    small = tiny_flux.backbone.scheduler(4, width=128, height=128)
    large = tiny_flux.backbone.scheduler(4, width=256, height=128)
    assert not torch.equal(small.sigmas, large.sigmas)


def test_dev_guidance_is_embedded_and_true_cfg_adds_halves(tiny_flux):
    backbone = tiny_flux.backbone
    assert isinstance(backbone, Flux) and backbone.guidance_embedded
    plain = backbone.guidance(3.5)
    assert (plain.embedded, plain.scale, plain.halves) == (3.5, None, 1)
    cfg = backbone.guidance(3.5, 4.0)
    assert (cfg.embedded, cfg.scale, cfg.halves) == (3.5, 4.0, 2)
    for off in (1.0, None):
        assert backbone.guidance(3.5, off).halves == 1 and backbone.guidance(3.5, off).scale is None


def test_schnell_takes_no_guidance(tiny_flux_schnell):
    backbone = tiny_flux_schnell.backbone
    assert not backbone.guidance_embedded
    with pytest.raises(ValueError, match="guidance_scale"):
        backbone.guidance(3.5)
    none = backbone.guidance(0)
    assert (none.embedded, none.scale, none.halves) == (None, None, 1)
    assert backbone.guidance(0, 3.0).halves == 2


@pytest.mark.parametrize("true_cfg", [None, 4.0])
def test_one_transformer_call_per_step_and_a_row_per_guidance_half(tiny_flux, true_cfg):
    backbone = tiny_flux.backbone
    guidance = backbone.guidance(3.5, true_cfg)
    conditioning = backbone.encode([PROMPT], ["blurry"], width=64, height=64, guidance=guidance)
    calls = []
    hook = backbone.denoiser.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    try:
        with count_evaluations(backbone.denoiser) as counter:
            drawn = sample(backbone, conditioning, [make_generator(3)], Sampling(64, 64, 3, guidance))
    finally:
        hook.remove()
    halves = 1 if true_cfg is None else 2
    assert counter.evaluations == drawn.evaluations == 3 * halves
    assert len(calls) == 3  # the [uncond, cond] rows go in one call


def test_a_batch_of_frames_gives_each_frame_its_own_image(tiny_flux):
    backbone = tiny_flux.backbone
    guidance = backbone.guidance(3.5)
    sampling = Sampling(128, 128, 3, guidance)

    def drawn(seeds):
        conditioning = backbone.encode([PROMPT] * len(seeds), None, width=128, height=128, guidance=guidance)
        return sample(backbone, conditioning, [make_generator(s) for s in seeds], sampling).images

    batch = drawn([11, 12])
    alone = [drawn([11])[0], drawn([12])[0]]
    for together, single in zip(batch, alone, strict=True):
        assert np.abs(pixels(together) - pixels(single)).max() <= 2
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).max() > 10


def test_encoding_without_cfg_has_no_uncond_rows(tiny_flux):
    backbone = tiny_flux.backbone
    pair = backbone.encode([PROMPT, "a dog"], ["", ""], width=128, height=128, guidance=backbone.guidance(3.5))
    assert pair.uncond is None and pair.halves == 1 and len(pair) == 2
    assert pair.cond.embeds.shape == (
        2,
        backbone.max_sequence_length,
        tiny_flux.pipeline.text_encoder_2.config.d_model,
    )
    assert pair.cond.pooled.shape == (2, tiny_flux.pipeline.text_encoder.config.hidden_size)
    assert backbone.max_sequence_length == 512  # FLUX.1-dev's, within the tiny T5 tokenizer's 512
    assert pair.batch() is pair.cond
    with_cfg = backbone.encode([PROMPT], ["blurry"], width=128, height=128, guidance=backbone.guidance(3.5, 4.0))
    assert with_cfg.halves == 2 and not torch.equal(with_cfg.uncond.embeds, with_cfg.cond.embeds)
    # The conditioning is FluxPipeline.encode_prompt's (which the pipeline runs without gradients).
    with torch.no_grad():
        embeds, pooled, _ = tiny_flux.pipeline.encode_prompt(
            prompt=[PROMPT], prompt_2=None, max_sequence_length=backbone.max_sequence_length
        )
    assert torch.equal(with_cfg.cond.embeds, embeds) and torch.equal(with_cfg.cond.pooled, pooled)


def test_schnell_encodes_256_t5_tokens(tiny_flux_schnell):
    backbone = tiny_flux_schnell.backbone
    assert backbone.max_sequence_length == 256
    pair = backbone.encode([PROMPT], None, width=64, height=64, guidance=backbone.guidance(0))
    assert pair.cond.embeds.shape[1] == 256 and pair.uncond is None


def test_the_sampler_tells_single_stream_processors_the_text_count(tiny_flux):
    """A state's ``text_tokens`` is set from the conditioning by the sampler, so storycast's processor on the
    single-stream blocks reads [text, image] as the stock processor does: the same pixels."""
    from storycast.attention.layers import install_processors, select_layers
    from storycast.attention.processor import StoryAttnProcessor
    from storycast.attention.state import AttentionState

    backbone = tiny_flux.backbone
    guidance = backbone.guidance(3.5)
    conditioning = backbone.encode([PROMPT], None, width=64, height=64, guidance=guidance)
    sampling = Sampling(64, 64, 2, guidance)
    stock = sample(backbone, conditioning, [make_generator(2)], sampling).images[0]
    state = AttentionState(guidance=True)
    layers = select_layers(backbone.denoiser, blocks=["single"])
    processors = {layer.processor_key: StoryAttnProcessor(state) for layer in layers}
    ours = sample(
        backbone,
        conditioning,
        [make_generator(2)],
        sampling,
        installs=[lambda: install_processors(backbone.denoiser, processors)],
        states=[state],
    ).images[0]
    assert state.text_tokens == backbone.max_sequence_length and state.guidance is False
    assert np.array_equal(pixels(ours), pixels(stock))
    assert {type(p).__name__ for p in backbone.denoiser.attn_processors.values()} == {"FluxAttnProcessor"}


def test_a_conditioning_encoded_for_other_guidance_is_refused(tiny_flux):
    backbone = tiny_flux.backbone
    plain = backbone.encode([PROMPT], None, width=64, height=64, guidance=backbone.guidance(3.5))
    latents = torch.zeros(1, *backbone.latent_shape(64, 64))
    with pytest.raises(ValueError, match=r"1 guidance half.*needs 2"):
        backbone.guided_noise(latents, torch.tensor(500.0), plain, backbone.guidance(3.5, 4.0))
    assert backbone.latent_shape(64, 48) == (16, 6, 8) and backbone.latent_shape(136, 64) == (16, 8, 16)

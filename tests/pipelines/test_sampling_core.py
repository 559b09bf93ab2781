from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.masks.attention import mask_from_map
from storycast.pipelines.conditioning import GuidancePair, SDXLConditioning, TextConditioning
from storycast.pipelines.denoise import DenoiseStep, denoise
from storycast.pipelines.families import prompt_encoder
from storycast.pipelines.families.unet import make_scheduler
from storycast.pipelines.guidance import cfg_combine, rescale_guidance
from storycast.pipelines.noise import count_evaluations
from storycast.pipelines.sampler import Sampling, sample
from storycast.utils.torch_utils import make_generator


@pytest.mark.parametrize("fixture", ["tiny_sdxl", "tiny_sd15"])
def test_the_loop_equals_the_diffusers_pipeline(fixture, request):
    """The sampling core reproduces StableDiffusionXLPipeline / StableDiffusionPipeline exactly (same noise,
    conditioning, guidance, scheduler steps and decode)."""
    models = request.getfixturevalue(fixture)
    pipe, backbone = models.pipeline, models.backbone
    prompt, negative, steps, guidance = "a woman in a garden", "blurry", 3, 5.0
    reference = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=64,
        height=64,
        generator=make_generator(4),
        output_type="np",
    ).images[0]

    scheduler = backbone.scheduler(steps, width=64, height=64)
    latents = backbone.initial_latents(scheduler, [make_generator(4)], width=64, height=64)
    conditioning = backbone.encode([prompt], [negative], width=64, height=64)
    seen: list[int] = []
    with count_evaluations(backbone.denoiser) as counter:
        latents = denoise(
            scheduler,
            latents,
            lambda x, t, i: backbone.guided_noise(x, t, conditioning, backbone.guidance(guidance)),
            on_step=lambda step: seen.append(step.index),
        )
    # PNDM (SD 1.5) runs one extra timestep for its multistep start, as the stock pipeline does.
    count = len(scheduler.timesteps)
    assert counter.evaluations == 2 * count and seen == list(range(count))
    ours = np.asarray(backbone.decode(latents)[0], dtype=np.float32) / 255
    assert np.abs(ours - reference).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("true_cfg", [None, 4.0])
def test_the_sampler_equals_the_flux_pipeline_pixel_for_pixel(tiny_flux, true_cfg):
    """FLUX through the family seam: the same T5 + CLIP conditioning, the shifted flow-matching sigmas, the noise of
    the seed (unpacked here, packed for the transformer), FLUX.1-dev's embedded guidance, and the decode with its
    shift factor give FluxPipeline's pixels; with true CFG the [uncond, cond] rows go in one call where the
    pipeline makes two, so the pixels agree within one grey level."""
    pipe, backbone = tiny_flux.pipeline, tiny_flux.backbone
    prompt, negative = "a young woman with red hair reading on a bench", "blurry"
    extra = {"negative_prompt": negative, "true_cfg_scale": true_cfg} if true_cfg else {}
    reference = pipe(
        prompt,
        num_inference_steps=3,
        guidance_scale=3.5,
        width=128,
        height=96,
        generator=make_generator(4),
        max_sequence_length=backbone.max_sequence_length,
        **extra,
    ).images[0]
    guidance = backbone.guidance(3.5, true_cfg)
    conditioning = backbone.encode([prompt], [negative], width=128, height=96, guidance=guidance)
    drawn = sample(backbone, conditioning, [make_generator(4)], Sampling(128, 96, 3, guidance))
    difference = np.abs(np.asarray(drawn.images[0], dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert drawn.images[0].size == reference.size == (128, 96)
    assert difference.max() <= (0 if true_cfg is None else 1)
    assert drawn.evaluations == 3 * guidance.halves


class StepLog:
    def __init__(self):
        self.steps = []

    def begin_step(self, index, timestep):
        self.steps.append(index)


def test_a_run_split_at_a_step_equals_the_whole_run(tiny_sdxl):
    """Stage 2 of a re-denoising method starts late: steps 0..k-1 then k..T-1 equal 0..T-1 (Euler keeps a
    step index, which the loop sets from ``start``)."""
    pipe, backbone = tiny_sdxl.pipeline, tiny_sdxl.backbone
    conditioning = backbone.encode(["a dog"], [""], width=64, height=64)

    def noise(x, t, i):
        return backbone.guided_noise(x, t, conditioning, backbone.guidance(5.0))

    def start():
        scheduler = backbone.scheduler(4, width=64, height=64)
        return scheduler, backbone.initial_latents(scheduler, [make_generator(1)], width=64, height=64)

    scheduler, latents = start()
    log = StepLog()
    whole = denoise(scheduler, latents, noise, step_state=log)
    assert log.steps == [0, 1, 2, 3]
    scheduler, latents = start()
    middle: list[DenoiseStep] = []
    first_half = denoise(scheduler, latents, noise, stop=2, on_step=middle.append)
    second = make_scheduler(pipe.scheduler, 4, "cpu")
    log = StepLog()
    split = denoise(second, first_half, noise, start=2, step_state=log)
    assert log.steps == [2, 3] and [step.index for step in middle] == [0, 1]
    assert torch.equal(middle[-1].next_latents, first_half)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        denoise(make_scheduler(pipe.scheduler, 4, "cpu"), latents, noise, start=5)


def test_schedulers_by_name_keep_the_noise_schedule(tiny_sdxl):
    template = tiny_sdxl.pipeline.scheduler
    ddim = make_scheduler(template, 10, "cpu", "ddim")
    assert type(ddim).__name__ == "DDIMScheduler" and len(ddim.timesteps) == 10
    assert ddim.config.beta_schedule == template.config.beta_schedule == "scaled_linear"
    assert type(make_scheduler(template, 5, "cpu")) is type(template)
    with pytest.raises(ValueError, match="not known"):
        make_scheduler(template, 5, "cpu", "magic")


def test_conditioning_rows_are_joined_repeated_and_picked_field_by_field():
    def rows(values):
        x = torch.tensor(values, dtype=torch.float32)
        return SDXLConditioning(x[:, None, None].expand(-1, 3, 2), x[:, None].expand(-1, 4), x[:, None].expand(-1, 6))

    a, b = rows([1.0, 2.0]), rows([3.0])
    joined = SDXLConditioning.cat([a, b])
    assert (
        len(joined) == 3 and joined.pooled[:, 0].tolist() == [1, 2, 3] and joined.time_ids[:, 0].tolist() == [1, 2, 3]
    )
    assert a.repeat(2).embeds[:, 0, 0].tolist() == [1, 2, 1, 2]
    assert joined.rows(1).pooled[:, 0].tolist() == [2] and joined.rows(0, 2).time_ids.shape == (2, 6)
    pair = GuidancePair(rows([0.0]), rows([5.0]))
    assert pair.batch().embeds[:, 0, 0].tolist() == [0, 5]  # diffusers' order: uncond rows, then cond rows
    assert set(pair.batch().denoiser_inputs()["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    assert set(TextConditioning(torch.zeros(1, 3, 2)).denoiser_inputs()) == {"encoder_hidden_states"}
    with pytest.raises(TypeError, match="different families"):
        TextConditioning.cat([TextConditioning(torch.zeros(1, 3, 2)), a])


def test_sd15_conditioning_has_text_only(tiny_sd15):
    pair = prompt_encoder(tiny_sd15.pipeline, "sd15", "cpu")(["a cat", "a dog"], ["", ""], width=64, height=64)
    assert type(pair.cond) is TextConditioning and pair.cond.embeds.shape[:2] == (2, 77)
    with pytest.raises(ValueError, match="negative prompts"):
        prompt_encoder(tiny_sd15.pipeline, "sd15", "cpu")(["a cat"], [], width=64, height=64)


def test_no_negative_prompt_is_what_each_pipeline_makes_without_one(tiny_sdxl, tiny_sd15):
    """None is no negative prompt: SDXL (force_zeros_for_empty_prompt) zeros that row's text embeddings and keeps
    the size ids; SD 1.5's pipeline encodes the empty prompt. A written one is encoded, row by row."""
    sdxl = tiny_sdxl.backbone.encode(["a cat", "a dog"], [None, "blurry"], width=64, height=64)
    written = tiny_sdxl.backbone.encode(["a cat", "a dog"], ["", "blurry"], width=64, height=64)
    assert not sdxl.uncond.embeds[0].any() and not sdxl.uncond.pooled[0].any()
    assert written.uncond.embeds[0].any()
    for field in ("embeds", "pooled", "time_ids"):
        assert getattr(sdxl.uncond, field)[1].equal(getattr(written.uncond, field)[1]), field
    assert sdxl.uncond.time_ids.equal(written.uncond.time_ids)
    sd15 = tiny_sd15.backbone.encode(["a cat"], [None], width=64, height=64)
    assert sd15.uncond.embeds.equal(tiny_sd15.backbone.encode(["a cat"], [""], width=64, height=64).uncond.embeds)


def test_guidance_functions_match_their_formulas():
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

    generator = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    guided = cfg_combine(uncond, cond, 7.5)
    torch.testing.assert_close(guided, uncond + 7.5 * (cond - uncond))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), rescale_noise_cfg(guided, cond, 0.7))
    assert rescale_guidance(guided, cond, 0.0) is guided


def test_mask_from_map_finds_the_bright_region():
    attention_map = torch.zeros(8, 8)
    attention_map[2:5, 3:7] = 1.0
    mask = mask_from_map(attention_map, (64, 64))
    assert mask.shape == (64, 64) and mask.dtype == torch.bool
    assert mask[28, 40] and not mask[2, 2] and not mask[60, 60]

from __future__ import annotations

import numpy as np
import torch

from storycast.masks.attention import mask_from_map, otsu_threshold
from storycast.pipelines.sdxl import (
    count_unet_evaluations,
    decode_latents,
    encode_prompts,
    fresh_scheduler,
    guided_noise,
    initial_latents,
    time_ids,
)
from storycast.utils.torch_utils import make_generator


def test_hand_written_loop_equals_the_diffusers_pipeline(tiny_sdxl):
    """Our sampling parts reproduce StableDiffusionXLPipeline exactly (same noise, guidance, decode)."""
    pipe = tiny_sdxl.pipeline
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

    scheduler = fresh_scheduler(pipe, steps)
    latents = initial_latents(scheduler, (4, 8, 8), [make_generator(4)], dtype=torch.float32, device="cpu")
    conditioning = encode_prompts(pipe, [prompt], [negative])
    ids = time_ids(64, 64, 2, dtype=torch.float32, device="cpu")
    with count_unet_evaluations(pipe.unet) as counter:
        for t in scheduler.timesteps:
            noise = guided_noise(pipe.unet, scheduler.scale_model_input(latents, t), t, conditioning, ids, guidance)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    assert counter.evaluations == 2 * steps
    ours = np.asarray(decode_latents(pipe, latents)[0], dtype=np.float32) / 255
    assert np.abs(ours - reference).max() <= 1 / 255 + 1e-6


def naive_otsu(values, bins=256):
    histogram = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))[0].astype(float)
    p = histogram / histogram.sum()
    centers = (np.arange(bins) + 0.5) / bins
    variances = {}
    for cut in range(1, bins):
        w0, w1 = p[:cut].sum(), p[cut:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0, m1 = (p[:cut] * centers[:cut]).sum() / w0, (p[cut:] * centers[cut:]).sum() / w1
        variances[cut] = w0 * w1 * (m0 - m1) ** 2
    best = max(variances.values())
    ties = [cut for cut, variance in variances.items() if variance >= best - 1e-6 * best]
    return ties[len(ties) // 2] / bins


def test_otsu_matches_a_naive_search():
    generator = np.random.default_rng(0)
    for _ in range(5):
        values = np.concatenate([generator.normal(0.25, 0.05, 500), generator.normal(0.7, 0.08, 300)])
        assert abs(otsu_threshold(torch.tensor(values)) - naive_otsu(values)) <= 1 / 256


def test_mask_from_map_finds_the_bright_region():
    attention_map = torch.zeros(8, 8)
    attention_map[2:5, 3:7] = 1.0
    mask = mask_from_map(attention_map, (64, 64))
    assert mask.shape == (64, 64) and mask.dtype == torch.bool
    assert mask[28, 40] and not mask[2, 2] and not mask[60, 60]

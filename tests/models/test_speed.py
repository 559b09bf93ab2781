"""Speed options leave the output as it was: channels-last and regional compilation equal the default, and
compilation where torch cannot compile falls back with a stated reason."""

from __future__ import annotations

import logging

import numpy as np
import torch

from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.models.speed import apply_speed_options
from storycast.models.tiny import tiny_pipeline
from storycast.runs.draw import draw
from tests.helpers import small_story_data

GENERATION = {"steps": 2, "width": 64, "height": 64}


def pixels(result):
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def test_channels_last_draws_the_same_frames():
    story = small_story_data(2)
    plain = draw(story, "vanilla", load_models(ModelSpec(source="tiny-sd15", device="cpu")), generation=GENERATION)
    fast_models = load_models(ModelSpec(source="tiny-sd15", device="cpu", channels_last=True))
    assert fast_models.info["speed"] == {"channels_last": True}
    fast = draw(story, "vanilla", fast_models, generation=GENERATION)
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(pixels(plain), pixels(fast), strict=True))


def test_regional_compilation_equals_the_uncompiled_unet():
    pipe = tiny_pipeline("sd15")
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = pipe.unet(sample, 10, text).sample
        applied = apply_speed_options(pipe.unet, "cpu", channels_last=False, compile=True)
        assert applied == {"compile": "repeated blocks"}
        torch.testing.assert_close(pipe.unet(sample, 10, text).sample, expected, atol=1e-4, rtol=1e-4)


def test_compilation_falls_back_with_the_reason_where_torch_cannot_compile(monkeypatch, caplog):
    monkeypatch.setattr("storycast.models.speed.shutil.which", lambda name: None)
    pipe = tiny_pipeline("sd15")
    with caplog.at_level(logging.WARNING, logger="storycast"):
        applied = apply_speed_options(pipe.unet, "cpu", channels_last=False, compile=True)
    assert applied == {"compile": "off (no C compiler was found for the CPU backend)"}
    assert any("runs uncompiled" in r.getMessage() for r in caplog.records)
    assert not hasattr(pipe.unet, "_orig_mod")  # the UNet is the plain one

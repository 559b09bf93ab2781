from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from storycast.errors import SettingsError, UnknownMethodError
from storycast.methods.base import ProgressEvent, RunContext
from storycast.methods.registry import get_method, list_methods, register_method
from storycast.methods.vanilla import VanillaMethod
from storycast.runs.plan import resolve_generation
from storycast.story.parse import parse_story
from tests.helpers import small_story_data


def make_story(models, frames=3, **settings):
    story = parse_story(small_story_data(frames))
    method = VanillaMethod(models)
    resolved = resolve_generation(story, models, method, settings)
    return dataclasses.replace(story, settings=resolved), method


def pixels(result):
    return np.asarray(result.image, dtype=np.float32)


@pytest.mark.parametrize("fixture", ["tiny_sdxl", "tiny_sd15"])
def test_same_seed_same_image_and_other_seed_other_image(fixture, request):
    models = request.getfixturevalue(fixture)
    story, method = make_story(models, width=64, height=64)
    first = method.generate(story, (0, 1), RunContext())
    second = method.generate(story, (0, 1), RunContext())
    assert [r.image.size for r in first] == [(64, 64), (64, 64)]
    assert np.array_equal(pixels(first[0]), pixels(second[0]))
    assert np.array_equal(pixels(first[1]), pixels(second[1]))
    assert first[0].seed == 3 and first[1].seed == 4
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 1.0


def test_a_frame_does_not_depend_on_its_batch(tiny_sdxl):
    story, method = make_story(tiny_sdxl, width=64, height=64)
    batched = method.generate(story, (0, 1, 2), RunContext())
    alone = method.generate(story, (1,), RunContext())
    assert np.abs(pixels(batched[1]) - pixels(alone[0])).max() <= 2  # rounding of batched matmuls only


def test_progress_reports_every_step(tiny_sdxl):
    story, method = make_story(tiny_sdxl, width=64, height=64, steps=3)
    events: list[ProgressEvent] = []
    method.generate(story, (0,), RunContext(progress=events.append))
    assert [(e.stage, e.completed, e.total) for e in events] == [("denoise", i, 3) for i in range(4)]


def test_plan_batches_frames(tiny_sdxl):
    story, method = make_story(tiny_sdxl, frames=5, batch_size=2)
    assert [group.frames for group in method.plan(story, method.settings)] == [(0, 1), (2, 3), (4,)]


def test_registry_lazy_lookup_and_errors():
    assert "vanilla" in list_methods()
    assert get_method("vanilla") is VanillaMethod
    with pytest.raises(UnknownMethodError, match="use one of"):
        get_method("nonexistent")
    register_method("vanilla-alias", "storycast.methods.vanilla:VanillaMethod")
    assert get_method("vanilla-alias") is VanillaMethod
    with pytest.raises(ValueError):
        register_method("bad", "no_colon_here")


def test_method_refuses_a_model_family_it_does_not_run_on(tiny_sd15):
    class SdxlOnly(VanillaMethod):
        families = ("sdxl",)

    with pytest.raises(SettingsError, match="sdxl"):
        SdxlOnly(tiny_sd15)


def test_generation_settings_precedence(tiny_sdxl):
    data = small_story_data(1)
    data["settings"] = {"steps": 3, "seed": 9}
    story = parse_story(data)

    class Prefers(VanillaMethod):
        @classmethod
        def generation_defaults(cls, family=None):
            return {"steps": 50, "guidance_scale": 7.0}

    resolved = resolve_generation(story, tiny_sdxl, Prefers(tiny_sdxl), {"guidance_scale": 2.0, "width": None})
    assert (resolved.steps, resolved.guidance_scale, resolved.seed, resolved.width) == (3, 2.0, 9, 128)
    with pytest.raises(SettingsError, match="multiple of 8"):
        resolve_generation(story, tiny_sdxl, VanillaMethod(tiny_sdxl), {"width": 100})

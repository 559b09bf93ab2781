"""IdentityStory's sweet spot and dilation schedule as fractions of the trajectory: on SDXL they give exactly the
authors' step numbers (and the steps storycast gave before the fractions), on FLUX our own default."""

from __future__ import annotations

import pytest

from storycast.masks.ops import progressive_kernel
from storycast.methods.identitystory.settings import (
    FLUX_SWEET_SPOT_FRACTION,
    IdentityStorySettings,
    step_at_fraction,
)
from storycast.settings import ResolveContext
from storycast.story.model import GenerationSettings


def resolved(family, steps, **settings):
    context = ResolveContext(GenerationSettings(steps=steps, guidance_scale=3.5), family)
    return IdentityStorySettings.from_mapping(settings).resolve(context)


def test_sdxl_fractions_give_the_authors_steps_and_the_steps_given_before():
    at_fifty = resolved("sdxl", 50)
    assert at_fifty.injection.sweet_spot_step == 10 and at_fifty.injection.sweet_spot_fraction == 0.2
    assert at_fifty.discovery.start_merge_step == 10 and at_fifty.discovery.steps == 50
    assert at_fifty.discovery.guidance_scale == 5.0 and at_fifty.discovery.freeu is True
    for steps in range(2, 301):
        before = max(1, min(max(1, round(10 * steps / 50)), steps - 1))  # the formula before the fractions
        assert resolved("sdxl", steps).injection.sweet_spot_step == before, steps
        assert step_at_fraction(0.2, steps) == max(1, round(10 * steps / 50)), steps


def test_flux_default_is_ours_and_the_settings_override_it():
    flux = resolved("flux", 28)
    assert flux.injection.sweet_spot_fraction == FLUX_SWEET_SPOT_FRACTION == 0.4
    assert flux.injection.sweet_spot_step == 11  # round(0.4 * 28)
    assert resolved("flux", 50).injection.sweet_spot_step == 20
    assert flux.discovery.steps == 28 and flux.discovery.freeu is False
    assert flux.discovery.guidance_scale == 3.5  # the generation's (FLUX.1-dev's embedded guidance)
    assert resolved("flux", 28, sweet_spot_fraction=0.25).injection.sweet_spot_step == 7
    assert resolved("flux", 28, sweet_spot_step=5).injection.sweet_spot_step == 5
    assert resolved("flux", 2).injection.sweet_spot_step == 1  # within 1..T-1 however few steps


def test_the_dilation_grows_over_the_same_fraction_of_the_redenoised_steps_on_every_schedule():
    for steps, family in ((50, "sdxl"), (28, "flux"), (50, "flux")):
        s = resolved(family, steps).injection.sweet_spot_step
        kernels = [progressive_kernel(i, steps, s, 50) for i in range(s - 1, steps)]
        assert kernels[0] == 0 and kernels[-1] == 50 and kernels == sorted(kernels)
        halfway = s - 1 + (steps - s + 1) // 2
        assert abs(progressive_kernel(halfway, steps, s, 50) - 25) <= 50 / (steps - s)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused_naming_the_setting(bad):
    from storycast.errors import SettingsError

    with pytest.raises(SettingsError, match="sweet_spot_fraction must be between 0 and 1"):
        IdentityStorySettings.from_mapping({"sweet_spot_fraction": bad})


def test_an_sdxl_run_records_the_settings_it_recorded_before_flux_came():
    """Runs key on their recorded settings: on SDXL the FLUX sections and the fraction (already the recorded step)
    are left out, so an SDXL run folder made before IdentityStory ran on FLUX resumes instead of redrawing."""
    from storycast.methods.identitystory.method import IdentityStoryMethod

    sdxl = IdentityStoryMethod.recorded_settings(resolved("sdxl", 50), "sdxl")
    assert "flux" not in sdxl and "pulid" not in sdxl
    assert "sweet_spot_fraction" not in sdxl["injection"] and sdxl["injection"]["sweet_spot_step"] == 10
    flux = IdentityStoryMethod.recorded_settings(resolved("flux", 28), "flux")
    assert {"flux", "pulid"} <= set(flux) and flux["injection"]["sweet_spot_fraction"] == FLUX_SWEET_SPOT_FRACTION

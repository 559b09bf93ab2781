"""`vanilla` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.settings import MethodSettings

ABOUT = MethodAbout(
    name="vanilla",
    summary="plain text-to-image per frame (no consistency mechanism)",
    families=("sdxl", "sd15", "flux"),
    settings=MethodSettings,
    card=MethodCard(
        families_why="plain text-to-image runs on every family, through the one sampler (equal to diffusers' pipelines, tested)",
        training="none",
        inputs="text",
        cost="the baseline: 2T UNet evaluations, T on FLUX.1-dev",
        source="diffusers' StableDiffusion(XL)Pipeline and FluxPipeline",
    ),
)

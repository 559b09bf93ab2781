"""`story-adapter` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.story_adapter.settings import StoryAdapterSettings

ABOUT = MethodAbout(
    name="story-adapter",
    summary="Story-Adapter (arXiv 2024): every frame redrawn round after round with IP-Adapter over all frames of the "
    "round before (training-free, (1 + rounds) x SDXL)",
    families=("sdxl",),
    settings=StoryAdapterSettings,
    card=MethodCard(
        families_why="it reads earlier frames through IP-Adapter's SDXL weights (h94/IP-Adapter), as the authors do",
        training="training-free (pretrained IP-Adapter)",
        inputs="text",
        cost="(1 + rounds)x: 11x at the default 10 rounds",
        source="arXiv 2410.06244; UCSC-VLAA/story-adapter @ 6f1c402",
    ),
)

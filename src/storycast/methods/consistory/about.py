"""`consistory` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.consistory.settings import ConsiStorySettings

ABOUT = MethodAbout(
    name="consistory",
    summary="ConsiStory (SIGGRAPH 2024): subject-driven shared attention + feature injection, training-free",
    families=("sdxl",),
    settings=ConsiStorySettings,
    card=MethodCard(
        families_why="its subject masks, shared attention and DIFT feature injection are defined on SDXL's UNet, as the authors' code is",
        training="training-free",
        inputs="text",
        cost="2.20x (a vanilla pass for query blending, an injection pass)",
        source="SIGGRAPH 2024 (arXiv 2402.03286); NVlabs/consistory @ 8158d41 (non-commercial licence)",
    ),
)

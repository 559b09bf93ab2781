"""`photomaker` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.photomaker.settings import PhotoMakerMethodSettings

ABOUT = MethodAbout(
    name="photomaker",
    summary="PhotoMaker v1 or v2 (CVPR 2024) alone: identities from photos or (v1) discovered, merged from the demos' step",
    families=("sdxl",),
    settings=PhotoMakerMethodSettings,
    card=MethodCard(
        families_why="PhotoMaker v1 and v2 are SDXL adapters",
        training="pretrained adapter (TencentARC/PhotoMaker, PhotoMaker-V2)",
        inputs="reference photos, or (v1) identities discovered from text",
        cost="1.00x",
        source="CVPR 2024 (arXiv 2312.04461); TencentARC/PhotoMaker",
    ),
)

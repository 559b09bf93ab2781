"""`storydiffusion` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.storydiffusion.settings import StoryDiffusionSettings

ABOUT = MethodAbout(
    name="storydiffusion",
    summary="StoryDiffusion (NeurIPS 2024): consistent self-attention over each character's identity frames",
    families=("sdxl", "sd15", "flux"),
    settings=StoryDiffusionSettings,
    card=MethodCard(
        families_why="consistent self-attention needs only self-attention over image tokens, which every family has; the authors' code is SDXL and SD 1.5, FLUX.1 (its single-stream blocks) is our extension",
        training="training-free",
        inputs="text; reference photos through PhotoMaker v1 (SDXL)",
        cost="1.00x (a token bank flat in story length)",
        source="NeurIPS 2024 (arXiv 2405.01434); HVision-NKU/StoryDiffusion @ 8de45e4",
    ),
)

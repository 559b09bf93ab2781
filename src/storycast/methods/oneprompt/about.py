"""`1prompt1story` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.oneprompt.settings import OnePromptSettings

ABOUT = MethodAbout(
    name="1prompt1story",
    summary="1Prompt1Story (ICLR 2025): the story in one prompt, Singular-Value Reweighting and Identity-Preserving "
    "Cross-Attention (training-free, 1x SDXL)",
    families=("sdxl",),
    settings=OnePromptSettings,
    card=MethodCard(
        families_why="its Singular-Value Reweighting and identity-preserving cross-attention act on SDXL's CLIP prompt embeddings and UNet cross-attention, as the authors' code does; not ported to FLUX's T5 and joint attention",
        training="training-free",
        inputs="text",
        cost="1.00x",
        source="ICLR 2025 (arXiv 2501.13554); byliutao/1Prompt1Story @ 34e22ac",
    ),
)

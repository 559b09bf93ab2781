"""`storynizor` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.storynizor.settings import StorynizorSettings

ABOUT = MethodAbout(
    name="storynizor",
    summary="Storynizor (AAAI 2025): auto-mask self-attention across frames + masked identity injection",
    families=("sd15", "sdxl"),
    settings=StorynizorSettings,
    card=MethodCard(
        families_why="its ID-Injector is a cross-attention adapter of a UNet (IP-Adapter-Plus-Face weights for SD 1.5 and SDXL until you train your own); there is none for FLUX",
        training="trained ID-Injector (`storycast train storynizor`; public IP-Adapter-Plus-Face weights until then)",
        inputs="text and reference photos (AMSA alone for a character without photos)",
        cost="1.00x",
        source="AAAI 2025 (arXiv 2409.19624); no code released: written from the paper",
    ),
)

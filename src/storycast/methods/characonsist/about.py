"""`characonsist` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.characonsist.settings import CharaConsistSettings

ABOUT = MethodAbout(
    name="characonsist",
    summary="CharaConsist (ICCV 2025): point-tracking attention and adaptive token merge to an identity frame (FLUX)",
    families=("flux",),
    settings=CharaConsistSettings,
    card=MethodCard(
        families_why=(
            "built on FLUX's joint attention with rotary positions (masks from image-to-text attention in one softmax, "
            "identity keys moved to matched points by their positions), as the authors' code is"
        ),
        training="training-free",
        inputs="text",
        cost="1.22x for a frame reading an identity frame (a first pass to the mask step), 1x for identity frames",
        source="ICCV 2025 (arXiv 2507.11533); Murray-Wang/CharaConsist @ 759018c",
    ),
)

"""`story2board` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.story2board.settings import Story2BoardSettings

ABOUT = MethodAbout(
    name="story2board",
    summary="Story2Board (2025): each frame beside an anchored reference panel, with reciprocal value mixing",
    families=("flux",),
    settings=Story2BoardSettings,
    card=MethodCard(
        families_why=(
            "defined on FLUX's joint attention (text and both panels in one softmax, block indices over its 57 "
            "blocks), as the authors' code is; a UNet version would be a different method"
        ),
        training="training-free",
        inputs="text",
        cost="(n - 1)/n x for a storyboard of n frames, each evaluation over a canvas of twice the image tokens",
        source="arXiv 2508.09983 (2025); DavidDinkevich/Story2Board @ 92ef110 (MIT)",
    ),
)

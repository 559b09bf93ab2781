"""`identitystory` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.identitystory.settings import IdentityStorySettings

ABOUT = MethodAbout(
    name="identitystory",
    summary="IdentityStory (AAAI 2026): identity discovery + re-denoising identity injection (SDXL + PhotoMaker)",
    families=("sdxl",),
    settings=IdentityStorySettings,
    card=MethodCard(
        families_why="its identity-preserving generator is PhotoMaker v1, an SDXL adapter (FLUX through PuLID-FLUX is planned, as our extension)",
        training="training-free (pretrained PhotoMaker v1)",
        inputs="text (identities discovered once per character) or reference photos",
        cost="1.82x (182 evaluations for a one-character frame at T = 50) + discovery once per character",
        source="AAAI 2026 (arXiv 2512.23519); Correr-Zhou/IdentityStory @ 882cfd7c",
    ),
)

"""`identitystory` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.identitystory.settings import IdentityStorySettings

ABOUT = MethodAbout(
    name="identitystory",
    summary=(
        "IdentityStory (AAAI 2026): identity discovery + re-denoising identity injection (SDXL + PhotoMaker; FLUX + "
        "PuLID-FLUX, our extension)"
    ),
    families=("sdxl", "flux"),
    settings=IdentityStorySettings,
    card=MethodCard(
        families_why=(
            "its identity-preserving generator is PhotoMaker v1 on SDXL, as the authors' code; on FLUX it is "
            "PuLID-FLUX (our extension of the paper: discovery in PuLID's ID-token space, the same injection)"
        ),
        training="training-free (pretrained PhotoMaker v1 on SDXL, PuLID-FLUX v0.9.1 on FLUX)",
        inputs="text (identities discovered once per character) or reference photos",
        cost=(
            "SDXL 1.82x (182 evaluations for a one-character frame at T = 50); FLUX 1.64x (46 for one character at "
            "T = 28, s = 11); + discovery once per character"
        ),
        source="AAAI 2026 (arXiv 2512.23519); Correr-Zhou/IdentityStory @ 882cfd7c",
    ),
)

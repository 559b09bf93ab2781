"""`pulid` as `storycast methods` and `validate` see it, without importing the method (see ``MethodAbout``)."""

from __future__ import annotations

from storycast.methods.card import MethodAbout, MethodCard
from storycast.methods.pulid.settings import PuLIDMethodSettings

ABOUT = MethodAbout(
    name="pulid",
    summary="PuLID-FLUX v0.9.1 alone: each frame's character from its photos or discovered ID tokens, via ID cross-attention",
    families=("flux",),
    settings=PuLIDMethodSettings,
    card=MethodCard(
        families_why="PuLID-FLUX's weights are made for FLUX.1-dev's transformer (19 double, 38 single blocks)",
        training="pretrained adapter (guozinan/PuLID pulid_flux_v0.9.1)",
        inputs="reference photos (a face in each), or identities discovered from text",
        cost="1.00x (2.00x with true_cfg > 1)",
        source="NeurIPS 2024 (arXiv 2404.16022); ToTheBeginning/PuLID @ 1aa2fc7 (Apache-2.0)",
    ),
)

"""FreeU (Si et al., CVPR 2024): backbone and skip-connection scaling in the UNet's decoder, switched on
for a block of work and off after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FreeUFactors:
    """FreeU's four factors: s1, s2 scale the skip features, b1, b2 the backbone features."""

    s1: float
    s2: float
    b1: float
    b2: float


# FreeU's README (ChenyangSi/FreeU) recommends these per family; IdentityStory and StoryDiffusion both run
# SDXL with the SDXL values.
FREEU_SDXL = FreeUFactors(s1=0.6, s2=0.4, b1=1.1, b2=1.2)
FREEU_SD15 = FreeUFactors(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
FREEU = {"sdxl": FREEU_SDXL, "sd15": FREEU_SD15}


@contextlib.contextmanager
def freeu(unet: Any, factors: FreeUFactors | None) -> Iterator[None]:
    """FreeU on ``unet`` inside the block when ``factors`` is given; off again after it."""
    if factors is None:
        yield
        return
    unet.enable_freeu(s1=factors.s1, s2=factors.s2, b1=factors.b1, b2=factors.b2)
    try:
        yield
    finally:
        unet.disable_freeu()

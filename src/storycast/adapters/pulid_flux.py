"""PuLID-FLUX attached to loaded FLUX models, shared by the methods that read it (``pulid``; IdentityStory on FLUX).

Settings are read when a run is planned, so this module imports no torch; the weights load on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storycast.settings import MethodSettings, setting

if TYPE_CHECKING:
    from storycast.identity.pulid_flux_adapter import PuLIDFluxAdapter
    from storycast.models.loading import LoadedModels

# As storycast.identity.pulid_flux and eva_clip name them; written again so that the settings do not import torch.
PULID_REPO = "guozinan/PuLID"
PULID_FLUX_FILE = "pulid_flux_v0.9.1.safetensors"
EVA_CLIP_REPO = "QuanSun/EVA-CLIP"
EVA_CLIP_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"


@dataclass(frozen=True)
class PuLIDFluxSettings(MethodSettings):
    """Where PuLID-FLUX's weights and its EVA02-CLIP tower come from."""

    source: str = setting(
        "auto",
        f"PuLID-FLUX weights: a Hub id, folder or .safetensors file. 'auto': {PULID_REPO} ({PULID_FLUX_FILE}), or "
        "random weights of the same layout for the tiny and random-weight presets.",
        flat="pulid",
    )
    file: str = setting(PULID_FLUX_FILE, "File name inside a Hub repo or folder (v0.9.1, the authors' latest).",
                        flat="pulid_file")  # fmt: skip
    eva_clip: str = setting(
        "auto",
        f"EVA02-CLIP-L-14-336 weights (EVA02_CLIP_L_336_psz14_s6B.pt): a Hub id, folder or file. 'auto': "
        f"{EVA_CLIP_REPO}, or random weights for the tiny and random-weight presets.",
    )

    def location(self) -> str:
        return PULID_REPO if self.source == "auto" else self.source

    def eva_location(self) -> str:
        return EVA_CLIP_REPO if self.eva_clip == "auto" else self.eva_clip


def attach_pulid_flux(
    models: LoadedModels, settings: PuLIDFluxSettings, *, intervals: tuple[int, int] = (2, 4)
) -> PuLIDFluxAdapter:
    """PuLID-FLUX on ``models`` (FLUX), loaded on first use and shared by every method on these models.

    ``intervals`` are (double, single): a CA module after every N-th block; the weights' module count must match
    them (checked while loading). The tiny and random-weight presets get random weights (tiny or full geometry).
    """
    from storycast.identity.pulid_flux import PuLIDFluxConfig
    from storycast.identity.pulid_flux_adapter import PuLIDFluxAdapter

    key = ("pulid-flux", f"{settings.source}:{settings.file}:{settings.eva_clip}:{intervals}")
    if key in models.attachments:
        return models.attachments[key]
    transformer = models.backbone.denoiser
    facts = models.facts
    place = {"device": models.device, "vision_device": models.aux_device}
    if settings.source == "auto" and (facts.tiny or facts.random):
        from storycast.adapters.tiny import random_pulid_flux_weights

        weights, eva, config, eva_config = random_pulid_flux_weights(
            transformer, models.spec.seed, tiny=facts.tiny, intervals=intervals
        )
        adapter = PuLIDFluxAdapter.load(transformer, weights, eva, config=config, eva_config=eva_config, **place)
    else:
        config = PuLIDFluxConfig(double_interval=intervals[0], single_interval=intervals[1])
        adapter = PuLIDFluxAdapter.load(
            transformer,
            settings.location(),
            settings.eva_location(),
            weight_name=settings.file,
            config=config,
            local_files_only=models.spec.local_files_only,
            **place,
        )
    models.attachments[key] = adapter
    return adapter

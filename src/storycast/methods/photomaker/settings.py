"""Settings of the PhotoMaker baseline (readable without torch: ``storycast validate`` checks them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.adapters.photomaker import PhotoMakerSettings
from storycast.methods.identitystory.settings import DiscoverySettings
from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, check_range, setting


@dataclass(frozen=True)
class PhotoMakerMethodSettings(MethodSettings):
    """Settings of the PhotoMaker baseline."""

    identity: Literal["auto", "photos", "discovered"] = setting(
        "auto",
        "Where identities come from: 'photos' (each character's reference photos, required), 'discovered' "
        "(IdentityStory's discovery from the description, through the identity library), 'auto' (photos when a "
        "character has them, else discovered). PhotoMaker v2 reads photos only: every character needs them.",
    )
    style_strength: float = setting(
        0.2,
        "Share of the steps drawn from the text alone before the identity is merged (the PhotoMaker demos' "
        "style_strength_ratio 20 %; the merge step is capped at 30, as their pipeline does).",
    )
    scheduler: SchedulerName = setting(
        "model", "Sampler: the model's own (Euler on SDXL base, the PhotoMaker demos')."
    )
    photomaker: PhotoMakerSettings = setting(factory=PhotoMakerSettings, help="PhotoMaker v1 or v2 weights.")
    discovery: DiscoverySettings = setting(
        factory=DiscoverySettings, help="IdentityStory's discovery, for characters without photos (v1 only)."
    )
    face_models: str | None = setting(
        None,
        "PhotoMaker v2 only: folder of the insightface pack whose detector and ArcFace embed each reference photo "
        "(default: ~/.insightface/models/<face_pack>).",
    )
    face_pack: Literal["buffalo_l", "antelopev2"] = setting(
        "buffalo_l", "PhotoMaker v2 only: the insightface pack (the authors' FaceAnalysis default, buffalo_l)."
    )

    def validate(self) -> None:
        check_range("style_strength", self.style_strength, 0, 1)

    def merge_step(self, steps: int) -> int:
        from storycast.identity.photomaker_prompt import merge_step

        return merge_step(self.style_strength, steps)

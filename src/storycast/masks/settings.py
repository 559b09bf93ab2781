"""The mask settings methods share, readable without torch (``storycast validate`` checks them before anything
loads): the provider, retries, cleaning, and GroundingDINO + SAM's checkpoints and thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.models.presets import ADAPTERS
from storycast.settings import MethodSettings, ResolveContext, check_range, setting

DETECTOR_ID = ADAPTERS["grounding-dino"].repo_id
SEGMENTER_ID = ADAPTERS["sam"].repo_id
BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25


@dataclass(frozen=True)
class MaskSettings(MethodSettings):
    """Where the characters of a frame are, and how their masks are cleaned."""

    provider: Literal["auto", "grounded-sam", "attention", "user"] = setting(
        "auto",
        "Mask provider: 'auto' (the frame's mask files when it has them, else GroundingDINO + SAM when their "
        "weights are on this machine, else the class words' attention maps), 'grounded-sam' (the authors'), "
        "'attention' (no extra models) or 'user' (mask files given per frame).",
        flat="mask_provider",
    )
    auto_detector: bool | None = setting(
        None,
        "Whether 'auto' may choose GroundingDINO + SAM when their weights are on this machine. None: yes, except "
        "on tiny demo models, whose images are noise that no detector can read.",
    )
    retries: int = setting(
        3,
        "New seeds tried when a character is not found, before the frame fails (the authors retry without bound).",
        flat="mask_retries",
    )
    cleanup_dilation: int = setting(10, "Dilation of the cleaned masks, in pixels at 1024 px (the authors' 10).")
    detector: str = setting(DETECTOR_ID, "GroundingDINO checkpoint (Hub id or folder) for 'grounded-sam'.")
    segmenter: str = setting(SEGMENTER_ID, "SAM checkpoint (Hub id or folder) for 'grounded-sam'.")
    box_threshold: float = setting(BOX_THRESHOLD, "GroundingDINO box threshold (the authors' 0.3).")
    text_threshold: float = setting(TEXT_THRESHOLD, "GroundingDINO text threshold (the authors' 0.25).")

    def validate(self) -> None:
        check_range("mask_retries", self.retries, 0)
        check_range("cleanup_dilation", self.cleanup_dilation, 0)
        check_range("box_threshold", self.box_threshold, 0, 1)
        check_range("text_threshold", self.text_threshold, 0, 1)

    def resolve(self, context: ResolveContext) -> MaskSettings:
        if self.auto_detector is not None:
            return self
        import dataclasses

        return dataclasses.replace(self, auto_detector=not context.tiny)

"""Settings of ``identitystory``, with the authors' defaults (``main.py`` of Correr-Zhou/IdentityStory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.errors import SettingsError
from storycast.methods.settings import MethodSettings

SEARCH_NEGATIVE_PROMPT = "(asymmetry, worst quality, low quality, illustration, 3d, 2d, painting, cartoons, sketch)"
INJECTION_NEGATIVE_PROMPT = "noisy, blurry, soft, deformed, ugly"
RETRY_SEED_OFFSET = 3533  # the authors' seed change after a failed segmentation

# Smaller discovery budgets for the tiny preset, so that a whole story draws in seconds.
TINY_CANDIDATES = 12
TINY_SVD_RANK = 2


@dataclass(frozen=True)
class IdentityStorySettings(MethodSettings):
    """Settings of IdentityStory. ``None`` means "automatic" as described per field.

    Attributes:
        photomaker: PhotoMaker v1 weights: a Hub id, folder or file. "auto": ``TencentARC/PhotoMaker``, or a
            random tiny adapter for tiny models.
        photomaker_file: File name inside a Hub repo or folder.
        sweet_spot_step: s, the step re-denoising starts from (0-based steps i with i + 1 >= s are redrawn).
            None: 10 at 50 steps, T/5 otherwise.
        max_dilation: Dilation of the progressive masks at the last step, in pixels at 1024 px (scaled with
            the image size).
        cleanup_dilation: Dilation of the cleaned masks, in pixels at 1024 px.
        identity_strength: How far the class token moves to the fused identity embedding (1 = the paper).
        fuse_mode: "repeated": the fuse is applied again at every injection step, as the authors' code does
            (their reported numbers come from it); "once": applied once per frame.
        mask_provider: "auto" (user masks when the frame has them, GroundingDINO + SAM when their weights
            are on this machine, else attention maps), "grounded-sam", "attention" or "user".
        mask_retries: New seeds tried when a character is not found, before giving up on the frame.
        detector: GroundingDINO checkpoint (Hub id or folder) for "grounded-sam".
        segmenter: SAM checkpoint (Hub id or folder) for "grounded-sam".
        box_threshold: GroundingDINO box threshold.
        text_threshold: GroundingDINO text threshold.
        discovery_candidates: Candidate images per discovery loop (m). None: 64; 12 for tiny models.
        discovery_batch_size: Candidates drawn per batch.
        discovery_steps: Denoising steps of candidates. None: 50; the generation steps for tiny models.
        discovery_guidance_scale: Guidance of candidates.
        discovery_loops: Discovery loops in all; loops after the first draw candidates with the identity.
        discovery_start_merge_step: The identity conditions candidates from the step after this one.
            None: 10 at 50 steps, T/5 otherwise.
        discovery_seed: Seed of the candidates (part of the identity's library key).
        discovery_negative_prompt: Negative prompt of the candidates.
        svd_rank: r of the SVD filter. None: 10; 2 for tiny models.
        svd_keep_ratio: Rows kept per SVD iteration.
        svd_iterations: SVD filter iterations.
        preview_images: Images drawn with a found identity for its preview sheet.
        freeu: FreeU (s1=0.6, s2=0.4, b1=1.1, b2=1.2) while drawing candidates, as the authors do.
        controlnet: An SDXL ControlNet (Hub id or folder; "tiny" builds a random one for tiny models) that
            conditions stage 1 on each frame's ``control_image``; frames without one draw unconditioned.
        controlnet_scale: Conditioning scale of the ControlNet (the authors' 0.8).
        prompt_style: Frame prompt for stage 1: "story" (the story's prompt), "authors" (style + "a <desc up
            to class word> and a ..." + context, for several characters) or "auto" (authors' for
            multi-character benchmark stories).
    """

    photomaker: str = "auto"
    photomaker_file: str = "photomaker-v1.bin"
    sweet_spot_step: int | None = None
    max_dilation: int = 50
    cleanup_dilation: int = 10
    identity_strength: float = 1.0
    fuse_mode: Literal["repeated", "once"] = "repeated"
    mask_provider: Literal["auto", "grounded-sam", "attention", "user"] = "auto"
    mask_retries: int = 3
    detector: str = "IDEA-Research/grounding-dino-base"
    segmenter: str = "facebook/sam-vit-huge"
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    discovery_candidates: int | None = None
    discovery_batch_size: int = 16
    discovery_steps: int | None = None
    discovery_guidance_scale: float = 5.0
    discovery_loops: int = 1
    discovery_start_merge_step: int | None = None
    discovery_seed: int = 0
    discovery_negative_prompt: str = SEARCH_NEGATIVE_PROMPT
    svd_rank: int | None = None
    svd_keep_ratio: float = 0.6
    svd_iterations: int = 3
    preview_images: int = 4
    freeu: bool = True
    controlnet: str | None = None
    controlnet_scale: float = 0.8
    prompt_style: Literal["auto", "story", "authors"] = "auto"

    def validate(self) -> None:
        positive = {
            "discovery_batch_size": self.discovery_batch_size,
            "discovery_loops": self.discovery_loops,
            "svd_iterations": self.svd_iterations,
        }
        for name, value in positive.items():
            if value < 1:
                raise SettingsError(f"{name} must be at least 1, got {value}.")
        for name, value in (
            ("discovery_candidates", self.discovery_candidates),
            ("discovery_steps", self.discovery_steps),
            ("svd_rank", self.svd_rank),
            ("sweet_spot_step", self.sweet_spot_step),
        ):
            if value is not None and value < 1:
                raise SettingsError(f"{name} must be at least 1 (or left out for automatic), got {value}.")
        for name, value in (
            ("max_dilation", self.max_dilation),
            ("cleanup_dilation", self.cleanup_dilation),
            ("mask_retries", self.mask_retries),
            ("preview_images", self.preview_images),
        ):
            if value < 0:
                raise SettingsError(f"{name} must not be negative, got {value}.")
        if not 0 < self.svd_keep_ratio < 1:
            raise SettingsError(f"svd_keep_ratio must be between 0 and 1, got {self.svd_keep_ratio}.")
        if self.identity_strength < 0:
            raise SettingsError(f"identity_strength must not be negative, got {self.identity_strength}.")


def scaled_step(value: int | None, num_steps: int, at_fifty: int = 10) -> int:
    """A step index given for 50 steps, at ``num_steps`` (None: ``at_fifty`` scaled, at least 1)."""
    if value is not None:
        return value
    return max(1, round(at_fifty * num_steps / 50))

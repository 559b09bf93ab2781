"""Settings of ``storynizor``, each with its source.

The paper's body could not be read (``docs/methods/storynizor.md``), so most defaults are the
closest published designs named there: ConsiStory for the masks and their dropout, IP-Adapter-Plus for the
injector, diffusers' Stable Diffusion defaults for sampling. A user who has the paper's values sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.masks.settings import MaskSettings
from storycast.models.presets import ADAPTERS, PLUS_FACE_WEIGHTS, VIT_H_ENCODER
from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, check_range, setting

DETECTOR_ID = ADAPTERS["grounding-dino"].repo_id
SEGMENTER_ID = ADAPTERS["sam"].repo_id

DROPOUT_SEED_OFFSET = 6151
"""Offset from a group's first frame seed to the seed of its mask dropout (a prime, so that the attention's
random stream is not the frames' noise stream)."""


@dataclass(frozen=True)
class SynchronizerSettings(MethodSettings):
    """ID-Synchronizer: auto-mask self-attention (AMSA) across the frames of a group."""

    enabled: bool = setting(
        True, "Auto-mask self-attention on (off: frames share nothing; the injector alone, an ablation).", flat="amsa"
    )
    mask_dropout: float = setting(
        0.5,
        "Share of another frame's character tokens dropped at each step, for varied poses (ConsiStory's "
        "mask_dropout 0.5; lower is more consistent, less varied).",
    )
    mask_level: int = setting(
        2,
        "Resolution level whose cross-attention maps make the masks (2: 16 x 16 at 512 px on SD 1.5, "
        "Attend-and-Excite's attn_res; 24 x 24 at 768; 32 x 32 at 1024 on SDXL, ConsiStory's).",
    )
    blocks: Literal["up", "mid-up", "all"] = setting(
        "up",
        "UNet blocks whose self-attention is shared: 'up' (StoryDiffusion and ConsiStory share only there), "
        "'mid-up' or 'all'.",
    )
    anchor_device: Literal["model", "cpu"] = setting(
        "model", "Where the anchors' tokens are kept between groups: the model's device, or CPU memory."
    )

    def validate(self) -> None:
        check_range("mask_dropout", self.mask_dropout, 0, 1)
        check_range("mask_level", self.mask_level, 0)

    def block_names(self) -> tuple[str, ...]:
        return {"up": ("up",), "mid-up": ("mid", "up"), "all": ("down", "mid", "up")}[self.blocks]


@dataclass(frozen=True)
class InjectorSettings(MethodSettings):
    """ID-Injector: reference images -> CLIP ViT-H/14 -> resampler -> a masked identity branch on every
    cross-attention layer."""

    weights: str = setting(
        "auto",
        "ID-Injector weights: a folder or file written by `storycast train storynizor`, a Hub id, or an "
        "IP-Adapter-Plus file ('owner/name:path/in/repo'). 'auto': the public IP-Adapter-Plus-Face of the family "
        f"({PLUS_FACE_WEIGHTS['sd15']}), random weights for the tiny and random-weight presets.",
        flat="weights",
    )
    image_encoder: str = setting(
        "auto",
        f"CLIP image encoder (Hub id[:subfolder] or folder). 'auto': the checkpoint's own, else {VIT_H_ENCODER} "
        "(OpenCLIP ViT-H/14, penultimate hidden states); a random one for the tiny and random-weight presets.",
    )
    scale: float = setting(
        0.5,
        "Weight of the identity branch (IP-Adapter's README: 0.5 with text prompts, 1.0 image-only; Storynizor "
        "trains at 1.0).",
        flat="id_scale",
    )
    masked: bool = setting(
        True,
        "Inject each character only inside its auto-mask (Storynizor's 'into specific locations'); off: over the "
        "whole frame, as the public IP-Adapter.",
        flat="injector_masked",
    )
    reference_crop: Literal["auto", "face", "segment", "whole"] = setting(
        "auto",
        "How reference photos are cut: 'face' (a square around the largest face; a photo without one is an "
        "error), 'segment' (the character alone, found by GroundingDINO + SAM from its class word, background "
        "white), 'whole' (as given), 'auto' (the face when the face models are on this machine and find one, "
        "else the segmented character when GroundingDINO + SAM are, else the whole photo).",
    )
    detector: str = setting(
        DETECTOR_ID, "GroundingDINO checkpoint for segmented references (Hub id or folder).", flat="reference_detector"
    )
    segmenter: str = setting(SEGMENTER_ID, "SAM checkpoint for segmented references.", flat="reference_segmenter")
    box_threshold: float = setting(
        0.3,
        "GroundingDINO box threshold for segmented references (IdentityStory's 0.3).",
        flat="reference_box_threshold",
    )
    face_models: str | None = setting(
        None, "Folder of the insightface pack for face crops (default: ~/.insightface/models/<face_pack>)."
    )
    face_pack: Literal["buffalo_l", "antelopev2"] = setting(
        "buffalo_l", "insightface pack whose detector crops faces."
    )

    def validate(self) -> None:
        check_range("id_scale", self.scale, 0)
        check_range("reference_box_threshold", self.box_threshold, 0, 1)

    def segmentation(self) -> MaskSettings:
        """The mask settings of the GroundingDINO + SAM provider that segments references."""
        return MaskSettings(
            provider="grounded-sam", detector=self.detector, segmenter=self.segmenter, box_threshold=self.box_threshold
        )


@dataclass(frozen=True)
class StorynizorSettings(MethodSettings):
    """Settings of Storynizor."""

    frames_per_group: int = setting(
        4, "Frames drawn jointly, sharing attention (Storynizor trains on groups of 4; StoryDiffusion's id_length 4)."
    )
    anchors: int = setting(
        4,
        "The story's first frames, drawn jointly, whose masked keys and values every later group attends to, so "
        "memory stays flat however long the story is (ConsiStory anchors 2; 0: groups share only within "
        "themselves).",
    )
    identity: Literal["auto", "photos", "first-frame", "none"] = setting(
        "auto",
        "Where identity tokens come from: 'photos' (each character's reference photos, required), 'first-frame' "
        "(its photos, else its crop in the first anchor frame naming it, for later groups), 'none' (AMSA alone), "
        "'auto' (photos when a character has them, else none).",
    )
    synchronizer: SynchronizerSettings = setting(factory=SynchronizerSettings, help="ID-Synchronizer (AMSA).")
    injector: InjectorSettings = setting(factory=InjectorSettings, help="ID-Injector.")
    scheduler: SchedulerName = setting(
        "ddim", "Sampler (DDIM, as ConsiStory, StoryDiffusion and IP-Adapter's examples); 'model' keeps the model's."
    )

    def validate(self) -> None:
        check_range("frames_per_group", self.frames_per_group, 1)
        check_range("anchors", self.anchors, 0)

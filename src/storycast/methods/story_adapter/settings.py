"""Story-Adapter's settings and the small pure parts of its algorithm: the scale schedule and the style wrappers.

Every default is the authors' (UCSC-VLAA/story-adapter at 6f1c402: ``run.py`` and ``ip_adapter/ip_adapter.py``
``StoryAdapterXL.generate``); ``docs/methods/story-adapter.md`` lists them with their lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from storycast.adapters.ip_adapter import IPAdapterSettings
from storycast.pipelines.families import SchedulerName
from storycast.settings import MethodSettings, check_range, setting

NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
"""``StoryAdapterXL.generate``'s negative prompt when none is given (the one run.py uses)."""

STYLE_WRAPPERS: dict[str, tuple[str, str]] = {
    "comic": (
        "best quality, high quality, comic ",
        " . graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
    ),
    "film": (
        "best quality, high quality, cinematic film still, ",
        " . shallow depth of field, vignette, highly detailed, high budget, bokeh, cinemascope, moody, epic, gorgeous, "
        "film grain, grainy",
    ),
    "realistic": ("best quality, high quality, ", ""),
    "none": ("", ""),
}
"""(prefix, suffix) ``StoryAdapterXL.generate`` puts around a prompt for each ``--style`` of run.py."""

MAX_ROUNDS = 100


def scale_schedule(start: float, end: float, rounds: int) -> tuple[float, ...]:
    """The IP-Adapter scale of rounds 1..``rounds``: ``np.linspace(start, end, rounds)`` (run.py:
    ``scales = np.linspace(0.3, 0.5, 10)``); round 0 draws from the text alone and has none."""
    return tuple(float(s) for s in np.linspace(start, end, rounds)) if rounds > 0 else ()


def styled_prompt(wrapper: str, prompt: str) -> str:
    """``prompt`` inside the authors' style wrapper, concatenated exactly as ``StoryAdapterXL.generate`` does."""
    prefix, suffix = STYLE_WRAPPERS[wrapper]
    return prefix + prompt + suffix


def wrapper_for(style: str, story_style: str, story_style_suffix: str) -> str:
    """The wrapper a story is drawn with: ``style``, where 'auto' is the authors' default 'comic' for a story with no
    style of its own and 'none' for one with (its ``style``/``style_suffix`` are its prompts' style)."""
    if style != "auto":
        return style
    return "none" if (story_style.strip() or story_style_suffix.strip()) else "comic"


@dataclass(frozen=True)
class StoryAdapterSettings(MethodSettings):
    """Settings of Story-Adapter (see the module docstring for where each default comes from)."""

    rounds: int = setting(
        10,
        "Refinement rounds after the text-only round 0; each draws every frame again, conditioned on all frames of "
        "the round before (run.py: 10, the length of np.linspace(0.3, 0.5, 10)). 0: round 0 alone, plain SDXL.",
    )
    scale_start: float = setting(
        0.3, "IP-Adapter scale of round 1; rounds 1..rounds go linearly to scale_end (run.py: linspace(0.3, 0.5, 10))."
    )
    scale_end: float = setting(0.5, "IP-Adapter scale of the last round (run.py: linspace(0.3, 0.5, 10)).")
    reference_size: int = setting(
        256,
        "Side in pixels the previous round's frames are resized to before the CLIP image encoder, whose own "
        "preprocessing then resizes them to its input (224 for ViT-bigG) (run.py: image.resize((256, 256))).",
    )
    style: Literal["auto", "comic", "film", "realistic", "none"] = setting(
        "auto",
        "The authors' prompt wrapper (run.py --style, default comic): 'comic', 'film', 'realistic' ('best quality, "
        "high quality, ' before the prompt) or 'none'. 'auto': 'comic' for a story with no style of its own, "
        "'none' for one with a style or style_suffix (the story's own style wins). It wraps the story's full prompt.",
    )
    scheduler: Literal[SchedulerName, "lcm"] = setting(
        "ddim",
        "Sampler: 'ddim' is run.py's DDIMScheduler (scaled_linear betas 0.00085-0.012, steps_offset 1, no sample "
        "clipping, set_alpha_to_one off); 'lcm' is run_fast.py's LCMScheduler (needs an LCM-distilled UNet such as "
        "latent-consistency/lcm-sdxl, with --steps 4 --guidance-scale 8); 'model' keeps the model's own.",
    )
    ip_adapter: IPAdapterSettings = setting(
        factory=IPAdapterSettings, help="IP-Adapter (SDXL, global image embeddings) and its image encoder."
    )

    def validate(self) -> None:
        check_range("rounds", self.rounds, 0, MAX_ROUNDS)
        check_range("scale_start", self.scale_start, 0)
        check_range("scale_end", self.scale_end, 0)
        check_range("reference_size", self.reference_size, 8, 4096)

    @property
    def scales(self) -> tuple[float, ...]:
        """IP-Adapter scale of rounds 1..rounds."""
        return scale_schedule(self.scale_start, self.scale_end, self.rounds)

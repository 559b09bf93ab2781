"""``vanilla``: plain text-to-image per frame with the base model; the baseline every method beats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storycast.methods.base import FrameResult, ProgressEvent, RunContext, StoryMethod
from storycast.settings import MethodSettings
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator


@dataclass(frozen=True)
class VanillaSettings(MethodSettings):
    """``vanilla`` has no settings of its own: frames follow the generation settings."""


class VanillaMethod(StoryMethod):
    """Each frame drawn from its own prompt and seed, frames batched ``batch_size`` at a time.

    The noise of each frame comes from its own generator, so a frame's image does not depend on
    which other frames share its batch (up to float rounding of batched matrix products).
    """

    name = "vanilla"
    settings_class = VanillaSettings
    summary = "plain text-to-image per frame (no consistency mechanism)"

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        pipe = self.models.pipeline
        settings = story.settings
        seeds = [story.frame_seed(i) for i in group]
        negatives = [story.negative_prompt(i) or self.default_negative_prompt() or "" for i in group]

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            context.progress(ProgressEvent("denoise", step + 1, settings.steps))
            return tensors

        context.progress(ProgressEvent("denoise", 0, settings.steps))
        output = pipe(
            prompt=[story.prompt(i) for i in group],
            negative_prompt=negatives,
            width=settings.width,
            height=settings.height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=[make_generator(seed, self.models.device) for seed in seeds],
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
        return [
            FrameResult(index=i, image=image, seed=seed, metadata={"prompt": story.prompt(i), "negative_prompt": neg})
            for i, image, seed, neg in zip(group, output.images, seeds, negatives, strict=True)
        ]

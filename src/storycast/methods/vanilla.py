"""``vanilla``: plain text-to-image per frame with the base model; the baseline every method beats."""

from __future__ import annotations

from collections.abc import Sequence

from storycast.methods.base import FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.vanilla_about import ABOUT
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator


class VanillaMethod(StoryMethod, about=ABOUT):
    """Each frame drawn from its own prompt and seed, frames batched ``batch_size`` at a time, as the family's stock
    diffusers pipeline draws them (a test holds each family to its pipeline, seed for seed).

    The noise of each frame comes from its own generator, so a frame's image does not depend on
    which other frames share its batch (up to float rounding of batched matrix products).
    """

    step_cache_safe = True  # one evaluation of one batch per step, nothing shared between draws

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        gen = story.settings
        seeds = [story.frame_seed(i) for i in group]
        prompts = [story.prompt(i) for i in group]
        negatives = [story.negative_prompt(i) or self.default_negative_prompt() or "" for i in group]
        sampling = self.sampling(story)
        conditioning = self.backbone.encode(
            prompts, negatives, width=gen.width, height=gen.height, guidance=sampling.guidance
        )
        drawn = sample(
            self.backbone,
            conditioning,
            [make_generator(seed, self.models.device) for seed in seeds],
            sampling,
            progress=denoise_progress(context.progress),
        )
        # A negative prompt reaches the image only through classifier-free guidance (not FLUX's embedded one).
        used = [neg if sampling.guidance.halves == 2 else None for neg in negatives]
        return [
            FrameResult(
                index=i,
                image=image,
                seed=seed,
                metadata={
                    "prompt": prompt,
                    "negative_prompt": neg,
                    "denoiser_evaluations": drawn.evaluations // len(group),
                },
            )
            for i, image, seed, prompt, neg in zip(group, drawn.images, seeds, prompts, used, strict=True)
        ]

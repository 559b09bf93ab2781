"""``story-adapter``: Story-Adapter (Mao et al., arXiv 2410.06244), the authors' iterative paradigm on diffusers'
own IP-Adapter.

Round 0 draws every frame from its text alone (IP-Adapter off: the plain UNet). Each of ``rounds`` rounds then
draws every frame again from the same seed and text, with IP-Adapter reading all N frames of the round before:
each frame resized to ``reference_size``, encoded once by the CLIP image encoder (global ``image_embeds``),
projected to 4 tokens by IP-Adapter's ``ImageProjection``, and the 4N tokens attended in one softmax by the
decoupled branch of every cross-attention layer at every step (the authors' Global Reference Cross-Attention:
out = Attn(q, K_text, V_text) + scale x Attn(q, K_ip, V_ip) over all 4N tokens). diffusers'
``IPAdapterAttnProcessor2_0`` computes exactly that when the UNet gets ``image_embeds`` of shape (B, N, D): it
projects them to (B, N, 4, C) and views them as (B, 4N, C) before the one attention (a test holds it to a naive
reference). The unconditional half reads the projection of zero embeddings, as the authors'. The scale of round r
is ``linspace(scale_start, scale_end, rounds)[r - 1]``; the last round's frames are the story's.

Cost per frame: (1 + rounds) x 2 x T UNet evaluations ((1 + rounds) x T with a guidance-embedded LCM UNet), and
``rounds`` CLIP encodings (the authors re-encode all N references for each of the N frames, N^2 per round; here
each frame of the round before is encoded once and its tokens are shared by every frame, which can be batched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.methods.base import FrameGroup, FrameResult, ProgressEvent, RunContext, StoryMethod, denoise_progress
from storycast.methods.story_adapter.about import ABOUT
from storycast.methods.story_adapter.rounds import RoundStore, round_keys
from storycast.methods.story_adapter.settings import (
    NEGATIVE_PROMPT,
    StoryAdapterSettings,
    styled_prompt,
    wrapper_for,
)
from storycast.pipelines.conditioning import GuidancePair, SDXLConditioning
from storycast.pipelines.noise import count_evaluations
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

AUTHORS_DDIM = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
"""run.py's ``noise_scheduler = DDIMScheduler(...)``, given to the pipeline whatever the base model's own is."""


@dataclass
class ReferenceConditioning(SDXLConditioning):
    """SDXL conditioning and, per row, the global embeddings (B, N, D) of the N reference images, which the UNet
    projects with IP-Adapter's image projection (``added_cond_kwargs["image_embeds"]``, one IP-Adapter)."""

    image_embeds: torch.Tensor

    def denoiser_inputs(self) -> dict[str, Any]:
        inputs = super().denoiser_inputs()
        inputs["added_cond_kwargs"]["image_embeds"] = [self.image_embeds]
        return inputs


def with_references(pair: GuidancePair, embeds: torch.Tensor) -> GuidancePair:
    """``pair`` with every row reading the (N, D) reference ``embeds``; the unconditional rows (where guidance has
    them) read zero embeddings (IP-Adapter's ``uncond_image_prompt_embeds``)."""
    rows = len(pair)
    cond = embeds[None].expand(rows, -1, -1)

    def add(conditioning: Any, image_embeds: torch.Tensor) -> ReferenceConditioning:
        return ReferenceConditioning(conditioning.embeds, conditioning.pooled, conditioning.time_ids, image_embeds)

    uncond = None if pair.uncond is None else add(pair.uncond, torch.zeros_like(cond))
    return GuidancePair(uncond, add(pair.cond, cond))


class StoryAdapterMethod(StoryMethod, about=ABOUT):
    """Story-Adapter on SDXL (see the module docstring)."""

    settings: StoryAdapterSettings

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # run.py: 50 steps at 1024 x 1024, the pipeline's guidance 5.0 (generate's guidance_scale=7.5 is never
        # passed on), one seed for every frame of every round.
        return {"steps": 50, "guidance_scale": 5.0, "width": 1024, "height": 1024, "seed_policy": "same"}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        # run.py draws every frame of a story from one seed.
        return {"seed_policy": "same"}

    @classmethod
    def default_negative_prompt(cls) -> str | None:
        return NEGATIVE_PROMPT

    @classmethod
    def check(cls, story: Story, settings: StoryAdapterSettings, family: str | None = None) -> None:
        if settings.rounds == 0:
            return
        # Local paths that are not there fail now, before any model loads (Hub ids are looked up when loading).
        settings.ip_adapter.location()
        encoder = settings.ip_adapter.image_encoder
        if encoder != "auto":
            from pathlib import Path

            from storycast.errors import MissingWeightsError
            from storycast.models.checkpoints import looks_like_path

            folder = encoder.partition(":")[0]
            if looks_like_path(folder) and not Path(folder).expanduser().is_dir():
                raise MissingWeightsError(
                    f"IP-Adapter image encoder folder '{folder}' does not exist. Fix: set image_encoder (--set "
                    f"image_encoder=...) to the folder of IP-Adapter's image_encoder, or a Hub id."
                )

    @classmethod
    def plan(cls, story: Story, settings: StoryAdapterSettings) -> list[FrameGroup]:
        # Every frame of round r reads every frame of round r - 1: the whole story is one group, resumed round by
        # round from the run folder (rounds.py).
        return [
            FrameGroup(
                tuple(range(len(story))),
                role=f"all frames, {settings.rounds} rounds",
                inputs={"scales": list(settings.scales)},
            )
        ]

    # -- run interface ----------------------------------------------------------------------------

    @property
    def adapter(self) -> Any:
        from storycast.adapters.ip_adapter import attach_ip_adapter

        return attach_ip_adapter(self.models, self.settings.ip_adapter)

    def prepare(self, story: Story, context: RunContext) -> None:
        if self.resolved_settings(story).rounds > 0:
            self.adapter  # noqa: B018 - loaded now, so that missing weights fail before anything is drawn

    def prompts(self, story: Story, frames: Sequence[int]) -> list[str]:
        """Each frame's prompt inside the style wrapper."""
        wrapper = wrapper_for(self.resolved_settings(story).style, story.style, story.style_suffix)
        return [styled_prompt(wrapper, story.prompt(i)) for i in frames]

    def round_base(self, story: Story, frames: Sequence[int]) -> dict[str, Any]:
        """What every round's key hashes besides its index and scale (see rounds.py)."""
        from storycast.story.inputs import frame_inputs

        settings = self.resolved_settings(story).to_dict()
        for schedule_only in ("rounds", "scale_start", "scale_end"):  # each round's key has its own scale
            settings.pop(schedule_only)
        gen = story.settings
        return {
            "method": self.name,
            "settings": settings,
            "model": dict(self.models.facts.identity),
            "generation": {
                "width": gen.width,
                "height": gen.height,
                "steps": gen.steps,
                "guidance": gen.guidance_scale,
            },
            "frames": [frame_inputs(story, i) for i in frames],
        }

    @torch.no_grad()
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        from PIL import Image

        settings = self.resolved_settings(story)
        frames = list(group)
        scales = settings.scales
        store = RoundStore(context.run_dir)
        keys = round_keys(self.round_base(story, frames), scales)
        prompts = self.prompts(story, frames)
        negatives = [story.negative_prompt(i) or "" for i in frames]
        # 1. What the run folder already holds: the latest round whose key matches (a stopped run resumes there);
        # nothing with --overwrite.
        kept = None if context.overwrite else store.last_kept(keys, frames)
        first, images = (kept[0] + 1, kept[1]) if kept is not None else (0, [])
        total = len(keys)
        context.progress(ProgressEvent("rounds", first, total, "Story-Adapter rounds"))
        # 2. Rounds first..rounds: round 0 from the text, then each from all frames of the round before.
        encodings = 0
        with count_evaluations(self.backbone.denoiser) as counter:
            for number in range(first, total):
                scale = scales[number - 1] if number else None
                embeds = None
                if number:
                    side = (settings.reference_size, settings.reference_size)
                    references = [image.resize(side, Image.Resampling.BICUBIC) for image in images]
                    embeds = self.adapter.embed(references)  # each frame of the round before encoded once
                    encodings += len(references)
                images = self.draw_round(story, frames, prompts, negatives, embeds, scale, context)
                store.save(number, keys[number], frames, images, {"scale": scale, "seeds": self._seeds(story, frames)})
                context.progress(ProgressEvent("rounds", number + 1, total, "Story-Adapter rounds"))
        files = context.run_dir is not None
        return [
            FrameResult(
                index,
                image,
                story.frame_seed(index),
                metadata={
                    "prompt": prompt,
                    "negative_prompt": negative,
                    "rounds": settings.rounds,
                    "scales": list(scales),
                    "rounds_reused": list(range(first)),
                    "round_files": [store.file(r, index) for r in range(total)] if files else [],
                    "denoiser_evaluations": counter.evaluations // len(frames),
                    "clip_encodings": encodings // len(frames),
                },
            )
            for index, image, prompt, negative in zip(frames, images, prompts, negatives, strict=True)
        ]

    @staticmethod
    def _seeds(story: Story, frames: Sequence[int]) -> list[int]:
        return [story.frame_seed(i) for i in frames]

    def draw_round(
        self,
        story: Story,
        frames: Sequence[int],
        prompts: Sequence[str],
        negatives: Sequence[str],
        embeds: torch.Tensor | None,
        scale: float | None,
        context: RunContext,
    ) -> list[Any]:
        """One round: every frame from its seed, ``batch_size`` frames at a time, reading the (N, D) reference
        ``embeds`` at ``scale`` (IP-Adapter on), or from the text alone when ``embeds`` is None."""
        import contextlib

        gen, backbone = story.settings, self.backbone
        guidance = self.sampling(story).guidance
        size = max(1, gen.batch_size)
        images: list[Any] = []
        adapter = self.adapter.enabled(scale) if embeds is not None else contextlib.nullcontext()
        with adapter:
            for start in range(0, len(frames), size):
                batch = slice(start, start + size)
                pair = backbone.encode(
                    list(prompts[batch]), list(negatives[batch]), width=gen.width, height=gen.height, guidance=guidance
                )
                if embeds is not None:
                    pair = with_references(pair, embeds.to(pair.cond.embeds.dtype))
                generators = [
                    make_generator(seed, str(self.models.device)) for seed in self._seeds(story, frames[batch])
                ]
                images.extend(self.sample(story, pair, generators, context))
        return images

    def scheduler(self, gen: Any) -> Any:
        """A fresh scheduler for the generation settings' steps: the authors' DDIM, run_fast.py's LCM, or the
        family's by name."""
        import diffusers

        kind, device = self.settings.scheduler, self.models.device
        template = self.models.pipeline.scheduler
        if kind == "ddim":
            scheduler = diffusers.DDIMScheduler(**AUTHORS_DDIM)
        elif kind == "lcm":
            scheduler = diffusers.LCMScheduler.from_config(template.config)  # run_fast.py
        else:
            return self.backbone.scheduler(gen.steps, width=gen.width, height=gen.height, kind=kind)
        scheduler.set_timesteps(gen.steps, device=device)
        return scheduler

    def sample(
        self, story: Story, pair: GuidancePair, generators: list[torch.Generator], context: RunContext
    ) -> list[Any]:
        """The images of a batch of frames, each from its own generator, as the SDXL pipeline draws them: classifier-
        free guidance, or for a UNet that takes its guidance as an embedding (an LCM-distilled one) one evaluation
        of the conditional rows with ``w = guidance_scale - 1`` embedded (``do_classifier_free_guidance`` off: the
        family's guidance for such a UNet)."""
        gen = story.settings
        return sample(
            self.backbone,
            pair,
            generators,
            self.sampling(story),
            scheduler=self.scheduler(gen),
            step_generators=generators,
            progress=denoise_progress(context.progress),
        ).images

"""``1prompt1story``: the story in one prompt, each frame drawn from it with its own phrase expressed.

Each frame (byliutao/1Prompt1Story@34e22ac, ``unet/utils.py``, ``movement_gen_story_slide_windows``):

1. the prompt: the identity prompt and the frame phrases of its cast, through the circular window of a long
   story (:mod:`storycast.methods.oneprompt.prompts`), encoded once by both SDXL encoders;
2. Singular-Value Reweighting of each encoder's per-token embeddings: the other phrases suppressed, then the
   frame's expressed (:mod:`storycast.methods.oneprompt.svr`); the pooled embedding stays the whole prompt's;
3. the loop, from the same initial noise for every frame (``Use_same_init_noise``: the seed policy "same"),
   with Identity-Preserving Cross-Attention on every cross-attention layer
   (:mod:`storycast.attention.identity_prompt`), its identity tokens projected from the identity prompt's
   embeddings at call time: no identity pass, so 2T UNet evaluations per frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from storycast.errors import Problem, StoryError
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.limits import WITHOUT_CHARACTERS, FrameLimit
from storycast.methods.oneprompt import prompts as P
from storycast.methods.oneprompt.about import ABOUT
from storycast.methods.oneprompt.settings import OnePromptSettings
from storycast.methods.oneprompt.svr import reweight_encoders
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.freeu import FREEU
from storycast.pipelines.freeu import freeu as freeu_block
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

DROPOUT_SEED_OFFSET = 6067
"""Offset from a frame's seed to the seed of IPCA's key dropout (a prime: another stream than the noise)."""


class OnePromptOneStoryMethod(StoryMethod, about=ABOUT):
    """1Prompt1Story on SDXL (see the module docstring)."""

    settings: OnePromptSettings

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # The authors' pipeline: 50 steps, guidance 5; every frame from the same initial noise.
        return {"steps": 50, "guidance_scale": 5.0, "seed_policy": "same"}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        # resource/gen_benchmark.py: --fix_seed 42 for every story, and the same noise for every frame.
        return {"seed": 42, "seed_policy": "same"}

    @classmethod
    def benchmark_settings(cls) -> dict[str, Any]:
        # resource/gen_benchmark.py runs prompt-embeds mode "svr-eot" (main.py, the demo, runs "svr").
        return {"svr_mode": "svr-eot"}

    @classmethod
    def frame_limits(
        cls, story: Story, settings: OnePromptSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # What check_lengths refuses outside a benchmark: such a frame leaves its cast's single prompt for the prompt
        # of no cast (the style alone), where its phrase fits.
        if tokenizer is None:
            return []
        limit = tokenizer.model_max_length
        return [
            FrameLimit(
                index,
                "prompt-tokens",
                f"its phrase and the identity prompt of its characters take {needed} CLIP tokens, more than the "
                f"{limit} a prompt holds",
                WITHOUT_CHARACTERS,
                tuple(story.frames[index].characters),
            )
            for index, needed in sorted(P.overlong_frames(tokenizer, story).items())
            if story.frames[index].characters
        ]

    @classmethod
    def plan(cls, story: Story, settings: Any) -> list[FrameGroup]:
        # Frames are drawn one by one; a frame's prompt holds the other phrases of its cast, so they are part of
        # its key: editing one frame redraws the frames whose prompts hold its phrase.
        groups = []
        for chain in P.story_chains(story):
            for index in chain.frames:
                inputs = {"identity_prompt": chain.identity, "phrases": list(chain.phrases)}
                groups.append(FrameGroup((index,), inputs=inputs))
        return sorted(groups, key=lambda group: group.frames)

    # -- run interface ----------------------------------------------------------------------------

    def prepare(self, story: Story, context: RunContext) -> None:
        self.check_lengths(story)

    def check_lengths(self, story: Story) -> None:
        """Refuse, before any drawing, a frame whose phrase does not fit beside its identity prompt in CLIP's
        77 tokens (the frame would be drawn without it)."""
        tokenizer = self.models.pipeline.tokenizer
        overlong = P.overlong_frames(tokenizer, story)
        if overlong:
            limit = tokenizer.model_max_length
            raise StoryError(
                [
                    Problem(
                        f"frames[{index}].text",
                        f"its phrase and the identity prompt of its characters take {needed} CLIP tokens, more than "
                        f"the {limit} a prompt holds",
                        "shorten the frame text (or its context), the style, or the characters' descriptions",
                    )
                    for index, needed in sorted(overlong.items())
                ],
                story.source,
            )

    def frame_prompts(self, story: Story) -> dict[int, P.FramePrompt]:
        """Every frame's prompt, through its window (tokenizer 1 counts; SDXL's two tokenizers agree)."""
        settings = self.resolved_settings(story)
        tokenizer = self.models.pipeline.tokenizer
        return P.story_prompts(
            story,
            window_length=settings.window_length,
            counting=settings.window_count,
            token_count=P.token_counter(tokenizer),
            limit=tokenizer.model_max_length,
        )

    @torch.no_grad()
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        prompts = self.frame_prompts(story)
        return [self._draw(story, index, prompts[index], context) for index in group]

    # -- one frame --------------------------------------------------------------------------------

    def encode(self, story: Story, prompt: P.FramePrompt, negative: str | None) -> GuidancePair:
        """The frame's conditioning: the single prompt's embeddings after SVR, its pooled embedding untouched;
        no negative prompt gives zero unconditional embeddings where the model says so, as diffusers' SDXL
        pipeline does (``force_zeros_for_empty_prompt``) when the authors call it without one."""
        settings = self.resolved_settings(story)
        pipe, gen = self.models.pipeline, story.settings
        pair = self.backbone.encode([prompt.text], [negative], width=gen.width, height=gen.height)
        if settings.svr.mode == "off":
            return pair
        tokens = P.prompt_tokens(pipe.tokenizer, prompt)
        lost = [p for p, span in zip(prompt.phrases, tokens.phrases, strict=True) if p.strip() and not span]
        if lost:  # only with window_count=words, the authors' proxy: the 77-token limit cut these off
            logger.warning("phrases past CLIP's 77 tokens are not reweighted: %s", "; ".join(lost))
        embeds = reweight_encoders(
            pair.cond.embeds,
            self.encoder_widths(pair.cond.embeds.shape[-1]),
            tokens.phrases,
            prompt.express,
            tokens.end_positions,
            mode=settings.svr.mode,
            suppress=settings.svr.suppress,
            enhance=settings.svr.enhance,
        )
        return GuidancePair(pair.uncond, pair.cond.replace(embeds=embeds))

    def encoder_widths(self, total: int) -> list[int]:
        """Widths of the encoders' parts of the per-token embeddings (SDXL: CLIP-L 768, OpenCLIP-bigG 1280)."""
        pipe = self.models.pipeline
        first = getattr(pipe, "text_encoder", None)
        if first is None or getattr(pipe, "text_encoder_2", None) is None:
            return [total]
        width = int(first.config.hidden_size)
        return [width, total - width]

    def identity_tokens(self, story: Story, identity: str) -> torch.Tensor:
        """(1, k, C) plain embeddings of the identity prompt's start token and identity words (IPCA's keys)."""
        pipe, gen = self.models.pipeline, story.settings
        pair = self.backbone.encode([identity], [""], width=gen.width, height=gen.height)
        kept = list(P.identity_positions(pipe.tokenizer, identity))
        return pair.cond.embeds[:, kept]

    def _draw(self, story: Story, index: int, prompt: P.FramePrompt, context: RunContext) -> FrameResult:
        from storycast.attention.identity_prompt import IdentityPromptState, install_identity_prompt_attention

        settings = self.resolved_settings(story)
        gen = story.settings
        # 1-2. The single prompt, reweighted for this frame; the identity prompt's kept tokens for IPCA.
        negative = story.negative_prompt(index)
        if negative is None:
            negative = self.default_negative_prompt()
        pair = self.encode(story, prompt, negative)
        identity = self.identity_tokens(story, prompt.identity) if settings.ipca.enabled else None
        # 3. The initial noise from the frame's seed (the story seed for every frame by default), drawn on the CPU
        # as the authors' torch.Generator() draws it, so a seed gives their noise on any device; then the loop.
        seed = story.frame_seed(index)
        state = IdentityPromptState(
            frames=1,
            num_steps=gen.steps,
            identity=identity,
            dropout=settings.ipca.dropout,
            start_step=settings.ipca.start_step,
            generator=make_generator(seed + DROPOUT_SEED_OFFSET, "cpu") if settings.ipca.dropout > 0 else None,
        )
        unet = self.backbone.denoiser
        installs: list[Any] = []
        if settings.freeu:
            installs.append(lambda: freeu_block(unet, FREEU[self.models.family]))
        if identity is not None:
            installs.append(lambda: install_identity_prompt_attention(unet, state))
        drawn = sample(
            self.backbone,
            pair,
            [make_generator(seed, "cpu")],
            self.sampling(story, settings.scheduler),
            installs=installs,
            states=[state],
            progress=denoise_progress(context.progress),
        )
        image = drawn.images[0]
        return FrameResult(
            index,
            image,
            seed,
            metadata={
                "one_prompt": prompt.text,
                "identity_prompt": prompt.identity,
                "expressed": prompt.phrases[prompt.express],
                "suppressed": [prompt.phrases[i] for i in prompt.suppress],
                "window": prompt.window,
                "negative_prompt": negative,
                "ipca_tokens": 0 if identity is None else int(identity.shape[1]),
                "denoiser_evaluations": drawn.evaluations,
            },
        )

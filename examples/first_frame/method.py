"""``first-frame``: every frame attends to the first frame's tokens as well as its own (a toy method).

The worked example of ``docs/adding-a-method.md``: a method is one folder with its settings, its attention
processor and its steps, over storycast's shared parts (the family seam, the batch sampler, the base processor,
the token cache). It runs on SD 1.5, SDXL and FLUX alike. Register it with
``storycast.methods.registry.register_method("first-frame", "first_frame.method:FirstFrameMethod")`` or, in a
package, under the ``storycast.methods`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from storycast.attention.cache import TokenCache
from storycast.attention.layers import install_processors, select_layers
from storycast.attention.processor import FrameSharingProcessor, KeyTokens, stack_rows
from storycast.attention.state import AttentionState
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.card import MethodCard
from storycast.pipelines.sampler import sample
from storycast.settings import MethodSettings, check_range, setting
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

# -- settings: one dataclass, each field with its help -----------------------------------------------------------


@dataclass(frozen=True)
class FirstFrameSettings(MethodSettings):
    """Settings of ``first-frame``."""

    share: float = setting(1.0, "Share of the first frame's tokens every later frame attends to (0 to 1).")
    blocks: tuple[str, ...] | None = setting(
        None, "Blocks whose self-attention shares. None: the up blocks of a UNet, the single-stream blocks of FLUX."
    )

    def validate(self) -> None:
        check_range("share", self.share, 0, 1)


# -- the attention change: a subclass of the base processor overriding one point ----------------------------------


@dataclass
class FirstFrameState(AttentionState):
    """The call's state: whether it writes the first frame's tokens or reads them, and where they are kept."""

    mode: Literal["write", "read"] = "read"
    cache: TokenCache = field(default_factory=TokenCache)
    share: float = 1.0


class FirstFrameAttention(FrameSharingProcessor):
    """Keys and values of a frame: the first frame's kept tokens, then its own."""

    state: FirstFrameState

    def key_tokens(self, attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> KeyTokens:
        state = self.state
        by_frame = self.by_frame(hidden)  # [half, frame, token, channel]
        key = (self.layer, state.step)
        if state.mode == "write":
            kept = round(state.share * hidden.shape[1])
            state.cache.put(key, by_frame[:, 0, :kept].clone())  # the first `kept` tokens: a toy's choice
            return context
        first = state.cache.get(key).to(device=hidden.device, dtype=hidden.dtype)
        rows = [
            torch.cat([first[half], by_frame[half, f]]) for half in range(state.halves) for f in range(state.frames)
        ]
        return stack_rows(rows)


# -- the method: plan, then generate over the shared sampler ------------------------------------------------------


class FirstFrameMethod(StoryMethod):
    """The first frame alone, then every later frame reading its tokens (see the module docstring)."""

    name = "first-frame"
    settings_class = FirstFrameSettings
    families = ("sdxl", "sd15", "flux")
    summary = "toy example: every frame attends to the first frame's tokens (docs/adding-a-method.md)"
    card = MethodCard(
        families_why="sharing attention tokens needs only the processors' key_tokens point, which every family has",
        training="training-free",
        inputs="text",
        cost="1.00x",
        source="docs/adding-a-method.md (a worked example, not a published method)",
    )

    settings: FirstFrameSettings

    def __init__(self, models: Any, settings: FirstFrameSettings | None = None):
        super().__init__(models, settings)
        self.cache = TokenCache(what="first-frame tokens (layer, step)", fix="draw the first frame first")

    @classmethod
    def plan(cls, story: Story, settings: FirstFrameSettings) -> list[FrameGroup]:
        # The first frame is a group of its own; every later frame reads it, so its key includes the first's.
        later = [FrameGroup((i,), depends_on=(0,)) for i in range(1, len(story))]
        return [FrameGroup((0,), role="first frame"), *later]

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        first = tuple(group) == (0,)
        if not first and self.cache.empty:
            raise self.not_restored("the tokens", group, (0,))
        return self._draw(story, group, "write" if first else "read", context)

    def _draw(self, story: Story, group: Sequence[int], mode: str, context: RunContext) -> list[FrameResult]:
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story)
        prompts = [story.prompt(i) for i in group]
        negatives = [story.negative_prompt(i) or "" for i in group]
        conditioning = backbone.encode(
            prompts, negatives, width=gen.width, height=gen.height, guidance=sampling.guidance
        )
        if mode == "write":
            self.cache.clear()
        state = FirstFrameState(frames=len(group), mode=mode, cache=self.cache, share=self.settings.share)  # type: ignore[arg-type]
        blocks = self.settings.blocks or (("single",) if self.models.family == "flux" else ("up",))
        layers = select_layers(backbone.denoiser, kind="self", blocks=blocks)
        processors = {layer.processor_key: FirstFrameAttention(state, layer.name, layer.level) for layer in layers}
        drawn = sample(
            backbone,
            conditioning,
            [make_generator(story.frame_seed(i), str(self.models.device)) for i in group],
            sampling,
            installs=[lambda: install_processors(backbone.denoiser, processors)],
            states=[state],
            progress=denoise_progress(context.progress),
        )
        return [
            FrameResult(index, image, story.frame_seed(index), metadata={"prompt": prompt, "role": mode})
            for index, image, prompt in zip(group, drawn.images, prompts, strict=True)
        ]

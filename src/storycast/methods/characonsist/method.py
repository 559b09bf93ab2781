"""``characonsist``: CharaConsist (Wang et al., ICCV 2025; arXiv 2507.11533) on FLUX.1, training-free.

The run (as the authors' ``inference.py`` runs a story, Murray-Wang/CharaConsist@759018c):

1. per character, its identity frame (the first frame naming it alone) is drawn as plain FLUX while the
   single-stream layers keep its image keys and values (before rotary positions), its attention outputs and,
   from the text attention at the mask step, its foreground mask;
2. every frame naming characters is drawn twice from the same seed: a first pass to the mask step finds its
   foreground and matches its points to each named character's identity frame (cosine similarity of attention
   outputs); the real pass lets its character tokens attend to the identity keys moved to the matched points
   (point-tracking attention), its background tokens to the identity frame's background where it is kept, and
   merges matched tokens' attention outputs towards the identity frame's (adaptive token merge);
3. a frame naming nobody is plain FLUX.

The plan: each identity frame is a group of its own; every other frame is a group depending on the identity
groups of the characters it names, so editing an identity frame redraws exactly its readers, and a resumed run
restores the bank by drawing the identity frame again (``StoryMethod.restore``: the same seed, the same tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storycast.attention.cache import TokenCache
from storycast.attention.layers import install_processors, select_layers
from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.characonsist.about import ABOUT
from storycast.methods.characonsist.attention import CharaConsistAttention, CharaConsistState, StepWindows
from storycast.methods.characonsist.points import merge_weights
from storycast.methods.characonsist.prompts import token_groups
from storycast.methods.characonsist.settings import CharaConsistSettings
from storycast.methods.limits import WITHOUT_CHARACTERS, FrameLimit, apply_limits, each_frame_showing, no_character
from storycast.pipelines.sampler import sample
from storycast.story.model import Story, contains_word
from storycast.utils.torch_utils import make_generator

IDENTITY_ROLE = "identity frame of "


def identity_frames(story: Story) -> dict[str, int]:
    """Character id -> its identity frame: the first frame naming it alone (the authors' first prompt of a story
    is its identity prompt, ``inference.py`` line 144)."""
    found: dict[str, int] = {}
    for index, frame in enumerate(story.frames):
        if len(frame.characters) == 1:
            found.setdefault(frame.characters[0], index)
    return found


class CharaConsistMethod(StoryMethod, about=ABOUT):
    """CharaConsist's point-tracking attention and token merge on FLUX (see the module docstring)."""

    settings: CharaConsistSettings

    def __init__(self, models: Any, settings: CharaConsistSettings | None = None):
        super().__init__(models, settings)
        self.bank = TokenCache(
            "cpu" if self.settings.bank_device == "cpu" else None,
            what="identity-frame tokens (character, kind, layer, step)",
            fix="draw the character's identity frame first",
        )

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # 50 steps (pipeline_characonsist.py line 46), guidance 3.5 (line 49), 1024 x 1024 (inference.py lines
        # 11-12), every image from the one seed (inference.py lines 152, 165, 168).
        return {"steps": 50, "guidance_scale": 3.5, "width": 1024, "height": 1024, "seed_policy": "same"}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        return {"seed": 2025, "seed_policy": "same"}  # inference.py line 13

    @classmethod
    def nothing_to_keep(cls, story: Story, settings: CharaConsistSettings) -> str | None:
        return no_character(story, cls.name, "identity frame to keep consistent")

    @classmethod
    def frame_limits(
        cls, story: Story, settings: CharaConsistSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        found: list[FrameLimit] = []
        for index in range(len(story)):  # the foreground is found from the text attention of these words
            prompt = story.prompt(index)
            unfound = tuple(
                c.id
                for c in story.frame_characters(index)
                if c.description not in prompt and not contains_word(prompt, c.class_word)
            )
            if unfound:
                detail = f"the prompt holds neither the description nor the class word of {', '.join(unfound)}"
                found.append(FrameLimit(index, "class-word-absent", detail, WITHOUT_CHARACTERS, unfound))
        adapted = apply_limits(story, found)
        identity = identity_frames(adapted)
        for character in adapted.appearing_characters():
            if character.id not in identity:
                detail = f"'{character.id}' never appears alone, and characonsist's identity frame shows one character"
                found += each_frame_showing(adapted, [character.id], "solo-frames", detail, WITHOUT_CHARACTERS)
        return found

    @classmethod
    def check(cls, story: Story, settings: CharaConsistSettings, family: str | None = None) -> None:
        where = f"{story.source}: " if story.source else ""
        appearing = story.appearing_characters()
        identity = identity_frames(story)
        missing = [c.id for c in appearing if c.id not in identity]
        if missing:
            raise StorycastError(
                f"{where}characonsist draws each character's identity frame first, the first frame naming it alone, "
                f"but {', '.join(repr(m) for m in missing)} never appear(s) alone. Fix: add a frame where each of "
                f"them appears alone."
            )
        if story.settings.true_cfg_scale is not None and story.settings.true_cfg_scale > 1:
            raise SettingsError(
                f"true_cfg_scale={story.settings.true_cfg_scale}: CharaConsist runs FLUX.1-dev's embedded guidance "
                f"alone, one row per frame (the authors'); its masks and matches are made for that row. Fix: leave "
                f"true_cfg_scale unset."
            )
        beyond = [i for i in settings.background_frames if i >= len(story)]
        if beyond:
            raise SettingsError(
                f"background_frames={list(settings.background_frames)}: the story has frames 0 to {len(story) - 1}. "
                f"Fix: name frames of the story."
            )
        for index in range(len(story)):
            prompt = story.prompt(index)
            for character in story.frame_characters(index):
                if character.description not in prompt and not contains_word(prompt, character.class_word):
                    raise StorycastError(
                        f"{where}frames[{index}] names '{character.id}', but its prompt holds neither the "
                        f"description nor the class word '{character.class_word}', so the character's foreground "
                        f"cannot be found from the text attention. Fix: write {{{character.id}}} in the frame text."
                    )
        if story.settings.steps is not None:
            settings.check_steps(story.settings.steps)

    @classmethod
    def plan(cls, story: Story, settings: CharaConsistSettings) -> list[FrameGroup]:
        identity = identity_frames(story)
        order = [c.id for c in story.appearing_characters()]
        groups = [FrameGroup((identity[c],), role=IDENTITY_ROLE + c) for c in order]
        number = {c: n for n, c in enumerate(order)}
        first = set(identity.values())
        for index, frame in enumerate(story.frames):
            if index in first:
                continue
            depends = tuple(sorted({number[c] for c in frame.characters}))
            groups.append(FrameGroup((index,), depends_on=depends, role="frames" if depends else "plain frame"))
        return groups

    # -- with the models loaded -------------------------------------------------------------------

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        (index,) = group
        identity = identity_frames(story)
        characters = story.frames[index].characters
        if len(characters) == 1 and identity.get(characters[0]) == index:
            return [self._draw(story, index, "identity", context)]
        for character in characters:
            if (character, "mask") not in self.bank:
                raise self.not_restored(f"the identity tokens of '{character}'", group, (identity[character],))
        return [self._draw(story, index, "frame", context)]

    def _draw(self, story: Story, index: int, mode: str, context: RunContext) -> FrameResult:
        settings: CharaConsistSettings = self.resolved_settings(story)  # type: ignore[assignment]
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story)
        prompt, negative = story.prompt(index), story.negative_prompt(index) or ""
        conditioning = backbone.encode(
            [prompt], [negative], width=gen.width, height=gen.height, guidance=sampling.guidance
        )
        characters = story.frames[index].characters
        seed = story.frame_seed(index)
        metadata: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
        if not characters:  # a frame naming nobody: plain FLUX
            drawn = sample(
                backbone, conditioning, [self._generator(seed)], sampling, progress=denoise_progress(context.progress)
            )
            metadata.update(role="plain frame", reads=[], denoiser_evaluations=drawn.evaluations)
            return FrameResult(index, drawn.images[0], seed, metadata=metadata)

        state = self._state(story, index, mode, settings)
        if mode == "identity":
            self.bank.drop(lambda key: key[0] == characters[0])
        layers = select_layers(backbone.denoiser, kind="self", blocks=("single",))
        processors = {layer.processor_key: CharaConsistAttention(state, layer.name) for layer in layers}

        def draw(stop: int | None = None) -> Any:
            return sample(
                backbone,
                conditioning,
                [self._generator(seed)],
                sampling,
                installs=[lambda: install_processors(backbone.denoiser, processors)],
                states=[state],
                on_step=state.end_step,
                progress=denoise_progress(context.progress),
                stop=stop,
                decode=stop is None,
            )

        evaluations = 0
        if mode == "frame" and settings.matches_points:
            # The first pass, from the same seed, to the mask step: masks and matches (the authors' is_pre_run).
            state.mode = "pre"
            evaluations += draw(stop=state.windows.mask_step + 1).evaluations
            state.mode = "frame"
        drawn = draw()
        evaluations += drawn.evaluations
        metadata.update(
            role=IDENTITY_ROLE + characters[0] if mode == "identity" else "reads identity frames",
            reads=[] if mode == "identity" else list(characters),
            denoiser_evaluations=evaluations,
            bank_bytes=self.bank.nbytes,
            foreground_tokens=int((state.labels != 0).sum()) if state.labels is not None else None,
            matched_points={c: m.count for c, m in state.matches.items()},
            keeps_background=state.keep_background,
        )
        extras = (
            {"mask": _mask_image(state, drawn.images[0].size)}
            if settings.save_masks and state.labels is not None
            else {}
        )
        return FrameResult(index, drawn.images[0], seed, metadata=metadata, extras=extras)

    def _state(self, story: Story, index: int, mode: str, settings: CharaConsistSettings) -> CharaConsistState:
        backbone = self.backbone
        characters = tuple(story.frames[index].characters)
        prompt = story.prompt(index)
        # A character's text: its description where the prompt holds it, else its class word (``check`` ensures one).
        phrases = [c.description if c.description in prompt else c.class_word for c in story.frame_characters(index)]
        real, groups = token_groups(backbone.tokenizer, prompt, phrases, backbone.max_sequence_length)
        names = [layer.name for layer in select_layers(backbone.denoiser, kind="self", blocks=("single",))]
        foreground = frozenset(n for n in names if _block_index(n) % settings.foreground_every == 0)
        background = frozenset(n for n in names if _block_index(n) % settings.background_every == 0)
        reads_background = settings.share_background or bool(settings.background_frames)
        stored = (foreground if settings.share_foreground else frozenset()) | (
            background if reads_background else frozenset()
        )
        merge = (
            merge_weights(settings.merge_weight, settings.merge_start, settings.merge_decay, settings.merge_end)
            if settings.merge
            else {}
        )
        _, h, w = backbone.latent_shape(story.settings.width, story.settings.height)
        return CharaConsistState(
            frames=1,
            num_steps=story.settings.steps,
            mode="identity" if mode == "identity" else "frame",
            windows=StepWindows(settings.attention_start, settings.attention_end, settings.mask_step, merge),
            bank=self.bank,
            characters=characters,
            token_groups=groups,
            real_tokens=real,
            grid=(h // 2, w // 2),
            foreground_layers=foreground,
            background_layers=background,
            share_foreground=settings.share_foreground,
            keep_background=mode != "identity" and (settings.share_background or index in settings.background_frames),
            threshold=settings.similarity_threshold,
            stored_kv_layers=stored,
            match=settings.matches_points,
        )

    def _generator(self, seed: int) -> Any:
        # The authors draw every pass from a CPU generator of the seed (inference.py lines 152, 165, 168); the
        # family draws the noise as FluxPipeline does from a generator on the model's device.
        return make_generator(seed, str(self.models.device))


def _block_index(layer: str) -> int:
    """The block number of ``single_transformer_blocks.N.attn`` (A line 401)."""
    return int(layer.split(".")[1])


def _mask_image(state: CharaConsistState, size: tuple[int, int]) -> Any:
    """The frame's labels as a greyscale image of ``size``: 0 background, character k at 255 k / K."""
    from PIL import Image

    assert state.labels is not None
    levels = (state.labels.view(state.grid).float() * 255 / max(1, len(state.characters))).round().byte()
    return Image.fromarray(levels.cpu().numpy()).resize(size, Image.NEAREST)

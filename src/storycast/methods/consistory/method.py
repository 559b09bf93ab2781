"""``consistory``: ConsiStory (Tewel et al., SIGGRAPH 2024 / TOG 43(4)), training-free, on SDXL.

Written from the paper and the algorithm of NVlabs/consistory (commit 8158d41), whose code is under NVIDIA's
non-commercial licence; what we follow and where we differ is ``docs/methods/consistory.md``. The run, in the
authors' anchor mode (``run_anchor_generation`` then ``run_extra_generation`` per frame):

1. the anchors (the story's first frames) are drawn together, twice:
   - pass 1: subject-driven shared self-attention (SDSA) in the up blocks from step 1, subjects located by their
     class words' cross-attention maps (mean of the last 20 steps, Otsu), mask dropout, and during the first
     steps the queries blended with those of a vanilla pass; the first up block's output at t = 261 is kept as
     DIFT features, and the final masks;
   - pass 2, from the same noise: the same, plus feature injection: each anchor's subject takes 0.8 of the
     output of its nearest DIFT correspondence in the other anchors, at the 64 x 64 self-attention layers,
     steps T/10 .. T/3;
   each pass keeps the anchors' subject tokens (every shared layer and step) and pass 2 their injected outputs;
2. every later frame is drawn alone (or batched with others it never sees), the same two passes, attending to its
   own tokens and the anchors' cached subject tokens, and taking injected features from the anchors only: memory
   stays flat however long the story.

UNet evaluations per frame: 2 passes x (T + T/10 vanilla steps) x 2 (guidance) = 220 at T = 50 (the authors'
code spends 224: it also runs a vanilla pass at step 0, whose queries nothing reads); 110 for a frame that
shares nothing and takes nothing, whose second pass would repeat the first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.attention.automask import anchor_cache
from storycast.attention.cache import TokenCache
from storycast.attention.character_masks import CharacterMasks
from storycast.attention.feature_injection import (
    Correspondence,
    FeatureInjection,
    InjectedOutputs,
    correspond,
    features_at,
    gaussian_smooth,
    injection_steps,
    record_block_output,
)
from storycast.attention.subject_attention import SubjectAttentionState, install_subject_attention, query_strengths
from storycast.attention.token_maps import record_token_maps
from storycast.errors import Problem, SettingsError, StoryError
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.consistory.about import ABOUT
from storycast.methods.consistory.settings import DROPOUT_SEED_OFFSET, ConsiStorySettings
from storycast.methods.limits import FrameLimit, class_word_limits
from storycast.methods.located import class_word_positions, mask_extras, warn_unnamed_class_words
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.freeu import FREEU_SDXL, freeu
from storycast.pipelines.sampler import Sampling, sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

ANCHOR_ROLE = "anchors"


@dataclass
class Anchors:
    """What later frames read of the anchors: per pass, their subject tokens at every shared layer and step; their
    DIFT features and final pass-1 masks (correspondences); their injected outputs (pass 2)."""

    characters: list[tuple[str, ...]]
    first: TokenCache
    second: TokenCache
    features: list[torch.Tensor] | None = None
    masks: CharacterMasks | None = None
    outputs: InjectedOutputs | None = None

    @property
    def nbytes(self) -> int:
        return self.first.nbytes + self.second.nbytes + (self.outputs.nbytes if self.outputs is not None else 0)


@dataclass
class PassResult:
    latents: torch.Tensor
    masks: CharacterMasks
    features: list[torch.Tensor]
    evaluations: int


def union_mask(
    masks: CharacterMasks, frame: int, characters: Sequence[str], tokens: int, device: Any
) -> torch.Tensor | None:
    """(tokens,) boolean union of ``frame``'s masks of ``characters``; None when it has none of them."""
    found = [m for c in characters if (m := masks.mask(frame, c, tokens, device)) is not None]
    return torch.stack(found).any(dim=0) if found else None


class ConsiStoryMethod(StoryMethod, about=ABOUT):
    """ConsiStory on SDXL (see the module docstring)."""

    settings: ConsiStorySettings

    def __init__(self, models: Any, settings: ConsiStorySettings | None = None):
        super().__init__(models, settings)
        self._anchors: Anchors | None = None

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # consistory_run: n_steps=50; the pipeline's guidance_scale default 5.0.
        return {"steps": 50, "guidance_scale": 5.0}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        # consistory_run / consistory_CLI: seed 40, a latent of its own per frame (same_latent=False).
        return {"seed": 40}

    @classmethod
    def check(cls, story: Story, settings: ConsiStorySettings, family: str | None = None) -> None:
        if len(story) < settings.anchors:
            raise StoryError(
                [
                    Problem(
                        "frames",
                        f"consistory draws the story's first {settings.anchors} frames as its anchors, but the story "
                        f"has {len(story)} frame(s)",
                        f"add frames, or --set anchors={max(1, len(story))}",
                    )
                ],
                story.source,
            )
        warn_unnamed_class_words(story, cls.name)
        where = f"{story.source}: " if story.source else ""
        in_anchors = {c for frame in story.frames[: settings.anchors] for c in frame.characters}
        for index, frame in enumerate(story.frames[settings.anchors :], start=settings.anchors):
            for cid in frame.characters:
                if cid not in in_anchors:
                    logger.warning(
                        "%sframes[%d]: '%s' is in none of the %d anchor frames, so consistory keeps nothing of it "
                        "consistent there. Fix: name it in one of the first frames, or raise --set anchors=.",
                        where, index, cid, settings.anchors,
                    )  # fmt: skip

    @classmethod
    def frame_limits(
        cls, story: Story, settings: ConsiStorySettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # A character whose class word is not within the prompt's tokens cannot be located there (only a warning
        # outside a benchmark): the frame is drawn without it, which is what the method does with it there.
        return [] if tokenizer is None else class_word_limits(tokenizer, story, cls.name)

    @classmethod
    def plan(cls, story: Story, settings: ConsiStorySettings) -> list[FrameGroup]:
        anchors = tuple(range(min(settings.anchors, len(story))))
        groups = [FrameGroup(anchors, role=ANCHOR_ROLE)]
        later = list(range(len(anchors), len(story)))
        size = settings.frames_per_group
        groups += [FrameGroup(tuple(later[i : i + size]), depends_on=(0,)) for i in range(0, len(later), size)]
        return groups

    # -- run interface ----------------------------------------------------------------------------

    def prepare(self, story: Story, context: RunContext) -> None:
        self._anchors = None
        self._check_levels(self.resolved_settings(story))

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        settings = self.resolved_settings(story)
        plan = self.plan(story, settings)
        found = self.planned_group(story, settings, group)
        if found.role == ANCHOR_ROLE:
            return self._draw_anchors(story, found.frames, context, keep=len(plan) > 1)
        # Anchors drawn in an earlier run are restored first by the runner (StoryMethod.restore: drawn again, the
        # same seeds giving the same tokens and features).
        if self._anchors is None:
            raise self.not_restored("the anchors' tokens and features", found.frames, plan[0].frames)
        return self._draw(story, found.frames, context, mode="read")

    # -- parts -------------------------------------------------------------------------------------

    def _check_levels(self, settings: ConsiStorySettings) -> None:
        from storycast.attention.layers import attention_layers

        layers = attention_layers(self.backbone.denoiser)
        cross = sorted({layer.level for layer in layers if layer.is_cross})
        own = sorted({layer.level for layer in layers if not layer.is_cross})
        if settings.mask_level not in cross:
            raise SettingsError(
                f"mask_level={settings.mask_level} has no cross-attention layers to make masks from; this UNet has "
                f"them at levels {cross}. Fix: --set mask_level={cross[-1] if cross else 0}."
            )
        if settings.injection and settings.injection_level not in own:
            raise SettingsError(
                f"injection_level={settings.injection_level} has no self-attention layers to inject into; this UNet "
                f"has them at levels {own}. Fix: --set injection_level={own[0] if own else 0}, or --set injection=false."
            )

    def _draw_anchors(
        self, story: Story, frames: Sequence[int], context: RunContext, *, keep: bool
    ) -> list[FrameResult]:
        settings = self.resolved_settings(story)
        device = "cpu" if settings.anchor_device == "cpu" else None
        self._anchors = Anchors(
            [tuple(story.frames[i].characters) for i in frames], anchor_cache(device), anchor_cache(device)
        )
        return self._draw(story, frames, context, mode="write" if keep else None)

    def _draw(
        self, story: Story, frames: Sequence[int], context: RunContext, *, mode: str | None
    ) -> list[FrameResult]:
        """Draw ``frames`` as one batch, both passes; ``mode`` "write" keeps what later frames read of these
        anchors, "read" attends to the anchors, None shares within the batch alone."""
        settings = self.resolved_settings(story)
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story, settings.scheduler)
        anchors = self._anchors if mode else None
        # 1. The prompts, and where each frame's characters' class words are in them. No negative prompt gives zero
        # unconditional embeddings, as the authors' pipeline call without one does (SDXL's
        # force_zeros_for_empty_prompt); one the story writes is encoded.
        prompts = [story.prompt(i) for i in frames]
        conditioning = backbone.encode(
            prompts,
            [story.negative_prompt(i) for i in frames],
            width=gen.width,
            height=gen.height,
            guidance=sampling.guidance,
        )
        characters = [tuple(story.frames[i].characters) for i in frames]
        positions = class_word_positions(backbone.tokenizer, story, frames)
        # 2. One noise for both passes, from each frame's own seed.
        noise = backbone.initial_latents(
            backbone.scheduler(gen.steps, width=gen.width, height=gen.height, kind=settings.scheduler),
            [make_generator(story.frame_seed(i), str(self.models.device)) for i in frames],
            width=gen.width,
            height=gen.height,
        )
        run = _PassRunner(self, story, frames, characters, positions, conditioning, sampling, context, 2)
        passes = 2 if settings.injection else 1
        run.passes = passes
        # 3. Pass 1: SDSA and query blending; DIFT features and the final masks for the correspondences.
        first = run(noise, number=1, mode=mode, cache=anchors.first if anchors else None, injection=None)
        latents, evaluations = first.latents, first.evaluations
        injected: dict[int, int] = {}
        if settings.injection:
            if mode == "write":
                assert anchors is not None
                anchors.features, anchors.masks = first.features, first.masks
                anchors.outputs = self._anchor_outputs(story, first.masks, characters, settings)
            injection = self._injection(story, first, characters, settings, mode)
            reads_anchors = mode == "read" and any(self._shares_with_anchors(names) for names in characters)
            if mode == "write" or reads_anchors or any(injection.correspondences):
                # 4. Pass 2, from the same noise: the same attention, and the subjects' features injected.
                second = run(
                    noise, number=2, mode=mode, cache=anchors.second if anchors else None, injection=injection
                )
                latents, evaluations = second.latents, evaluations + second.evaluations
                injected = dict(injection.injected_pixels)
            else:
                # Nothing is injected and no anchor is read: pass 2 would repeat pass 1 exactly.
                passes = 1
        images = backbone.decode(latents)
        return [
            self._result(story, index, image, first.masks, number, frames, evaluations, mode, passes, injected)
            for number, (index, image) in enumerate(zip(frames, images, strict=True))
        ]

    def _shares_with_anchors(self, names: Sequence[str]) -> bool:
        assert self._anchors is not None
        return any(c in anchor for anchor in self._anchors.characters for c in names)

    def _injection_grid(self, story: Story, settings: ConsiStorySettings) -> tuple[int, int]:
        """(h, w) token grid of the injected layers."""
        _, height, width = self.backbone.latent_shape(story.settings.width, story.settings.height)
        return height >> settings.injection_level, width >> settings.injection_level

    def _anchor_outputs(
        self, story: Story, masks: CharacterMasks, characters: Sequence[Sequence[str]], settings: ConsiStorySettings
    ) -> InjectedOutputs:
        height, width = self._injection_grid(story, settings)
        tokens = height * width
        kept = []
        for number, names in enumerate(characters):
            mask = union_mask(masks, number, names, tokens, self.models.device)
            kept.append({tokens: mask if mask is not None else torch.zeros(tokens, dtype=torch.bool)})
        return InjectedOutputs(kept, device="cpu" if settings.anchor_device == "cpu" else None)

    def _injection(
        self,
        story: Story,
        first: PassResult,
        characters: Sequence[Sequence[str]],
        settings: ConsiStorySettings,
        mode: str | None,
    ) -> FeatureInjection:
        """Each frame's correspondences at the injection grid: in the other frames of the batch (anchors among
        themselves), or in the anchors (a later frame). A source offers the characters both frames name."""
        grid = self._injection_grid(story, settings)
        tokens = grid[0] * grid[1]
        device = self.models.device
        correspondences: list[dict[int, Correspondence]] = []
        for frame, names in enumerate(characters):
            target = features_at(first.features[frame], grid)
            if mode == "read":
                assert self._anchors is not None and self._anchors.masks is not None and self._anchors.features
                source_masks, source_names, source_features = (
                    self._anchors.masks,
                    self._anchors.characters,
                    self._anchors.features,
                )
                others = range(len(source_names))
            else:
                source_masks, source_names, source_features = first.masks, characters, first.features
                others = [other for other in range(len(characters)) if other != frame]
            # A source offers the characters both frames name; the frame takes features for those alone.
            offered: dict[int, list[str]] = {n: [c for c in names if c in source_names[n]] for n in others}
            masks = {n: union_mask(source_masks, n, common, tokens, device) for n, common in offered.items() if common}
            taking = sorted({c for n, common in offered.items() if masks.get(n) is not None for c in common})
            target_mask = union_mask(first.masks, frame, taking, tokens, device)
            sources = [
                (features_at(f.to(target.device), grid), masks[n]) if masks.get(n) is not None else None
                for n, f in enumerate(source_features)
            ]
            found = correspond(target, target_mask, sources) if target_mask is not None else None
            correspondences.append({tokens: found} if found is not None else {})
        return FeatureInjection(
            alpha=settings.injection_alpha,
            steps=injection_steps(story.settings.steps, settings.injection_start, settings.injection_end),
            correspondences=correspondences,
            anchors=self._anchors.outputs if mode == "read" and self._anchors else None,
            record=self._anchors.outputs if mode == "write" and self._anchors else None,
        )

    def _result(
        self,
        story: Story,
        index: int,
        image: Any,
        masks: CharacterMasks,
        number: int,
        frames: Sequence[int],
        evaluations: int,
        mode: str | None,
        passes: int,
        injected: dict[int, int],
    ) -> FrameResult:
        extras, areas = mask_extras(masks, number, story.frames[index].characters, (image.height, image.width))
        role = {"write": "anchor", "read": "reads the anchors"}.get(mode or "", "anchor")
        return FrameResult(
            index,
            image,
            story.frame_seed(index),
            metadata={
                "prompt": story.prompt(index),
                "negative_prompt": story.negative_prompt(index) or "",
                "role": role,
                "group": list(frames),
                "passes": passes,
                "mask_area": areas,
                "injected_pixels": injected.get(number, 0),
                "denoiser_evaluations": evaluations // len(frames),
                "anchor_bytes": self._anchors.nbytes if self._anchors else 0,
            },
            extras=extras,
        )


class _PassRunner:
    """One denoising pass of a batch of frames with ConsiStory's attention (both passes share everything but the
    injection and the anchor cache)."""

    def __init__(
        self,
        method: ConsiStoryMethod,
        story: Story,
        frames: Sequence[int],
        characters: Sequence[Sequence[str]],
        positions: Sequence[dict[str, list[int]]],
        conditioning: GuidancePair,
        sampling: Sampling,
        context: RunContext,
        passes: int,
    ):
        self.method, self.story, self.frames = method, story, frames
        self.characters, self.positions, self.conditioning = characters, positions, conditioning
        self.sampling, self.context, self.passes = sampling, context, passes
        self.settings = method.resolved_settings(story)
        _, height, width = method.backbone.latent_shape(story.settings.width, story.settings.height)
        self.latent_size = (height, width)

    def __call__(
        self,
        noise: torch.Tensor,
        *,
        number: int,
        mode: str | None,
        cache: TokenCache | None,
        injection: FeatureInjection | None,
    ) -> PassResult:
        settings, gen = self.settings, self.story.settings
        backbone = self.method.backbone
        unet = backbone.denoiser
        level = settings.mask_level
        masks = CharacterMasks(self.characters, self.latent_size, window=settings.mask_steps, cut_at_grid=True)
        store = masks.record(self.positions, (self.latent_size[0] >> level, self.latent_size[1] >> level))
        strengths = (
            query_strengths(
                settings.query_strength_start, settings.query_strength_end, settings.last_query_step(gen.steps)
            )
            if settings.share_queries and settings.share_attention
            else {}
        )
        state = SubjectAttentionState(
            frames=len(self.frames),
            num_steps=gen.steps,
            # The same dropout draws in both passes (the authors seed their store's dropout once per call).
            generator=make_generator(self.story.frame_seed(self.frames[0]) + DROPOUT_SEED_OFFSET, "cpu"),
            character_masks=masks,
            dropout=settings.mask_dropout,
            anchors=cache,
            anchor_mode=mode if cache is not None else None,  # type: ignore[arg-type]
            anchor_dropout="writer",  # the anchors' tokens cached after their own dropout, as input_h_cache is
            share_batch=mode != "read",  # later frames batched together never see each other
            query_strengths=strengths,
            injection=injection,
        )
        sampling = self.sampling
        scheduler = backbone.scheduler(gen.steps, width=gen.width, height=gen.height, kind=sampling.scheduler)
        dift_step = int((scheduler.timesteps.float() - settings.dift_timestep).abs().argmin())
        # Step 0 has no masks, so no sharing and nothing to blend: its vanilla pass would never be read.
        vanilla_steps = {step for step in strengths if step >= 1}
        conditioning = self.conditioning

        def predict(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if i in vanilla_steps:
                state.vanilla, store.enabled = True, False
                try:
                    backbone.predict(
                        torch.cat([model_input, model_input]), t, conditioning.batch(), guidance=sampling.guidance
                    )
                finally:
                    state.vanilla, store.enabled = False, True
            return backbone.guided_noise(model_input, t, conditioning, sampling.guidance)

        rows = slice(len(self.frames), None)  # the cond half
        features: dict[str, Any] = {}
        installs: list[Any] = [lambda: record_token_maps(unet, store, [level])]
        if settings.share_attention or injection is not None:
            installs.append(
                lambda: install_subject_attention(
                    unet,
                    state,
                    share_blocks=("up",) if settings.share_attention else None,
                    injection_level=settings.injection_level if injection is not None else None,
                )
            )
        installs.append(lambda: freeu(unet, FREEU_SDXL if settings.freeu else None))
        # The DIFT features: by default a view of the block's output, read after the UNet call, as the authors'.
        installs.append(
            lambda: _kept(
                record_block_output(
                    unet.up_blocks[0],
                    rows,
                    lambda: state.step == dift_step and not state.vanilla,
                    copy=not settings.dift_after_freeu,
                ),
                features,
            )
        )
        steps = len(scheduler.timesteps)
        drawn = sample(
            backbone,
            conditioning,
            None,
            sampling,
            noise=predict,
            latents=noise,
            scheduler=scheduler,
            installs=installs,
            states=[state],
            progress=denoise_progress(
                self.context.progress, f"pass {number}", offset=(number - 1) * steps, total=self.passes * steps
            ),
            decode=False,
        )
        masks.refresh()  # the last step's maps join the window: the final masks
        smoothed = [gaussian_smooth(f.float()) for f in features.get("recorded", {}).get("features", [])]
        return PassResult(drawn.latents, masks, smoothed, drawn.evaluations)


@contextlib.contextmanager
def _kept(recorder: Any, into: dict[str, Any]) -> Iterator[None]:
    """Enter ``recorder`` (a context manager yielding what it records) and keep what it yields in ``into``."""
    with recorder as recorded:
        into["recorded"] = recorded
        yield

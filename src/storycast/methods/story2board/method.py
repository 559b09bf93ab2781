"""``story2board``: latent panel anchoring and reciprocal attention value mixing on FLUX.1 (Story2Board, 2025).

The run (as the authors' ``main.py`` draws a storyboard, DavidDinkevich/Story2Board@92ef110):

1. per storyboard (the frames of one cast, :mod:`.canvas`), the reference row: one canvas, the first frame on top
   (the reference panel) and the second below, drawn with RAVM, its reference-panel tokens kept after every block
   at every step; both panels are frames;
2. every later frame of the storyboard: a canvas of its own, the reference phrase on top and the frame below, with
   RAVM, its reference panel replaced after every block by the reference row's (anchoring); its bottom panel is the
   frame. Every canvas of a storyboard starts from the same noise when the frames share a seed (the authors'
   ``same_noise``, here the default seed policy "same").

A frame that names nobody, or a cast no other frame names, is drawn plainly (FLUX at the frame's size). The planner
records that later frames depend on their reference row, so editing either frame of the reference row redraws
every frame that read it; when the reference row is drawn but a later frame is not, the runner restores it
(``StoryMethod.restore``: drawn again, the same seed giving the same tokens). See docs/methods/story2board.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from storycast.attention.cache import TokenCache
from storycast.attention.layers import install_processors
from storycast.errors import SettingsError
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.story2board.about import ABOUT
from storycast.methods.story2board.attention import CanvasState, flux_blocks, mixing_processors, panel_anchoring
from storycast.methods.story2board.canvas import Storyboard, canvas_height, canvas_prompt, split_canvas, storyboards
from storycast.methods.story2board.settings import Story2BoardSettings
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

REFERENCE_ROLE = "reference row of "
READER_ROLE = "reads the reference panel of "
PLAIN_ROLE = "plain frame"


class Story2BoardMethod(StoryMethod, about=ABOUT):
    """Story2Board on FLUX.1 (see the module docstring)."""

    settings: Story2BoardSettings

    def __init__(self, models: Any, settings: Story2BoardSettings | None = None):
        super().__init__(models, settings)
        device = "cpu" if self.settings.anchor_device == "cpu" else None
        self.anchors = TokenCache(device, what="reference-panel tokens (storyboard, block, step)")

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # main.py: 28 steps (line 124), guidance 3.5 (line 110), seed 42 (line 109), the same noise for every canvas
        # (--same_noise True, line 112). The frame is a panel: half of the pipeline's default 1024 x 1024 canvas
        # (story2board_pipeline.py lines 383-384, cut in main.py lines 15-19; the 32 x 64 token grid, processor line
        # 107).
        if family != "flux":
            return {}
        return {"steps": 28, "guidance_scale": 3.5, "width": 1024, "height": 512, "seed": 42, "seed_policy": "same"}

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        # The authors' main.py run (see generation_defaults), recorded with every benchmark row: seed 42 and the
        # same noise for every canvas, 28 steps, guidance 3.5, 1024 x 512 panels.
        return cls.generation_defaults("flux")

    @classmethod
    def nothing_to_keep(cls, story: Story, settings: Story2BoardSettings) -> str | None:
        boards, _ = storyboards(story)
        if boards:
            return None
        where = f"{story.source}: " if story.source else ""
        return (
            f"{where}no character (or group of characters) is named by two frames, so story2board has no "
            f"reference panel to anchor a frame to. Fix: name the characters in the frames ({{id}} in the text, or "
            f"frames[i].characters), each in two frames or more, or draw with --method vanilla."
        )

    @classmethod
    def check(cls, story: Story, settings: Story2BoardSettings, family: str | None = None) -> None:
        true_cfg = story.settings.true_cfg_scale
        if true_cfg is not None and true_cfg > 1:
            raise SettingsError(
                f"true_cfg_scale={true_cfg}: story2board draws with FLUX.1's embedded guidance alone, as the authors "
                f"do (their attention store counts one transformer call per step). Fix: leave true_cfg_scale unset."
            )

    @classmethod
    def plan(cls, story: Story, settings: Story2BoardSettings) -> list[FrameGroup]:
        # A storyboard's groups are contiguous (its reference row, then its readers), so one storyboard's anchors are
        # in memory at a time; plain frames come last.
        boards, plain = storyboards(story)
        groups: list[FrameGroup] = []
        for board in boards:
            reference = len(groups)
            groups.append(FrameGroup(board.reference_row, role=REFERENCE_ROLE + board.name))
            groups.extend(
                FrameGroup((index,), depends_on=(reference,), role=READER_ROLE + board.name)
                for index in board.frames[2:]
            )
        groups.extend(FrameGroup((index,), role=PLAIN_ROLE) for index in plain)
        return groups

    # -- run interface ----------------------------------------------------------------------------

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        found = self.planned_group(story, self.settings, group)
        if found.role == PLAIN_ROLE:
            return [self._draw_plain(story, found.frames[0], context)]
        board = next(b for b in storyboards(story)[0] if found.role.endswith(b.name))
        if found.role.startswith(REFERENCE_ROLE):
            self.anchors.clear()  # one storyboard's anchors at a time: memory does not grow with the story
            top, bottom = self._draw_canvas(story, board, board.frames[1], "write", context)
            return [top, bottom]
        if self.settings.anchoring and board.name not in self.anchors.owners():
            raise self.not_restored(f"the reference panel of '{board.name}'", group, board.reference_row)
        return [self._draw_canvas(story, board, found.frames[0], "read", context)[1]]

    # -- parts -------------------------------------------------------------------------------------

    def _draw_canvas(
        self, story: Story, board: Storyboard, frame: int, anchor: str, context: RunContext
    ) -> tuple[FrameResult, FrameResult]:
        """One canvas: the storyboard's reference on top, ``frame`` below; returns (top, bottom) as frames (the top
        one is the reference frame's only on the reference row)."""
        settings, backbone = self.settings, self.backbone
        gen = story.settings
        panel = self.sampling(story)
        sampling = dataclasses.replace(panel, height=canvas_height(panel.height))
        prompt = canvas_prompt(story, board, frame)
        conditioning = backbone.encode([prompt], None, width=sampling.width, height=sampling.height,
                                       guidance=sampling.guidance)  # fmt: skip
        _, latent_rows, latent_columns = backbone.latent_shape(gen.width, gen.height)
        grid = (latent_rows // 2, latent_columns // 2)  # FLUX's tokens are 2 x 2 latent patches
        denoiser = backbone.denoiser
        blocks = flux_blocks(denoiser)
        seed = story.frame_seed(board.frames[0] if anchor == "write" else frame)
        state = CanvasState(
            frames=1,
            guidance=False,
            num_steps=gen.steps,
            panel_tokens=grid[0] * grid[1],
            grid=grid,
            blocks=len(blocks),
            mixing_blocks=settings.mixing_blocks(len(blocks)),
            mixing_steps=settings.mixing_steps(),
            strength=settings.mixing_strength,
            decay=settings.attention_decay,
            border=settings.border_tokens,
            min_size=settings.min_region_tokens,
            anchor=anchor if settings.anchoring else "off",  # type: ignore[arg-type]
            anchors=self.anchors,
            owner=board.name,
        )
        processors = mixing_processors(denoiser, state)
        drawn = sample(
            backbone,
            conditioning,
            [make_generator(seed, str(self.models.device))],
            sampling,
            installs=[lambda: install_processors(denoiser, processors), lambda: panel_anchoring(blocks, state)],
            states=[state],
            progress=denoise_progress(context.progress),
        )
        top, bottom = split_canvas(drawn.images[0])
        shared = {
            "prompt": prompt,
            "storyboard": board.name,
            "reference_frame": board.frames[0],
            "canvas": [sampling.width, sampling.height],
            "denoiser_evaluations": drawn.evaluations,
            "mixed_tokens": {str(step): count for step, count in sorted(state.mixed.items())},
            "mixing_blocks": [state.mixing_blocks.start, state.mixing_blocks.stop - 1],
            "anchor_bytes": self.anchors.nbytes,
        }
        reference = FrameResult(board.frames[0], top, seed, {**shared, "role": "reference panel", "panel": "top"})
        role = "reference row" if anchor == "write" else "anchored to the reference row"
        return reference, FrameResult(frame, bottom, seed, {**shared, "role": role, "panel": "bottom"})

    def _draw_plain(self, story: Story, index: int, context: RunContext) -> FrameResult:
        """A frame with nothing to keep consistent: FLUX at the frame's size, from its own prompt."""
        sampling = self.sampling(story)
        prompt = story.prompt(index)
        conditioning = self.backbone.encode(
            [prompt], None, width=sampling.width, height=sampling.height, guidance=sampling.guidance
        )
        seed = story.frame_seed(index)
        drawn = sample(
            self.backbone,
            conditioning,
            [make_generator(seed, str(self.models.device))],
            sampling,
            progress=denoise_progress(context.progress),
        )
        metadata = {"prompt": prompt, "role": PLAIN_ROLE, "denoiser_evaluations": drawn.evaluations}
        return FrameResult(index, drawn.images[0], seed, metadata)

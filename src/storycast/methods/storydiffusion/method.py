"""``storydiffusion``: Consistent Self-Attention over identity frames (StoryDiffusion, NeurIPS 2024).

The run (as the authors' low-VRAM app runs it, HVision-NKU/StoryDiffusion@8de45e4):

1. per character, its identity frames (the first ``id_length`` frames naming it alone) are drawn as one
   batch, writing their sampled tokens to the bank at every step and layer;
2. every other frame is drawn alone, reading the banks of the characters it names (both banks for a
   two-character frame; none for a frame naming nobody).

Each frame is denoised once: denoiser evaluations per frame equal plain text-to-image (2T on the UNet
families, T on FLUX with its embedded guidance). On FLUX (where the authors released no code) the same
attention runs on the joint attention of the single-stream blocks: a frame's queries attend to its own text and
image tokens and to the sampled image tokens of the identity frames, whose keys keep their rotary positions
(``docs/methods/storydiffusion.md``). The planner
records that the reading frames depend on their characters' identity group, so editing an identity
frame redraws every frame that read it; when an identity group is already drawn but a reading frame is
not, the runner restores its bank (``StoryMethod.restore``: the identity frames drawn again, the same seeds
giving the same tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.adapters.photomaker import attach_photomaker
from storycast.attention.consistent import ConsistentAttentionState, install_consistent_attention, token_bank
from storycast.errors import SettingsError, StorycastError
from storycast.identity.photomaker_prompt import MergedConditioning, insert_trigger_word, triggered_prompts
from storycast.identity.references import photomaker_identity, read_photos
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.limits import (
    WITHOUT_CHARACTERS,
    WITHOUT_REFERENCES,
    FrameLimit,
    apply_limits,
    each_frame_showing,
    no_character,
    trigger_limits,
)
from storycast.methods.storydiffusion.about import ABOUT
from storycast.methods.storydiffusion.settings import SAMPLING_SEED_OFFSET, StoryDiffusionSettings
from storycast.pipelines.families import check_scheduler
from storycast.pipelines.freeu import FREEU, freeu
from storycast.pipelines.sampler import sample
from storycast.story.model import Character, Story, join_prompt
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

IDENTITY_ROLE = "identity frames of "


def solo_frames(story: Story) -> dict[str, list[int]]:
    """Character id -> the frames naming that character alone, in story order."""
    alone: dict[str, list[int]] = {c.id: [] for c in story.characters}
    for index, frame in enumerate(story.frames):
        if len(frame.characters) == 1:
            alone[frame.characters[0]].append(index)
    return alone


def identity_frames(story: Story, id_length: int) -> dict[str, tuple[int, ...]]:
    """Character id -> its identity frames: the first ``id_length`` frames naming it alone (the authors'
    ``process_original_prompt``)."""
    alone = solo_frames(story)
    return {c.id: tuple(alone[c.id][:id_length]) for c in story.appearing_characters()}


def portraits(story: Story, character: Character, count: int) -> list[dict[str, Any]]:
    """The prompt, negative prompt and seed of each identity portrait of ``character`` (``identity_frames:
    portraits``): style + description + style suffix; portrait k of the n-th character is drawn from seed
    ``settings.seed + 1000 (n + 1) + k``, apart from the frames' seeds of any story shorter than 1000 frames."""
    number = [c.id for c in story.characters].index(character.id)
    prompt = join_prompt(story.style, character.description, story.style_suffix)
    negative = story.settings.negative_prompt or ""
    return [
        {"prompt": prompt, "negative_prompt": negative, "seed": story.settings.seed + 1000 * (number + 1) + k}
        for k in range(count)
    ]


@dataclass(frozen=True)
class _Row:
    """One image of a batch: its prompt, negative prompt and seed, and per character with a reference identity
    the same prompt with PhotoMaker's trigger word after that character's class word."""

    prompt: str
    negative: str
    seed: int
    triggered: dict[str, str]


class StoryDiffusionMethod(StoryMethod, about=ABOUT):
    """StoryDiffusion's Consistent Self-Attention on SDXL or SD 1.5 (see the module docstring)."""

    # Under a step cache (--cache), identity frames are drawn uncached (_draw): the bank holds every step and layer
    # a reader may read. Readers run cached: a skipped block reads nothing, and the state's step comes from the
    # sampler, not from counting calls.
    step_cache_safe = True

    settings: StoryDiffusionSettings

    def __init__(self, models: Any, settings: StoryDiffusionSettings | None = None):
        super().__init__(models, settings)
        device = "cpu" if self.settings.attention.bank_device == "cpu" else None
        self.bank = token_bank(device)
        self._references: dict[str, torch.Tensor] = {}

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # The low-VRAM app: 35 steps, guidance 5, 768 x 768 (on SDXL; SD 1.5 keeps its native 512). FLUX keeps its
        # own (28 steps, guidance 3.5 for dev): the authors' numbers are for classifier-free guidance.
        if family == "flux":
            return {}
        defaults: dict[str, Any] = {"steps": 35, "guidance_scale": 5.0}
        if family == "sdxl":
            defaults.update(width=768, height=768)
        return defaults

    @classmethod
    def check(cls, story: Story, settings: StoryDiffusionSettings, family: str | None = None) -> None:
        appearing = story.appearing_characters()
        where = f"{story.source}: " if story.source else ""
        if family is not None:
            try:
                check_scheduler(str(settings.scheduler), family)
            except ValueError as err:
                raise SettingsError(str(err)) from None
            if settings.freeu and family == "flux":
                raise SettingsError(
                    "freeu=true: FreeU rescales a UNet's decoder features, and FLUX has no UNet. Fix: --set freeu=false "
                    "(or leave it unset: off on FLUX)."
                )
        if settings.identity_frames == "story":
            alone = solo_frames(story)
            short = [c for c in appearing if len(alone[c.id]) < settings.id_length]
            if short:
                lines = [
                    f"'{c.id}' appears alone in {len(alone[c.id])} frame(s)"
                    + (f" ({', '.join(f'frames[{i}]' for i in alone[c.id])})" if alone[c.id] else "")
                    for c in short
                ]
                fixes = [
                    "draw identity portraits from the descriptions (--set identity_frames=portraits)",
                    "add frames where the character appears alone",
                ]
                most = min(len(alone[c.id]) for c in short)
                if most >= 1:
                    fixes.insert(0, f"lower id_length (--set id_length={most})")
                raise StorycastError(
                    f"{where}storydiffusion draws each character's first id_length={settings.id_length} solo frames "
                    f"as its identity frames, but " + "; ".join(lines) + ". Fix: " + ", or ".join(fixes) + "."
                )
        with_photos = [c.id for c in appearing if c.references]
        if with_photos and family not in (None, "sdxl"):
            raise SettingsError(
                f"{where}characters {with_photos} have reference photos, which storydiffusion reads through "
                f"PhotoMaker v1, an SDXL adapter; the model is {family}. Fix: --preset sdxl, or remove the references."
            )

    @classmethod
    def nothing_to_keep(cls, story: Story, settings: StoryDiffusionSettings) -> str | None:
        return no_character(story, cls.name, f"identity to keep (id_length={settings.id_length})")

    @classmethod
    def reads_references(cls, settings: StoryDiffusionSettings, family: str | None = None) -> bool:
        return family == "sdxl"  # through PhotoMaker v1, an SDXL adapter

    @classmethod
    def frame_limits(
        cls, story: Story, settings: StoryDiffusionSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # The order matters: a character left out of a shared frame may leave another alone there, a solo frame.
        found: list[FrameLimit] = []
        with_photos = [c.id for c in story.appearing_characters() if c.references]
        if with_photos and family not in (None, "sdxl"):
            detail = f"reference images are read through PhotoMaker v1, an SDXL adapter, and the model is {family}"
            found += each_frame_showing(story, with_photos, "references-family", detail, WITHOUT_REFERENCES)
        elif with_photos and tokenizer is not None:  # PhotoMaker v1 embeds the whole image: animals keep theirs
            found += trigger_limits(tokenizer, story, cls.name, with_photos)
        if settings.identity_frames == "story":
            adapted = apply_limits(story, found)
            alone = solo_frames(adapted)
            for character in adapted.appearing_characters():
                solo = len(alone[character.id])
                if solo < settings.id_length:
                    detail = (
                        f"'{character.id}' appears alone in {solo} frame(s), fewer than the id_length="
                        f"{settings.id_length} solo frames storydiffusion draws as a character's identity frames"
                    )
                    found += each_frame_showing(adapted, [character.id], "solo-frames", detail, WITHOUT_CHARACTERS)
        return found

    @classmethod
    def plan(cls, story: Story, settings: StoryDiffusionSettings) -> list[FrameGroup]:
        groups: list[FrameGroup] = []
        depends: dict[str, int] = {}
        identity = identity_frames(story, settings.id_length) if settings.identity_frames == "story" else {}
        for character_id, frames in identity.items():
            depends[character_id] = len(groups)
            groups.append(FrameGroup(frames, role=IDENTITY_ROLE + character_id))
        taken = {i for frames in identity.values() for i in frames}
        for index, frame in enumerate(story.frames):
            if index not in taken:
                needs = tuple(sorted({depends[c] for c in frame.characters if c in depends}))
                inputs = {}
                if settings.identity_frames == "portraits":
                    # The portraits this frame reads are drawn by the method, from inputs no frame holds.
                    read = {c: portraits(story, story.character(c), settings.id_length) for c in frame.characters}
                    inputs = {"portraits": read}
                groups.append(FrameGroup((index,), depends_on=needs, inputs=inputs))
        return groups

    # -- run interface ----------------------------------------------------------------------------

    def prepare(self, story: Story, context: RunContext) -> None:
        for character in story.appearing_characters():
            if character.references and character.id not in self._references:
                photos = read_photos(character.references, f"'{character.id}'")
                self._references[character.id] = photomaker_identity(self.adapter, photos)
        if self._references and str(self.models.device).startswith("cuda"):
            self.adapter.park_vision_tower()  # drawing needs only the fuse module, as in identitystory

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        found = self.planned_group(story, self.resolved_settings(story), group)
        if found.role.startswith(IDENTITY_ROLE):
            character = found.role[len(IDENTITY_ROLE) :]
            return self._draw_identity_frames(story, character, found.frames, context)
        return [self._draw_reading_frame(story, index, context) for index in found.frames]

    # -- parts -------------------------------------------------------------------------------------

    @property
    def adapter(self) -> Any:
        """PhotoMaker, attached when a character has reference photos."""
        return attach_photomaker(self.models, self.settings.photomaker)

    def _frame_row(self, story: Story, index: int) -> _Row:
        triggered = triggered_prompts(story, index, self._references)
        negative = story.negative_prompt(index) or ""
        return _Row(story.prompt(index), negative, story.frame_seed(index), triggered)

    def _portrait_rows(self, story: Story, character: Character, count: int) -> list[_Row]:
        """Identity images of a character from its description alone (``identity_frames=portraits``)."""
        triggered = {}
        if character.id in self._references:
            marked = insert_trigger_word(character.description, character.class_word)
            triggered[character.id] = join_prompt(story.style, marked, story.style_suffix)
        return [
            _Row(p["prompt"], p["negative_prompt"], p["seed"], triggered) for p in portraits(story, character, count)
        ]

    def _draw_identity_frames(
        self, story: Story, character: str, frames: Sequence[int], context: RunContext
    ) -> list[FrameResult]:
        """Write: the identity frames drawn as one batch, their sampled tokens stored in the bank."""
        rows = [self._frame_row(story, i) for i in frames]
        self.bank.drop(lambda key: key[0] == character)
        images, evaluations = self._draw(story, rows, "write", context, write_character=character)
        return [
            FrameResult(
                index,
                image,
                row.seed,
                metadata={
                    "prompt": row.prompt,
                    "negative_prompt": row.negative,
                    "role": "identity frame",
                    "character": character,
                    "identity_frames": list(frames),
                    "denoiser_evaluations": evaluations // len(rows),
                    "bank_bytes": self.bank.nbytes,
                },
            )
            for index, image, row in zip(frames, images, rows, strict=True)
        ]

    def _draw_reading_frame(self, story: Story, index: int, context: RunContext) -> FrameResult:
        """Read: one frame attending to the banks of the characters it names."""
        settings = self.resolved_settings(story)
        characters = story.frames[index].characters
        for character in characters:
            if character in self.bank.owners():
                continue
            if settings.identity_frames == "portraits":
                self._draw_portraits(story, character, settings, context)
            else:
                needed = identity_frames(story, settings.id_length)[character]
                raise self.not_restored(f"the identity tokens of '{character}'", (index,), needed)
        row = self._frame_row(story, index)
        images, evaluations = self._draw(story, [row], "read", context, read_characters=[characters])
        return FrameResult(
            index,
            images[0],
            row.seed,
            metadata={
                "prompt": row.prompt,
                "negative_prompt": row.negative,
                "role": "reads identity frames",
                "reads": list(characters),
                "denoiser_evaluations": evaluations,
                "bank_bytes": self.bank.nbytes,
            },
        )

    def _draw_portraits(
        self, story: Story, character: str, settings: StoryDiffusionSettings, context: RunContext
    ) -> None:
        """The identity tokens of ``character`` from portraits of its description (``identity_frames:
        portraits``), drawn when a frame first reads them (they are inputs of the frames, never saved). Identity
        frames of the story are groups of the plan instead: the runner restores one drawn in an earlier run."""
        rows = self._portrait_rows(story, story.character(character), settings.id_length)
        logger.info("drawing %d identity portrait(s) of '%s'", len(rows), character)
        self._draw(story, rows, "write", context, write_character=character)

    def _draw(
        self,
        story: Story,
        rows: Sequence[_Row],
        mode: str,
        context: RunContext,
        *,
        write_character: str | None = None,
        read_characters: Sequence[Sequence[str]] = (),
    ) -> tuple[list[Any], int]:
        """Denoise ``rows`` as one batch with CSA in ``mode``; returns the images and the denoiser evaluations."""
        settings = self.resolved_settings(story)
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story, str(settings.scheduler))
        plain = backbone.encode(
            [r.prompt for r in rows],
            [r.negative for r in rows],
            width=gen.width,
            height=gen.height,
            guidance=sampling.guidance,
        )
        conditioning = MergedConditioning(
            plain,
            self.adapter.fuse_identities(plain, [r.triggered for r in rows], self._references)
            if any(r.triggered for r in rows)
            else None,
            settings.merge_step(gen.steps),
        )
        state = ConsistentAttentionState(
            frames=len(rows),
            num_steps=gen.steps,
            generator=make_generator(rows[0].seed + SAMPLING_SEED_OFFSET, "cpu"),
            mode=mode,  # type: ignore[arg-type]
            bank=self.bank,
            write_character=write_character,
            read_characters=read_characters,
            rates=self._level_rates(settings),
            sampling=settings.attention.sampling,
            gate=settings.attention.gate(),
        )

        def noise(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            # With reference photos, the identity conditions the steps after the merge step (PhotoMaker's).
            return backbone.guided_noise(model_input, t, conditioning.at(i), sampling.guidance)

        denoiser = backbone.denoiser
        blocks = settings.attention.blocks or ()
        installs: list[Any] = [lambda: install_consistent_attention(denoiser, state, blocks=blocks)]
        if settings.freeu:
            installs.insert(0, lambda: freeu(denoiser, FREEU[self.models.family]))
        if self._references:
            installs.append(lambda: self.adapter.lora(True))  # on for every pass (the authors fuse it in)
        drawn = sample(
            backbone,
            plain,
            [make_generator(r.seed, str(self.models.device)) for r in rows],
            sampling,
            noise=noise,
            installs=installs,
            states=[state],
            progress=denoise_progress(context.progress),
            cache=mode != "write",  # the bank is written at every step and layer, never skipped
        )
        return drawn.images, drawn.evaluations

    def _level_rates(self, settings: StoryDiffusionSettings) -> dict[int, float]:
        from storycast.attention.layers import select_layers

        blocks = settings.attention.blocks or ()
        levels = sorted({layer.level for layer in select_layers(self.backbone.denoiser, kind="self", blocks=blocks)})
        return {level: settings.attention.rate(rank) for rank, level in enumerate(levels)}

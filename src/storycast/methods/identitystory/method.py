"""``identitystory``: the story method (identities once per character, then each frame in two stages), on SDXL with
PhotoMaker v1 (the paper) and on FLUX with PuLID-FLUX (our extension, :mod:`.flux`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from storycast.adapters.controlnet import attach_controlnet
from storycast.adapters.photomaker import attach_photomaker
from storycast.errors import StorycastError
from storycast.identity.library import IdentityLibrary, IdentityRecord
from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.identity.pulid_discovery import PulidSpace
from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError, MaskProvider
from storycast.masks.ops import clean_masks, scale_pixels
from storycast.masks.registry import build_provider, choose_provider, fallback_reason, shares_the_gpu
from storycast.methods.base import FrameGroup, FrameResult, ProgressEvent, RunContext, StoryMethod
from storycast.methods.identitystory import flux, injection, prompts
from storycast.methods.identitystory.about import ABOUT
from storycast.methods.identitystory.flux_injection import PulidPasses
from storycast.methods.identitystory.identities import identity_finder
from storycast.methods.identitystory.settings import (
    INJECTION_NEGATIVE_PROMPT,
    RETRY_SEED_OFFSET,
    IdentityStorySettings,
)
from storycast.methods.limits import WITHOUT_REFERENCES, FrameLimit, cut_limits, no_face_limits, trigger_within
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.noise import ControlInput, control_image_tensor, count_evaluations
from storycast.story.model import Character, Story
from storycast.utils.environment import default_cache_dir
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)


@dataclass
class _StageOneAttempt:
    """Stage 1 of a frame with one seed, and the characters' cleaned masks found in its image."""

    stage1: injection.StageOne
    image: Any
    masks: torch.Tensor | None
    seed: int
    attempt: int
    provider: str | None


@dataclass
class _FirstStageOne:
    """Stage 1 of a frame's first attempt, drawn in a batch with other frames (``batch_size``)."""

    stage1: injection.StageOne
    image: Any
    token_maps: dict[str, torch.Tensor]
    evaluations: int


class _Progress:
    """The frame's denoising progress: stage 1's steps, then stage 2's, as one bar."""

    def __init__(self, context: RunContext, total: int):
        self.context = context
        self.total = total
        self.restart()

    def restart(self) -> None:
        self.context.progress(ProgressEvent("denoise", 0, self.total))

    def at(self, completed: int) -> None:
        self.context.progress(ProgressEvent("denoise", completed, self.total))


class IdentityStoryMethod(StoryMethod, about=ABOUT):
    """IdentityStory on SDXL + PhotoMaker v1, and on FLUX + PuLID-FLUX (see ``storycast.methods.identitystory``)."""

    settings: IdentityStorySettings

    def __init__(self, models: Any, settings: IdentityStorySettings | None = None):
        super().__init__(models, settings)
        self._identities: dict[str, IdentityRecord] = {}
        self._providers: dict[str, MaskProvider] = {}
        self._fallback_said = False
        self._pulid: PulidSpace | None = None
        self._face_models: Any = None

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def benchmark_protocol(cls) -> dict[str, Any]:
        # The authors' main.py re-seeds the generator with seed 0 for every prompt of a benchmark story.
        return {"seed": 0, "seed_policy": "same"}

    @classmethod
    def check_benchmark(cls, settings: IdentityStorySettings, family: str | None = None) -> None:
        # The authors' numbers come from GroundingDINO + SAM masks: a silent fall-back would not compare.
        from storycast.errors import SettingsError
        from storycast.masks.registry import detector_available

        masks = settings.masks
        if masks.provider == "auto" and masks.auto_detector and not detector_available(masks):
            raise SettingsError(
                f"the IdentityStory authors' masks come from GroundingDINO + SAM ({masks.detector}, "
                f"{masks.segmenter}), which are not on this machine, and a benchmark compares with their numbers. "
                f"Fix: `storycast download grounding-dino sam`, or --set mask_provider=attention to accept attention-map "
                f"masks (recorded with the results)."
            )

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # The authors' injection: 50 steps, guidance 7 (main.py of Correr-Zhou/IdentityStory). FLUX keeps its own
        # (28 steps, embedded guidance 3.5 for dev): the authors' numbers are SDXL's classifier-free guidance.
        if family == "flux":
            return {}
        return {"steps": 50, "guidance_scale": 7.0}

    @classmethod
    def default_negative_prompt(cls) -> str | None:
        return INJECTION_NEGATIVE_PROMPT

    @classmethod
    def check(cls, story: Story, settings: IdentityStorySettings, family: str | None = None) -> None:
        from storycast.errors import SettingsError

        if family == "flux":
            cls._check_flux(settings)
        steps = story.settings.steps
        if steps < 2:
            raise SettingsError(
                f"identitystory needs at least 2 steps, got {steps}: stage 2 re-denoises steps s..T with 1 <= s < T. "
                f"Fix: --steps 2 or more (the authors use 50)."
            )
        sweet_spot = settings.injection.sweet_spot_step
        if sweet_spot is not None and not 1 <= sweet_spot < steps:
            raise SettingsError(
                f"sweet_spot_step must be between 1 and steps - 1 ({steps - 1}), got {sweet_spot}. Fix: set "
                f"sweet_spot_step lower (the authors' 10 at 50 steps), or draw with more steps."
            )
        settings.discovery.check_rounds()

    @classmethod
    def reads_references(cls, settings: IdentityStorySettings, family: str | None = None) -> bool:
        return True  # a character's identity is made from its photos where it has them, else discovered

    @classmethod
    def frame_limits(
        cls, story: Story, settings: IdentityStorySettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        if family == "flux":
            # PuLID reads an identity from a face (antelopev2 finds it, EVA-CLIP reads it): a non-human character's
            # images hold none, so its identity is discovered from its description, as for a character without
            # images. T5 reads FLUX's prompt (512 tokens) and no PhotoMaker trigger is placed: no prompt limit here.
            return no_face_limits(story, cls.name, WITHOUT_REFERENCES)
        # On SDXL PhotoMaker v1's ID encoder embeds the whole reference image (no face detection), so non-human
        # characters keep their images. What _check_prompts refuses outside a benchmark: a class word beyond the
        # tokens of the frame's prompt or of the character's region prompt.
        if tokenizer is None:
            return []

        def cut(index: int) -> list[str]:
            characters = story.frame_characters(index)
            prompt = prompts.global_prompt(story, index, settings.injection.prompt_style)
            positions = prompts.class_word_positions(tokenizer, prompt, [c.class_word for c in characters])
            return [
                c.id
                for c, position in zip(characters, positions, strict=True)
                if position is None or not trigger_within(tokenizer, prompts.region_prompt(story, c, len(characters)))
            ]

        where = "the frame's prompt or region prompt"
        return cut_limits(story, cls.name, tokenizer.model_max_length, cut, where=where, does="injects an identity")

    @classmethod
    def recorded_settings(cls, settings: IdentityStorySettings, family: str | None = None) -> dict[str, Any]:
        # FLUX's sections (PuLID-FLUX, how it is read) and the sweet spot's fraction came with IdentityStory on FLUX.
        # On SDXL nothing reads the former and the latter is already the recorded sweet_spot_step; left out there, an
        # SDXL run made before them keeps its key and resumes.
        recorded = settings.to_dict()
        if family != "flux":
            for section in ("flux", "pulid"):
                recorded.pop(section, None)
            recorded["injection"] = {k: v for k, v in recorded["injection"].items() if k != "sweet_spot_fraction"}
        return recorded

    @classmethod
    def _check_flux(cls, settings: IdentityStorySettings) -> None:
        """What FLUX cannot run, refused before anything loads."""
        from storycast.errors import SettingsError

        if settings.controlnet.source is not None:
            raise SettingsError(
                "controlnet: IdentityStory's ControlNet is an SDXL one; ControlNets are not supported on FLUX yet. "
                "Fix: remove --set controlnet=..., or draw on SDXL (--preset sdxl)."
            )
        if settings.discovery.freeu:
            raise SettingsError(
                "freeu: FreeU scales a UNet's skip connections, which FLUX has not. Fix: --set freeu=false (or leave it "
                "unset: off on FLUX)."
            )

    @classmethod
    def plan(cls, story: Story, settings: Any) -> list[FrameGroup]:
        # One frame at a time by default (memory stays constant however long the story is); with batch_size B,
        # groups of B frames whose stage 1 is drawn as one batch.
        return super().plan(story, settings)

    # -- run interface ----------------------------------------------------------------------------

    def prepare(self, story: Story, context: RunContext) -> None:
        settings = self.resolved_settings(story)
        self._check_prompts(story, settings)
        appearing = [c for c in story.characters if any(c.id in f.characters for f in story.frames)]
        library = IdentityLibrary((context.cache_dir or default_cache_dir()) / "identities")
        if self.is_flux:
            self._face_models = flux.face_models_folder(settings.flux, self.models, context.cache_dir)
            finder: Any = flux.identity_finder(self, story, library, context)
        else:
            finder = identity_finder(self, story, library, context)
        for character in appearing:
            self._identities[character.id] = finder.identity(character)
        if self.is_flux:
            if settings.flux.offload_encoders and self._pulid is not None:
                self._pulid.offload_encoders()
        elif str(self.models.device).startswith("cuda"):
            self.adapter.park_vision_tower()

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        first = self._batched_stage_one(story, group, context) if self._batchable(story, group) else {}
        return [self.draw_frame(story, index, context, first=first.get(index)) for index in group]

    def _batchable(self, story: Story, group: Sequence[int]) -> bool:
        """Stage 1 of several frames runs as one batch, unless a frame has a control image (a ControlNet
        conditions one image at a time)."""
        frames = [story.frames[i] for i in group]
        return len(group) > 1 and not any(f.control_image is not None for f in frames)

    # -- parts -------------------------------------------------------------------------------------

    @property
    def adapter(self) -> PhotoMakerAdapter:
        """PhotoMaker on the base pipeline, attached on first use (shared with other methods on these models)."""
        return attach_photomaker(self.models, self.settings.photomaker)

    @property
    def is_flux(self) -> bool:
        return self.backbone.name == "flux"

    @property
    def pulid(self) -> PulidSpace:
        """PuLID-FLUX on the FLUX transformer with its face models, made on first use (the weights are shared with
        other methods on these models)."""
        if self._pulid is None:
            self._pulid = flux.pulid_space(self.models, self.settings, self._face_models)
        return self._pulid

    def mask_provider(self, name: str) -> MaskProvider:
        """The mask provider called ``name``, built once per method."""
        if name not in self._providers:
            self._providers[name] = build_provider(
                name,
                self.settings.masks,
                device=self.models.aux_device,
                local_files_only=self.models.spec.local_files_only,
                offload_idle=shares_the_gpu(self.models),
            )
        return self._providers[name]

    @torch.no_grad()
    def draw_frame(
        self, story: Story, index: int, context: RunContext, first: _FirstStageOne | None = None
    ) -> FrameResult:
        """Both stages of one frame:

        1. the frame's numbers, prompt and conditioning;
        2. stage 1 from the prompt alone, and the characters' masks from its image (new seeds, a bounded
           number of times, while a character is not found);
        3. stage 2: re-denoising from the sweet-spot step with each character's identity inside its mask;
        4. decode, keeping stage 1 and the masks as side images.

        ``first``: the frame's first stage 1, already drawn in a batch with other frames.
        """
        settings = self.resolved_settings(story)
        gen = story.settings
        characters = story.frame_characters(index)
        schedule = self._schedule(story, settings)
        negative = story.negative_prompt(index) or INJECTION_NEGATIVE_PROMPT
        prompt = prompts.global_prompt(story, index, settings.injection.prompt_style)
        progress = _Progress(context, gen.steps + (schedule.injection_steps if characters else 0))
        backbone = self.backbone
        with count_evaluations(backbone.denoiser) as counter:
            counter.evaluations += first.evaluations if first is not None else 0
            conditioning = backbone.encode(
                [prompt], [negative], width=gen.width, height=gen.height, guidance=schedule.guidance
            )
            found = self._stage_one_and_masks(
                story, index, prompt, conditioning, schedule, settings, progress, first=first
            )
            if found.masks is None:
                metadata = self._metadata(prompt, negative, [], counter.evaluations, schedule, found)
                return FrameResult(index, found.image, found.seed, metadata=metadata)
            offset = gen.steps - schedule.first_injection_step + 1
            latents = injection.redenoise(
                backbone,
                found.stage1,
                self._identity_passes(story, index, characters, negative, schedule, settings),
                found.masks,
                schedule,
                on_step=lambda i: progress.at(i + offset),
            )
            image = backbone.decode(latents)[0]
        extras = {"stage1": found.image}
        for character, mask in zip(characters, found.masks, strict=True):
            extras[f"mask_{character.id}"] = _mask_image(mask)
        metadata = self._metadata(prompt, negative, characters, counter.evaluations, schedule, found)
        return FrameResult(index, image, found.seed, metadata=metadata, extras=extras)

    # -- steps of a frame --------------------------------------------------------------------------

    def _stage_one_and_masks(
        self,
        story: Story,
        index: int,
        prompt: str,
        conditioning: GuidancePair,
        schedule: injection.InjectionSchedule,
        settings: IdentityStorySettings,
        progress: _Progress,
        first: _FirstStageOne | None = None,
    ) -> _StageOneAttempt:
        """Stage 1, then the characters' cleaned masks from its image; on a miss, again with the authors' next
        seed, at most ``mask_retries`` more times. ``first``: attempt 0's stage 1, drawn in a batch."""
        backbone = self.backbone
        frame = story.frames[index]
        characters = story.frame_characters(index)
        name = choose_provider(settings.masks, frame_has_user_masks=bool(frame.masks)) if characters else None
        fallback = fallback_reason(settings.masks, name) if name else None
        if fallback and not self._fallback_said:
            logger.warning("masks: %s", fallback)  # once per run: every frame falls back the same way
            self._fallback_said = True
        provider = self.mask_provider(name) if name is not None else None
        control = self._control(frame, story, settings)
        failures: list[str] = []
        for attempt in range(settings.masks.retries + 1):
            seed = story.frame_seed(index) + attempt * RETRY_SEED_OFFSET
            if attempt == 0 and first is not None:
                stage1, image, token_maps = first.stage1, first.image, first.token_maps
                progress.at(schedule.num_steps)
            else:
                initial = self._initial_latents(story, seed)
                rows = [(prompt, characters)]
                with _recording_maps(backbone, rows, name == "attention", initial) as maps:
                    stage1 = injection.stage_one(
                        backbone,
                        conditioning,
                        initial,
                        schedule,
                        on_step=lambda i: progress.at(i + 1),
                        control=control,
                    )
                    token_maps = maps.character_maps(0) if maps is not None else {}
                image = backbone.decode(stage1.latents)[0]
            if provider is None:
                return _StageOneAttempt(stage1, image, None, seed, attempt, None)
            try:
                masks = self._clean_masks(provider, image, index, characters, token_maps, frame.masks, story, settings)
                return _StageOneAttempt(stage1, image, masks, seed, attempt, provider.name)
            except MaskNotFoundError as err:
                if provider.name == "user":
                    raise  # the user's files do not change with the seed
                failures.append(str(err).split(" Fix:")[0])
                if attempt < settings.masks.retries:
                    logger.warning("%s; retrying with seed %d", failures[-1], seed + RETRY_SEED_OFFSET)
                progress.restart()
        other = "grounded-sam" if name == "attention" else "attention"
        raise MaskNotFoundError(
            f"frame {index + 1}: could not locate every character after {settings.masks.retries + 1} attempt(s) "
            f"(seeds {story.frame_seed(index)} + k*{RETRY_SEED_OFFSET}, mask provider '{name}'). Last problem: "
            f"{failures[-1]} Fix: give the frame mask files (frames[{index}].masks), raise mask_retries, or try "
            f"mask_provider={other}.",
            frame_index=index,
        )

    def _schedule(self, story: Story, settings: IdentityStorySettings) -> injection.InjectionSchedule:
        gen = story.settings
        return injection.InjectionSchedule(
            num_steps=gen.steps,
            sweet_spot_step=settings.injection.sweet_spot_step,
            guidance_scale=gen.guidance_scale,
            max_dilation=scale_pixels(settings.injection.max_dilation, (gen.height, gen.width)),
            identity_strength=settings.injection.identity_strength,
            fuse_mode=settings.injection.fuse_mode,
            # FLUX: its own guidance (dev's embedded value, true CFG where set); SDXL: classifier-free at the scale.
            family_guidance=self.sampling(story).guidance if self.is_flux else None,
        )

    @torch.no_grad()
    def _batched_stage_one(self, story: Story, group: Sequence[int], context: RunContext) -> dict[int, _FirstStageOne]:
        """The first stage 1 of every frame of ``group`` as one batch (each row from its frame's own seed and
        prompt, as one by one); masks, retries and stage 2 then go frame by frame."""
        settings = self.resolved_settings(story)
        gen = story.settings
        backbone = self.backbone
        schedule = self._schedule(story, settings)
        frame_prompts = [prompts.global_prompt(story, i, settings.injection.prompt_style) for i in group]
        negatives = [story.negative_prompt(i) or INJECTION_NEGATIVE_PROMPT for i in group]
        conditioning = backbone.encode(
            frame_prompts, negatives, width=gen.width, height=gen.height, guidance=schedule.guidance
        )
        initial = torch.cat([self._initial_latents(story, story.frame_seed(i)) for i in group])
        rows = [(prompt, story.frame_characters(i)) for prompt, i in zip(frame_prompts, group, strict=True)]
        attention = any(
            characters
            and choose_provider(settings.masks, frame_has_user_masks=bool(story.frames[i].masks)) == "attention"
            for (_, characters), i in zip(rows, group, strict=True)
        )
        progress = _Progress(context, gen.steps)
        with (
            count_evaluations(backbone.denoiser) as counter,
            _recording_maps(backbone, rows, attention, initial) as maps,
        ):
            batch = injection.stage_one(
                backbone, conditioning, initial, schedule, on_step=lambda i: progress.at(i + 1)
            )
        images = backbone.decode(batch.latents)
        return {
            index: _FirstStageOne(
                injection.StageOne(
                    batch.latents[k : k + 1],
                    batch.start_latents[k : k + 1],
                    [noise[k : k + 1] for noise in batch.guided],
                ),
                images[k],
                maps.character_maps(k) if maps is not None else {},
                counter.evaluations // len(group),
            )
            for k, index in enumerate(group)
        }

    def _initial_latents(self, story: Story, seed: int) -> torch.Tensor:
        backbone, gen = self.backbone, story.settings
        return backbone.initial_latents(
            backbone.scheduler(gen.steps, width=gen.width, height=gen.height),
            [make_generator(seed, str(self.models.device))],
            width=gen.width,
            height=gen.height,
        )

    def _control(self, frame: Any, story: Story, settings: IdentityStorySettings) -> ControlInput | None:
        """The frame's ControlNet input, when the method has a ControlNet and the frame a control image."""
        if settings.controlnet.source is None or frame.control_image is None:
            return None
        from PIL import Image

        attached = attach_controlnet(self.models, settings.controlnet.source)
        gen = story.settings
        with Image.open(frame.control_image) as image:
            tensor = control_image_tensor(
                image, gen.width, gen.height, device=self.models.device, dtype=self.backbone.dtype
            )
        return ControlInput(attached.model, tensor, settings.controlnet.scale)

    def _identity_passes(
        self,
        story: Story,
        index: int,
        characters: Sequence[Character],
        negative: str,
        schedule: injection.InjectionSchedule,
        settings: IdentityStorySettings,
    ) -> injection.IdentityPasses:
        """The characters' identity passes of stage 2: PuLID-FLUX's on FLUX, PhotoMaker's on SDXL."""
        if self.is_flux:
            regions = flux.regions(self.pulid, story, index, characters, self._identities, negative, schedule.guidance)
            return PulidPasses(self.pulid, regions, schedule, settings.flux.id_weight)
        regions_ = self._regions(story, index, characters, negative)
        return injection.PhotoMakerPasses(
            self.backbone, self.adapter, regions_, schedule, settings.injection.fuse_lora
        )

    def _regions(
        self, story: Story, index: int, characters: Sequence[Character], negative: str
    ) -> list[injection.RegionInput]:
        region_prompts = [prompts.region_prompt(story, c, len(characters)) for c in characters]
        gen = story.settings
        conditioning, positions = self.adapter.encode(
            region_prompts, [negative] * len(characters), width=gen.width, height=gen.height
        )
        return [
            injection.RegionInput(
                character_id=character.id,
                conditioning=conditioning.rows(row),
                class_position=positions[row],
                identity=self._identities[character.id].embedding.to(self.models.device),
            )
            for row, character in enumerate(characters)
        ]

    def _clean_masks(
        self,
        provider: MaskProvider,
        image: Any,
        index: int,
        characters: Sequence[Character],
        token_maps: dict[str, torch.Tensor],
        user_masks: Any,
        story: Story,
        settings: IdentityStorySettings,
    ) -> torch.Tensor:
        gen = story.settings
        queries = [CharacterQuery(c.id, c.class_word) for c in characters]
        raw = provider(MaskInputs(image, queries, index, token_maps, user_masks))
        stacked = torch.stack([raw[c.id].bool().cpu() for c in characters])
        cleaned = clean_masks(stacked, scale_pixels(settings.masks.cleanup_dilation, (gen.height, gen.width)))
        for character, mask in zip(characters, cleaned, strict=True):
            if not bool(mask.any()):
                raise MaskNotFoundError(
                    f"frame {index + 1}: '{character.id}' has no region left once the masks are made disjoint",
                    frame_index=index,
                    character_id=character.id,
                )
        return cleaned

    def _check_prompts(self, story: Story, settings: IdentityStorySettings) -> None:
        """Every class word must occur in its frame's prompt and region prompt (the authors refuse the frame
        otherwise); checked for the whole story before anything is drawn."""
        if self.is_flux:
            self._refuse(flux.prompt_problems(self.backbone, story, settings.injection.prompt_style))
            return
        tokenizer = self.backbone.tokenizer
        problems = []
        for index in range(len(story)):
            characters = story.frame_characters(index)
            if not characters:
                continue
            prompt = prompts.global_prompt(story, index, settings.injection.prompt_style)
            words = [c.class_word for c in characters]
            for character, position in zip(
                characters, prompts.class_word_positions(tokenizer, prompt, words), strict=True
            ):
                if position is None:
                    problems.append(
                        f"frames[{index}]: the class word '{character.class_word}' of '{character.id}' is not in the "
                        f"frame's prompt (within the tokenizer's 77 tokens): '{prompt}'"
                    )
            for character in characters:
                region = prompts.region_prompt(story, character, len(characters))
                try:
                    self.adapter.class_token_position(region)
                except ValueError:
                    problems.append(
                        f"frames[{index}]: the region prompt of '{character.id}' is too long: its class word "
                        f"'{character.class_word}' must come within the tokenizer's 77 tokens: '{region}'"
                    )
        self._refuse(problems)

    @staticmethod
    def _refuse(problems: Sequence[str]) -> None:
        if problems:
            raise StorycastError(
                "identitystory cannot draw this story:\n  " + "\n  ".join(problems) + "\nFix: put each character's "
                "class word in the frames where it appears (write {id} in the text), and keep prompts short."
            )

    def _metadata(
        self,
        prompt: str,
        negative: str,
        characters: Sequence[Character],
        evaluations: int,
        schedule: injection.InjectionSchedule,
        found: _StageOneAttempt,
    ) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "negative_prompt": negative,
            "characters": {c.id: self._identities[c.id].key for c in characters},
            "denoiser_evaluations": evaluations,
            "sweet_spot_step": schedule.sweet_spot_step,
            "seed_used": found.seed,
            "mask_attempts": found.attempt + 1,
            "mask_provider": found.provider,
            # 'auto' fell back from the authors' detector to attention maps (said once, when the run began).
            "mask_fallback": found.provider == "attention" and self._fallback_said,
        }


class _MapRecorder:
    """Records the class words' attention maps during stage 1 (for the attention mask provider)."""

    def __init__(self, store: Any, characters: Sequence[Sequence[Character]]):
        self.store = store
        self.characters = characters

    def character_maps(self, row: int) -> dict[str, torch.Tensor]:
        """The maps of row ``row``'s characters (one row per frame of the batch)."""
        maps = self.store.mean_maps()[row]
        return {c.id: maps[k] for k, c in enumerate(self.characters[row])}


@contextlib.contextmanager
def _recording_maps(
    backbone: Any,
    rows: Sequence[tuple[str, Sequence[Character]]],
    enabled: bool,
    latents: torch.Tensor,
) -> Iterator[_MapRecorder | None]:
    """Record the class words' attention maps during stage 1 when the attention mask provider needs them;
    ``rows``: each frame of the batch's prompt and characters."""
    if not (enabled and any(characters for _, characters in rows)):
        yield None
        return
    from storycast.attention.layers import select_layers
    from storycast.attention.token_maps import TokenMapStore, record_token_maps

    limit = getattr(backbone, "max_sequence_length", None)  # FLUX: the T5 tokens it reads
    positions = [
        [
            p or 0
            for p in prompts.class_word_positions(
                backbone.tokenizer, prompt, [c.class_word for c in characters], limit
            )
        ]
        for prompt, characters in rows
    ]
    width = max([len(row) for row in positions] + [1])
    indices = [row + [0] * (width - len(row)) for row in positions]  # column 0 (start token) pads unused slots
    latent_size = (latents.shape[-2], latents.shape[-1])
    half = (latent_size[0] // 2, latent_size[1] // 2)
    store = TokenMapStore(indices, size=half, rows=len(rows), latent_size=latent_size)
    if backbone.name == "flux":
        # FLUX: the text-to-image part of every joint-attention layer, double- and single-stream (ours: the paper has
        # no FLUX); a single-stream layer's sequence starts with the T5 tokens, padded to max_sequence_length.
        from storycast.attention.state import AttentionState
        from storycast.attention.token_maps import record_joint_token_maps

        state = AttentionState(guidance=False, frames=len(rows), text_tokens=backbone.max_sequence_length)
        with record_joint_token_maps(backbone.denoiser, store, ("double", "single"), state=state):
            yield _MapRecorder(store, [characters for _, characters in rows])
        return
    # Every cross-attention level but the full-resolution one, whose maps are the noisiest.
    unet = backbone.denoiser
    levels = sorted({layer.level for layer in select_layers(unet, kind="cross")} - {0}) or [0]
    with record_token_maps(unet, store, levels):
        yield _MapRecorder(store, [characters for _, characters in rows])


def _mask_image(mask: torch.Tensor) -> Any:
    from PIL import Image

    return Image.fromarray((mask.cpu().numpy().astype("uint8") * 255), mode="L")

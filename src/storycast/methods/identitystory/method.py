"""``identitystory``: the story method (identities once per character, then each frame in two stages)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from storycast.errors import SettingsError, StorycastError
from storycast.identity.library import IdentityLibrary, IdentityRecord, identity_key
from storycast.identity.photomaker import PhotoMakerConfig
from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError, MaskProvider
from storycast.masks.ops import clean_masks, scale_pixels
from storycast.methods.base import FrameGroup, FrameResult, ProgressEvent, RunContext, StoryMethod
from storycast.methods.identitystory import discovery, injection, prompts
from storycast.methods.identitystory.settings import (
    INJECTION_NEGATIVE_PROMPT,
    RETRY_SEED_OFFSET,
    TINY_CANDIDATES,
    TINY_SVD_RANK,
    IdentityStorySettings,
    scaled_step,
)
from storycast.models.loading import active_loras
from storycast.pipelines.conditioning import prompt_encoder
from storycast.pipelines.decode import decode_latents
from storycast.pipelines.denoise import initial_latents, latent_shape, make_scheduler
from storycast.pipelines.noise import ControlInput, control_image_tensor, count_unet_evaluations
from storycast.story.model import Character, Story
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)


class IdentityStoryMethod(StoryMethod):
    """IdentityStory on SDXL + PhotoMaker v1 (see ``storycast.methods.identitystory``)."""

    name = "identitystory"
    settings_class = IdentityStorySettings
    families = ("sdxl",)
    summary = "IdentityStory (AAAI 2026): identity discovery + re-denoising identity injection (SDXL + PhotoMaker)"

    settings: IdentityStorySettings

    def __init__(self, models: Any, settings: IdentityStorySettings | None = None):
        super().__init__(models, settings)
        self._adapter: PhotoMakerAdapter | None = None
        self._identities: dict[str, IdentityRecord] = {}
        self._providers: dict[str, MaskProvider] = {}

    # -- run interface ---------------------------------------------------------------------------

    @classmethod
    def generation_defaults(cls) -> dict[str, Any]:
        # The authors' injection: 50 steps, guidance 7 (main.py of Correr-Zhou/IdentityStory).
        return {"steps": 50, "guidance_scale": 7.0}

    @classmethod
    def default_negative_prompt(cls) -> str | None:
        return INJECTION_NEGATIVE_PROMPT

    @classmethod
    def plan(cls, story: Story, settings: Any) -> list[FrameGroup]:
        # Frames are drawn one by one: memory stays constant however long the story is.
        return [FrameGroup((i,)) for i in range(len(story))]

    def prepare(self, story: Story, context: RunContext) -> None:
        adapter = self.adapter
        self._check_prompts(story)
        appearing = [c for c in story.characters if any(c.id in f.characters for f in story.frames)]
        library = IdentityLibrary((context.cache_dir or _default_cache()) / "identities")
        for character in appearing:
            self._identities[character.id] = self.identity(character, story, library, context)
        if str(self.models.device).startswith("cuda"):
            adapter.park_vision_tower()

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        return [self.draw_frame(story, index, context) for index in group]

    # -- parts -------------------------------------------------------------------------------------

    @property
    def adapter(self) -> PhotoMakerAdapter:
        """PhotoMaker on the base pipeline, loaded on first use."""
        if self._adapter is None:
            key = ("photomaker", f"{self.settings.photomaker}:{self.settings.photomaker_file}")
            if key not in self.models.attachments:
                self.models.attachments[key] = self._load_adapter()
            self._adapter = self.models.attachments[key]
        return self._adapter

    def _load_adapter(self) -> PhotoMakerAdapter:
        pipe = self.models.pipeline
        source = self.settings.photomaker
        if source == "auto" and (self.models.is_tiny or self.models.info.get("random")):
            from storycast.models.tiny import tiny_photomaker_weights

            # Random weights for random models: the tiny encoder, or the full-size one for the full-size random
            # presets that benchmarks measure (LoRA rank 64: the official file's size fits that rank).
            config = PhotoMakerConfig.tiny() if self.models.is_tiny else PhotoMakerConfig.vit_l14()
            rank = 4 if self.models.is_tiny else 64
            weights = tiny_photomaker_weights(pipe.unet, seed=self.models.spec.seed, rank=rank, config=config)
            return PhotoMakerAdapter.load(pipe, weights, config=config, base_adapters=active_loras(self.models))
        return PhotoMakerAdapter.load(
            pipe,
            "TencentARC/PhotoMaker" if source == "auto" else source,
            weight_name=self.settings.photomaker_file,
            local_files_only=self.models.spec.local_files_only,
            base_adapters=active_loras(self.models),
        )

    def discovery_budget(self, story: Story) -> discovery.DiscoveryBudget:
        settings = self.settings
        tiny = self.models.is_tiny
        steps = settings.discovery_steps or (story.settings.steps if tiny else 50)
        return discovery.DiscoveryBudget(
            candidates=settings.discovery_candidates or (TINY_CANDIDATES if tiny else 64),
            batch_size=settings.discovery_batch_size,
            steps=steps,
            guidance_scale=settings.discovery_guidance_scale,
            loops=settings.discovery_loops,
            start_merge_step=scaled_step(settings.discovery_start_merge_step, steps),
            svd_rank=settings.svd_rank or (TINY_SVD_RANK if tiny else 10),
            svd_keep_ratio=settings.svd_keep_ratio,
            svd_iterations=settings.svd_iterations,
            preview_images=settings.preview_images,
            negative_prompt=settings.discovery_negative_prompt,
            freeu=settings.freeu,
            seed=settings.discovery_seed,
            width=story.settings.width,
            height=story.settings.height,
        )

    def identity(
        self, character: Character, story: Story, library: IdentityLibrary, context: RunContext
    ) -> IdentityRecord:
        """The character's identity: from its photos, or from the library, or discovered and stored."""
        model = {
            k: self.models.info.get(k) for k in ("source", "repo_id", "revision", "commit", "path", "seed", "dtype")
        }
        adapter_id = {"photomaker": self.settings.photomaker, "file": self.settings.photomaker_file}
        if character.references:
            from PIL import Image

            from storycast.utils.io import sha256_file

            key = identity_key(
                {"photos": [sha256_file(p) for p in character.references], "adapter": adapter_id, "model": model}
            )
            record = library.get(key)
            if record is None:
                photos = [Image.open(p).convert("RGB") for p in character.references]
                embedding = discovery.identity_from_photos(self.adapter, photos)
                info = {
                    "character": character.id,
                    "source": "photos",
                    "photos": [str(p) for p in character.references],
                }
                record = library.put(key, embedding, info)
            return record

        budget = self.discovery_budget(story)
        search = prompts.search_prompt(character)
        key = identity_key({"prompt": search, "model": model, "adapter": adapter_id, "budget": budget.__dict__})
        record = library.get(key)
        if record is not None:
            logger.info("identity of '%s' found in the library (%s)", character.id, key)
            return record
        total = budget.candidates * budget.loops
        done = 0
        label = f"identity of {character.display_name}"
        context.progress(ProgressEvent("discovery", 0, total, label))

        def on_image() -> None:
            nonlocal done
            done += 1
            context.progress(ProgressEvent("discovery", min(done, total), total, label))

        logger.info("discovering the identity of '%s' (%d candidates)", character.id, total)
        started = time.perf_counter()
        with count_unet_evaluations(self.models.pipeline.unet) as counter:
            result = discovery.discover_identity(self.adapter, search, budget, on_image)
        info = {
            "character": character.id,
            "source": "discovered",
            "prompt": search,
            "budget": budget.__dict__,
            "kept": result.kept,
            "unet_evaluations": counter.evaluations,
            "seconds": round(time.perf_counter() - started, 2),
        }
        return library.put(key, result.identity, info, preview=_sheet(result.previews))

    def mask_provider(self, frame_has_user_masks: bool) -> MaskProvider:
        choice = self.settings.mask_provider
        if choice == "auto":
            if frame_has_user_masks:
                choice = "user"
            elif not self.models.is_tiny and _grounded_sam_available(self.settings):
                choice = "grounded-sam"
            else:
                choice = "attention"
        if choice not in self._providers:
            self._providers[choice] = _build_provider(choice, self.settings, self.models)
        return self._providers[choice]

    @torch.no_grad()
    def draw_frame(self, story: Story, index: int, context: RunContext) -> FrameResult:
        """Both stages of one frame, with bounded retries when a character cannot be located."""
        pipe = self.models.pipeline
        settings = self.settings
        gen = story.settings
        characters = story.frame_characters(index)
        frame = story.frames[index]
        schedule = injection.InjectionSchedule(
            num_steps=gen.steps,
            sweet_spot_step=scaled_step(settings.sweet_spot_step, gen.steps),
            guidance_scale=gen.guidance_scale,
            max_dilation=scale_pixels(settings.max_dilation, (gen.height, gen.width)),
            identity_strength=settings.identity_strength,
            fuse_mode=settings.fuse_mode,
        )
        negative = story.negative_prompt(index) or INJECTION_NEGATIVE_PROMPT
        prompt = prompts.global_prompt(story, index, settings.prompt_style)
        unet = pipe.unet
        device, dtype = self.models.device, unet.dtype
        shape = latent_shape(pipe, gen.height, gen.width)
        total_steps = gen.steps + (schedule.injection_steps if characters else 0)
        context.progress(ProgressEvent("denoise", 0, total_steps))
        provider = self.mask_provider(bool(frame.masks)) if characters else None
        needs_maps = provider is not None and provider.name == "attention"

        control = self._control(frame, gen)
        with count_unet_evaluations(unet) as counter:
            conditioning = prompt_encoder(pipe, self.models.family, device)(
                [prompt], [negative], width=gen.width, height=gen.height
            )
            seed = story.frame_seed(index)
            failures: list[str] = []
            for attempt in range(settings.mask_retries + 1):
                seed = story.frame_seed(index) + attempt * RETRY_SEED_OFFSET
                initial = initial_latents(
                    make_scheduler(pipe.scheduler, gen.steps, device),
                    shape,
                    [make_generator(seed, str(device))],
                    dtype=dtype,
                    device=device,
                )
                token_maps: dict[str, torch.Tensor] = {}
                with _recording_maps(unet, pipe.tokenizer, prompt, characters, needs_maps, shape) as recorder:
                    stage1 = injection.stage_one(
                        pipe,
                        conditioning,
                        initial,
                        schedule,
                        on_step=lambda i: context.progress(ProgressEvent("denoise", i + 1, total_steps)),
                        control=control,
                    )
                    if recorder is not None:
                        token_maps = recorder.character_maps()
                stage1_image = decode_latents(pipe, stage1.latents)[0]
                if not characters:
                    return FrameResult(
                        index,
                        stage1_image,
                        seed,
                        metadata=self._metadata(
                            prompt, negative, [], counter.evaluations, schedule, seed, attempt, None
                        ),
                    )
                assert provider is not None
                try:
                    masks = self._clean_masks(provider, stage1_image, index, characters, token_maps, frame.masks, gen)
                    break
                except MaskNotFoundError as err:
                    if provider.name == "user":
                        raise  # the user's files do not change with the seed
                    failures.append(str(err))
                    if attempt < settings.mask_retries:
                        logger.warning("%s; retrying with seed %d", err, seed + RETRY_SEED_OFFSET)
                    context.progress(ProgressEvent("denoise", 0, total_steps))
            else:
                raise MaskNotFoundError(
                    f"frame {index + 1}: could not locate every character after {settings.mask_retries + 1} "
                    f"attempt(s) (seeds {story.frame_seed(index)} + k*{RETRY_SEED_OFFSET}). Last problem: "
                    f"{failures[-1]} Fix: raise mask_retries, give the frame user masks (frames[{index}].masks), "
                    f"or try mask_provider=attention/grounded-sam.",
                    frame_index=index,
                )

            regions = self._regions(story, index, characters, negative)
            latents = injection.stage_two(
                pipe,
                self.adapter,
                stage1,
                regions,
                masks,
                schedule,
                on_step=lambda i: context.progress(
                    ProgressEvent("denoise", i + 1 + gen.steps - schedule.first_injection_step, total_steps)
                ),
            )
            image = decode_latents(pipe, latents)[0]
        extras = {"stage1": stage1_image}
        for character, mask in zip(characters, masks, strict=True):
            extras[f"mask_{character.id}"] = _mask_image(mask)
        metadata = self._metadata(
            prompt, negative, characters, counter.evaluations, schedule, seed, attempt, provider.name
        )
        return FrameResult(index, image, seed, metadata=metadata, extras=extras)

    # -- helpers -----------------------------------------------------------------------------------

    def _control(self, frame: Any, gen: Any) -> ControlInput | None:
        """The frame's ControlNet input, when the method has a ControlNet and the frame a control image."""
        if self.settings.controlnet is None or frame.control_image is None:
            return None
        from PIL import Image

        unet = self.models.pipeline.unet
        key = ("controlnet", self.settings.controlnet)
        if key not in self.models.attachments:
            self.models.attachments[key] = _load_controlnet(self.settings.controlnet, self.models)
        with Image.open(frame.control_image) as image:
            tensor = control_image_tensor(image, gen.width, gen.height, device=unet.device, dtype=unet.dtype)
        return ControlInput(self.models.attachments[key], tensor, self.settings.controlnet_scale)

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
                identity=self._identities[character.id].embedding.to(self.models.pipeline.unet.device),
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
        gen: Any,
    ) -> torch.Tensor:
        queries = [CharacterQuery(c.id, c.class_word) for c in characters]
        raw = provider(MaskInputs(image, queries, index, token_maps, user_masks))
        stacked = torch.stack([raw[c.id].bool().cpu() for c in characters])
        cleaned = clean_masks(stacked, scale_pixels(self.settings.cleanup_dilation, (gen.height, gen.width)))
        for character, mask in zip(characters, cleaned, strict=True):
            if not bool(mask.any()):
                raise MaskNotFoundError(
                    f"frame {index + 1}: '{character.id}' has no region left once the masks are made disjoint",
                    frame_index=index,
                    character_id=character.id,
                )
        return cleaned

    def _check_prompts(self, story: Story) -> None:
        """Every class word must occur in its frame's prompt and region prompt (the authors refuse the frame
        otherwise); checked for the whole story before anything is drawn."""
        tokenizer = self.adapter.pipe.tokenizer
        problems = []
        for index in range(len(story)):
            characters = story.frame_characters(index)
            if not characters:
                continue
            prompt = prompts.global_prompt(story, index, self.settings.prompt_style)
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
        seed: int,
        attempt: int,
        provider: str | None,
    ) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "negative_prompt": negative,
            "characters": {c.id: self._identities[c.id].key for c in characters},
            "unet_evaluations": evaluations,
            "sweet_spot_step": schedule.sweet_spot_step,
            "seed_used": seed,
            "mask_attempts": attempt + 1,
            "mask_provider": provider,
        }


class _MapRecorder:
    """Records the class words' attention maps during stage 1 (for the attention mask provider)."""

    def __init__(self, store: Any, characters: Sequence[Character]):
        self.store = store
        self.characters = characters

    def character_maps(self) -> dict[str, torch.Tensor]:
        maps = self.store.mean_maps()[0]
        return {c.id: maps[k] for k, c in enumerate(self.characters)}


@contextlib.contextmanager
def _recording_maps(
    unet: Any, tokenizer: Any, prompt: str, characters: Sequence[Character], enabled: bool, latent_shape: tuple
) -> Iterator[_MapRecorder | None]:
    """Record the class words' attention maps during stage 1 when the attention mask provider needs them."""
    if not (enabled and characters):
        yield None
        return
    from storycast.attention.token_maps import TokenMapStore, record_token_maps

    positions = prompts.class_word_positions(tokenizer, prompt, [c.class_word for c in characters])
    latent_size = (latent_shape[-2], latent_shape[-1])
    half = (latent_size[0] // 2, latent_size[1] // 2)
    store = TokenMapStore([[p or 0 for p in positions]], size=half, rows=1, latent_size=latent_size)
    levels = sorted({layer.level for layer in _cross_layers(unet)} - {0}) or [0]
    with record_token_maps(unet, store, levels):
        yield _MapRecorder(store, characters)


def _cross_layers(unet: Any) -> list[Any]:
    from storycast.attention.layers import select_layers

    return select_layers(unet, kind="cross")


def _load_controlnet(source: str, models: Any) -> Any:
    """A ControlNet from a Hub id or folder; "tiny" makes a random one from the tiny UNet (tests, demos)."""
    from diffusers import ControlNetModel

    unet = models.pipeline.unet
    if source == "tiny":
        from storycast.models.tiny import _seeded, tiny_sdxl_components

        # From a fresh tiny UNet: the live one may carry LoRA layers that from_unet cannot copy.
        with _seeded(models.spec.seed + 20):
            fresh_unet = tiny_sdxl_components(models.spec.seed)["unet"]
            controlnet = ControlNetModel.from_unet(fresh_unet, conditioning_channels=3)
            # from_unet zero-initialises the output convolutions (a fresh ControlNet changes nothing);
            # random ones make the tiny ControlNet's effect visible, as a trained one's is.
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                torch.nn.init.normal_(conv.weight, std=0.05)
    else:
        from storycast.models.checkpoints import load_checkpoint

        controlnet = load_checkpoint(
            lambda path, offline: ControlNetModel.from_pretrained(path, local_files_only=offline),
            source,
            what="ControlNet",
            point_at="set the controlnet setting (--set controlnet=...) to",
            local_files_only=models.spec.local_files_only,
        )
    return controlnet.to(device=unet.device, dtype=unet.dtype).eval()


def _grounded_sam_available(settings: IdentityStorySettings) -> bool:
    """True when the detector and segmenter are local folders or already in the Hugging Face cache."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    for source in (settings.detector, settings.segmenter):
        if Path(source).is_dir():
            continue
        try:
            cached = try_to_load_from_cache(source, "config.json")
        except ValueError:
            return False
        if not isinstance(cached, str):
            return False
    return True


def _build_provider(choice: str, settings: IdentityStorySettings, models: Any) -> MaskProvider:
    if choice == "attention":
        from storycast.masks.attention import AttentionMasks

        return AttentionMasks()
    if choice == "user":
        from storycast.masks.user import UserMasks

        return UserMasks()
    if choice == "grounded-sam":
        from storycast.masks.grounded_sam import GroundedSamMasks, GroundedSamSettings

        return GroundedSamMasks(
            GroundedSamSettings(
                detector=settings.detector,
                segmenter=settings.segmenter,
                box_threshold=settings.box_threshold,
                text_threshold=settings.text_threshold,
                device=models.device,
                local_files_only=models.spec.local_files_only,
            )
        )
    raise SettingsError(f"mask_provider '{choice}' is not known. Fix: use auto, grounded-sam, attention or user.")


def _mask_image(mask: torch.Tensor) -> Any:
    from PIL import Image

    return Image.fromarray((mask.cpu().numpy().astype("uint8") * 255), mode="L")


def _sheet(images: list[Any]) -> Any:
    from PIL import Image

    if not images:
        return None
    width, height = images[0].size
    sheet = Image.new("RGB", (width * len(images), height))
    for position, image in enumerate(images):
        sheet.paste(image, (position * width, 0))
    return sheet


def _default_cache() -> Any:
    from storycast.runs.runner import default_cache_dir

    return default_cache_dir()

"""``photomaker``: PhotoMaker v1 alone, frame by frame (the baseline of IdentityStory's comparison).

Each character's identity is the mean ID embedding of its reference photos, or, for a character without photos,
the identity IdentityStory's discovery finds from its description (shared through the identity library, so a
character discovered by an ``identitystory`` run is reused). Every frame is then drawn as the PhotoMaker
pipeline draws (TencentARC/PhotoMaker ``pipeline.py``): the text-only prompt (trigger removed) up to the merge
step, ``int(style_strength x T)`` capped at 30, then the prompt with each named character's identity fused into
its class token; pooled embeddings stay text-only; the LoRA is on throughout. 2T UNet evaluations per frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from storycast.errors import SettingsError, StoryError
from storycast.methods.base import FrameResult, ProgressEvent, RunContext, StoryMethod
from storycast.methods.identitystory.settings import DiscoverySettings
from storycast.methods.settings import MethodSettings, check_range, setting
from storycast.models.adapters import PhotoMakerSettings, attach_photomaker
from storycast.pipelines.conditioning import prompt_encoder
from storycast.pipelines.decode import decode_latents
from storycast.pipelines.denoise import denoise, initial_latents, latent_shape, make_scheduler
from storycast.pipelines.noise import count_unet_evaluations, guided_noise
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

MERGE_STEP_CAP = 30
"""PhotoMaker's pipeline never starts the merge later than step 30."""


@dataclass(frozen=True)
class PhotoMakerMethodSettings(MethodSettings):
    """Settings of the PhotoMaker baseline."""

    identity: Literal["auto", "photos", "discovered"] = setting(
        "auto",
        "Where identities come from: 'photos' (each character's reference photos, required), 'discovered' "
        "(IdentityStory's discovery from the description, through the identity library), 'auto' (photos when a "
        "character has them, else discovered).",
    )
    style_strength: float = setting(
        0.2,
        "Share of the steps drawn from the text alone before the identity is merged (the PhotoMaker demos' "
        "style_strength_ratio 20 %; the merge step is capped at 30, as their pipeline does).",
    )
    scheduler: Literal["model", "ddim", "euler", "euler-ancestral", "dpm++", "pndm"] = setting(
        "model", "Sampler: the model's own (Euler on SDXL base, the PhotoMaker demos')."
    )
    photomaker: PhotoMakerSettings = setting(factory=PhotoMakerSettings, help="PhotoMaker v1 weights.")
    discovery: DiscoverySettings = setting(
        factory=DiscoverySettings, help="IdentityStory's discovery, for characters without photos."
    )

    def validate(self) -> None:
        check_range("style_strength", self.style_strength, 0, 1)

    def merge_step(self, steps: int) -> int:
        return min(int(self.style_strength * steps), MERGE_STEP_CAP)


class PhotoMakerMethod(StoryMethod):
    """PhotoMaker v1 on SDXL, each frame on its own (see the module docstring)."""

    name = "photomaker"
    settings_class = PhotoMakerMethodSettings
    families = ("sdxl",)
    summary = "PhotoMaker v1 (CVPR 2024) alone: identities from photos or discovered, merged from the demos' step"

    settings: PhotoMakerMethodSettings

    def __init__(self, models: Any, settings: PhotoMakerMethodSettings | None = None):
        super().__init__(models, settings)
        self._identities: dict[str, torch.Tensor] = {}
        self._sources: dict[str, str] = {}

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # The PhotoMaker demos: 50 steps, guidance 5.
        return {"steps": 50, "guidance_scale": 5.0}

    @classmethod
    def check(cls, story: Story, settings: PhotoMakerMethodSettings, family: str | None = None) -> None:
        if settings.identity == "photos":
            numbers = {c.id: n for n, c in enumerate(story.characters)}
            missing = [c for c in story.appearing_characters() if not c.references]
            if missing:
                from storycast.errors import Problem

                raise StoryError(
                    [
                        Problem(
                            f"characters[{numbers[c.id]}].references",
                            f"identity=photos needs reference photos, but '{c.id}' has none",
                            "add photos, or --set identity=auto (discovered from the description)",
                        )
                        for c in missing
                    ],
                    story.source,
                )
        if settings.photomaker.file != "photomaker-v1.bin" and "v2" in settings.photomaker.file:
            raise SettingsError(
                f"photomaker_file={settings.photomaker.file}: only PhotoMaker v1 is supported so far. Fix: "
                f"--set photomaker_file=photomaker-v1.bin."
            )

    # -- run interface ----------------------------------------------------------------------------

    @property
    def adapter(self) -> Any:
        return attach_photomaker(self.models, self.settings.photomaker)

    def prepare(self, story: Story, context: RunContext) -> None:
        settings = self.resolved_settings(story)
        discoverer = None
        for character in story.appearing_characters():
            if character.references and settings.identity != "discovered":
                from PIL import Image

                photos = [Image.open(p).convert("RGB") for p in character.references]
                self._identities[character.id] = self.adapter.embed(photos).mean(dim=0)
                self._sources[character.id] = f"photos ({len(photos)})"
                continue
            if discoverer is None:
                discoverer = self._discoverer()
            from storycast.identity.library import IdentityLibrary
            from storycast.runs.runner import default_cache_dir

            library = IdentityLibrary((context.cache_dir or default_cache_dir()) / "identities")
            record = discoverer.identity(dataclasses.replace(character, references=()), story, library, context)
            self._identities[character.id] = record.embedding
            self._sources[character.id] = f"discovered ({record.key})"

    def _discoverer(self) -> Any:
        """IdentityStory's discovery with this method's PhotoMaker and discovery settings (shared library)."""
        from storycast.methods.identitystory.method import IdentityStoryMethod
        from storycast.methods.identitystory.settings import IdentityStorySettings

        settings = IdentityStorySettings(photomaker=self.settings.photomaker, discovery=self.settings.discovery)
        return IdentityStoryMethod(self.models, settings)

    @torch.no_grad()
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        return [self._draw(story, index, context) for index in group]

    def _draw(self, story: Story, index: int, context: RunContext) -> FrameResult:
        from storycast.identity.photomaker_prompt import triggered_prompts

        settings = self.resolved_settings(story)
        gen = story.settings
        pipe, device = self.models.pipeline, self.models.device
        # 1. The prompt, and per named character the prompt with the trigger after its class word.
        prompt, negative = story.prompt(index), story.negative_prompt(index) or ""
        triggered = triggered_prompts(story, index, self._identities)
        plain = prompt_encoder(pipe, self.models.family, device)(
            [prompt], [negative], width=gen.width, height=gen.height
        )
        merged = self.adapter.fuse_identities(plain, [triggered], self._identities) if triggered else None
        # 2. The latents from the frame's seed, and the loop: text alone, then the identity from the merge step.
        scheduler = make_scheduler(pipe.scheduler, gen.steps, device, settings.scheduler)
        seed = story.frame_seed(index)
        latents = initial_latents(
            scheduler, latent_shape(pipe, gen.height, gen.width), [make_generator(seed, str(device))],
            dtype=pipe.unet.dtype, device=device,
        )  # fmt: skip
        merge_step = settings.merge_step(gen.steps)

        def noise(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            pair = merged if merged is not None and i > merge_step else plain
            return guided_noise(pipe.unet, model_input, t, pair, gen.guidance_scale)

        total = len(scheduler.timesteps)
        context.progress(ProgressEvent("denoise", 0, total))
        with count_unet_evaluations(pipe.unet) as counter, self.adapter.lora(True):
            latents = denoise(
                scheduler, latents, noise,
                on_step=lambda step: context.progress(ProgressEvent("denoise", step.index + 1, total)),
            )  # fmt: skip
        image = decode_latents(pipe, latents)[0]
        return FrameResult(
            index,
            image,
            seed,
            metadata={
                "prompt": prompt,
                "negative_prompt": negative,
                "identities": {c: self._sources[c] for c in triggered},
                "merge_step": merge_step,
                "unet_evaluations": counter.evaluations,
            },
        )

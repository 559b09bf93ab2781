"""``photomaker``: PhotoMaker alone, frame by frame (the baseline of IdentityStory's comparison): v1, or v2 where
its weights are given.

v1: each character's identity is the mean ID embedding of its reference photos, or, for a character without
photos, the identity IdentityStory's discovery finds from its description (shared through the identity library,
so a character discovered by an ``identitystory`` run is reused); it is fused into the class token; the pooled
embeddings stay text-only.

v2 (the weights' keys say which): each character's identity is its photos' ID tokens, 2 per photo, from the CLIP
tower and each photo's ArcFace embedding (the insightface pack's ONNX files, run with onnxruntime); the class
token is repeated once per token and each copy fused with its own (TencentARC/PhotoMaker v2 ``pipeline.py``);
after the merge step the pooled embedding is that prompt's, as theirs. v2 has no identity without photos:
discovery gives v1 embeddings, so a character without photos is refused before anything is drawn.

Every frame is drawn as the PhotoMaker pipeline draws: the text-only prompt (trigger removed) up to the merge
step, ``int(style_strength x T)`` capped at 30, then the identity prompt; the LoRA is on throughout. 2T UNet
evaluations per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from storycast.adapters.photomaker import PHOTOMAKER_REPO, PHOTOMAKER_V1_FILE, attach_photomaker
from storycast.errors import Problem, SettingsError, StoryError
from storycast.identity.photomaker_prompt import MergedConditioning
from storycast.identity.references import photomaker_identity, read_photos
from storycast.methods.base import FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.limits import (
    WITHOUT_CHARACTERS,
    FrameLimit,
    apply_limits,
    no_face_limits,
    trigger_limits,
)
from storycast.methods.photomaker.about import ABOUT
from storycast.methods.photomaker.settings import PhotoMakerMethodSettings
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator


class PhotoMakerMethod(StoryMethod, about=ABOUT):
    """PhotoMaker (v1 or v2, as the weights are) on SDXL, each frame on its own (see the module docstring)."""

    settings: PhotoMakerMethodSettings

    def __init__(self, models: Any, settings: PhotoMakerMethodSettings | None = None):
        super().__init__(models, settings)
        self._identities: dict[str, torch.Tensor] = {}
        """v1: character id -> (D,) ID embedding; v2: character id -> (2 x photos, D) ID tokens."""
        self._sources: dict[str, str] = {}

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # The PhotoMaker demos: 50 steps, guidance 5.
        return {"steps": 50, "guidance_scale": 5.0}

    @classmethod
    def check(cls, story: Story, settings: PhotoMakerMethodSettings, family: str | None = None) -> None:
        if settings.identity == "photos":
            missing = [c for c in story.appearing_characters() if not c.references]
            if missing:
                raise StoryError(
                    _no_photos(story, missing, "identity=photos needs reference photos", "--set identity=auto "
                               "(discovered from the description)"),
                    story.source,
                )  # fmt: skip
        if settings.photomaker.expected_version() == "v2":
            check_v2(story, settings)

    @classmethod
    def reads_references(cls, settings: PhotoMakerMethodSettings, family: str | None = None) -> bool:
        return settings.identity != "discovered"

    @classmethod
    def frame_limits(
        cls, story: Story, settings: PhotoMakerMethodSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # A non-human character's images give PhotoMaker no face: v1 discovers its identity from its description
        # instead (unless identity=photos); v2 has no identity without photos, so it is left out.
        found = []
        # PhotoMaker v2 reads a face (insightface's ArcFace embedding beside the image): a non-human character's images
        # hold none, and v2 cannot discover (discovery gives v1 embeddings), so it is left out. v1's ID encoder embeds
        # the whole image: its characters keep their images.
        if cls.reads_references(settings, family) and settings.photomaker.expected_version() == "v2":
            found = no_face_limits(story, cls.name, WITHOUT_CHARACTERS)
        if tokenizer is None:
            return found
        story = apply_limits(story, found)
        return found + trigger_limits(tokenizer, story, cls.name, [c.id for c in story.appearing_characters()])

    # -- run interface ----------------------------------------------------------------------------

    @property
    def adapter(self) -> Any:
        return attach_photomaker(self.models, self.settings.photomaker, versions=("v1", "v2"))

    def prepare(self, story: Story, context: RunContext) -> None:
        settings = self.resolved_settings(story)
        if self.adapter.version == "v2":
            self._prepare_v2(story, settings)
            return
        discoverer = None
        for character in story.appearing_characters():
            if character.identity:  # the library entry the story names wins over photos and discovery
                from storycast.identity.discovery import named_identity
                from storycast.identity.library import IdentityLibrary
                from storycast.utils.environment import default_cache_dir

                library = IdentityLibrary((context.cache_dir or default_cache_dir()) / "identities")
                self._identities[character.id] = named_identity(character, library, self.adapter).embedding
                self._sources[character.id] = f"library ({character.identity})"
                continue
            if character.references and settings.identity != "discovered":
                photos = read_photos(character.references, f"'{character.id}'")
                self._identities[character.id] = photomaker_identity(self.adapter, photos)
                self._sources[character.id] = f"photos ({len(photos)})"
                continue
            from storycast.identity.library import IdentityLibrary
            from storycast.utils.environment import default_cache_dir

            library = IdentityLibrary((context.cache_dir or default_cache_dir()) / "identities")
            if discoverer is None:
                from storycast.methods.identitystory.identities import identity_finder

                discoverer = identity_finder(self, story, library, context)
            record = discoverer.discovered(character)
            self._identities[character.id] = record.embedding
            self._sources[character.id] = f"discovered ({record.key})"

    def _prepare_v2(self, story: Story, settings: PhotoMakerMethodSettings) -> None:
        """Each character's v2 ID tokens from its photos: (2 x photos, D), photo by photo, as the official pipeline
        stacks them."""

        from storycast.identity.photomaker_faces import PhotoMakerFaces

        check_v2(story, settings)  # again: the file's keys, not its name, decided the version
        characters = story.appearing_characters()
        if not characters:
            return
        faces = PhotoMakerFaces.from_folder(settings.face_models, settings.face_pack)
        for character in characters:
            photos = read_photos(character.references, f"'{character.id}'")
            arcface = faces.embed(photos, character.references, character.id)
            tokens = self.adapter.id_tokens(photos, arcface)
            self._identities[character.id] = tokens.reshape(-1, tokens.shape[-1])
            self._sources[character.id] = f"photos ({len(photos)})"
        self.adapter.park_vision_tower()

    @torch.no_grad()
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        return [self._draw(story, index, context) for index in group]

    def _draw(self, story: Story, index: int, context: RunContext) -> FrameResult:
        from storycast.identity.photomaker_prompt import triggered_prompts

        settings = self.resolved_settings(story)
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story, settings.scheduler)
        # 1. The prompt, and per named character the prompt with the trigger after its class word.
        prompt, negative = story.prompt(index), story.negative_prompt(index) or ""
        triggered = triggered_prompts(story, index, self._identities)
        plain = backbone.encode([prompt], [negative], width=gen.width, height=gen.height, guidance=sampling.guidance)
        if self.adapter.version == "v2":
            merged = self.adapter.fuse_identity_tokens(plain, prompt, triggered, self._identities)
        else:
            merged = self.adapter.fuse_identities(plain, [triggered], self._identities) if triggered else None
        conditioning = MergedConditioning(plain, merged, settings.merge_step(gen.steps))
        # 2. The frame's noise, and the loop: text alone, then the identity from the merge step; the LoRA on.
        seed = story.frame_seed(index)
        drawn = sample(
            backbone,
            plain,
            [make_generator(seed, str(self.models.device))],
            sampling,
            noise=lambda x, t, i: backbone.guided_noise(x, t, conditioning.at(i), sampling.guidance),
            installs=[lambda: self.adapter.lora(True)],
            progress=denoise_progress(context.progress),
        )
        image = drawn.images[0]
        return FrameResult(
            index,
            image,
            seed,
            metadata={
                "prompt": prompt,
                "negative_prompt": negative,
                "identities": {c: self._sources[c] for c in triggered},
                "photomaker_version": self.adapter.version,
                "merge_step": conditioning.merge_step,
                "denoiser_evaluations": drawn.evaluations,
            },
        )


def _no_photos(story: Story, missing: Sequence[Any], message: str, fix: str) -> list[Problem]:
    numbers = {c.id: n for n, c in enumerate(story.characters)}
    return [
        Problem(f"characters[{numbers[c.id]}].references", f"{message}, but '{c.id}' has none", fix) for c in missing
    ]


def check_v2(story: Story, settings: PhotoMakerMethodSettings) -> None:
    """PhotoMaker v2's inputs: reference photos of every character the story shows (discovery gives v1 embeddings,
    so there is no v2 identity without photos) and the face pack that embeds them.

    Raises:
        SettingsError: identity=discovered.
        StoryError: Naming each character without photos.
        MissingWeightsError: The face pack's files are not found.
    """
    v1 = f"--set photomaker_file={PHOTOMAKER_V1_FILE} --set photomaker={PHOTOMAKER_REPO}"
    if settings.identity == "discovered":
        raise SettingsError(
            "identity=discovered gives PhotoMaker v1 ID embeddings (IdentityStory's discovery), and these weights "
            f"are PhotoMaker v2, which reads reference photos. Fix: --set identity=auto with photos, or use v1 ({v1})."
        )
    characters = story.appearing_characters()
    named = [c for c in characters if c.identity]
    if named:
        numbers = {c.id: n for n, c in enumerate(story.characters)}
        raise StoryError(
            [
                Problem(
                    f"characters[{numbers[c.id]}].identity",
                    f"'{c.id}' names the library identity '{c.identity}', a PhotoMaker v1 ID embedding, and these "
                    "weights are PhotoMaker v2",
                    f"remove the identity and give photos, or use PhotoMaker v1 ({v1})",
                )
                for c in named
            ],
            story.source,
        )
    missing = [c for c in characters if not c.references]
    if missing:
        raise StoryError(
            _no_photos(
                story,
                missing,
                "PhotoMaker v2 needs reference photos (its identity is read from photos and their ArcFace embeddings; "
                "discovery gives v1 embeddings)",
                f"add photos of the character, or use PhotoMaker v1 ({v1}), which discovers an identity from the "
                "description",
            ),
            story.source,
        )
    if characters:
        from storycast.vision.faces import find_face_models

        find_face_models(settings.face_models, settings.face_pack, setting="--set face_models=")

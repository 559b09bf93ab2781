"""``pulid``: PuLID-FLUX alone, the FLUX counterpart of ``photomaker``: each frame drawn with its character's
reference photos, or the identity discovered from its description, through PuLID's ID branch.

Each character's identity is found once (``prepare``), as ``identity`` says: from its photos, or (a character without
photos, or ``identity=discovered``) by IdentityStory's discovery in PuLID's ID-token space through the identity
library, with identitystory's keys, so each method reads what the other discovered (our extension; see
``storycast.methods.identitystory.flux``). From photos: per photo, the antelopev2 ArcFace embedding and the grey
aligned face through EVA02-CLIP-L-14-336 (:mod:`storycast.identity.pulid_faces`), IDFormer over both gives 32 ID
tokens; a character with several photos gets their mean (our extension; the authors read one photo). A frame is
drawn as ``flux/sampling.py``'s ``denoise`` draws: the ID tokens of the first character the frame names act after
every ``double_interval``-th double block and ``single_interval``-th single block from ``start_step`` on, scaled by
``id_weight``; with ``true_cfg`` > 1, from ``start_cfg_step`` on a second row takes the negative prompt and the
negative ID tokens, and the prediction is ``neg + true_cfg x (pred - neg)``. A frame naming nobody is plain FLUX.
Frames of a group are drawn as one batch, each row with its own identity (or none).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch

from storycast.adapters.pulid_flux import attach_pulid_flux
from storycast.errors import Problem, SettingsError, StoryError
from storycast.identity.photomaker_faces import NoFaceError
from storycast.identity.pulid_discovery import PulidSpace
from storycast.identity.pulid_flux_branch import IDTarget
from storycast.identity.references import read_photos
from storycast.methods.base import FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.limits import (
    WITHOUT_CHARACTERS,
    WITHOUT_REFERENCES,
    FrameLimit,
    apply_limits,
    no_face_limits,
)
from storycast.methods.pulid.about import ABOUT
from storycast.methods.pulid.settings import PuLIDMethodSettings
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.sampler import sample
from storycast.story.model import Story
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)


class PuLIDMethod(StoryMethod, about=ABOUT):
    """PuLID-FLUX on FLUX, frames batched as the story says (see the module docstring)."""

    settings: PuLIDMethodSettings

    def __init__(self, models: Any, settings: PuLIDMethodSettings | None = None):
        super().__init__(models, settings)
        self._identities: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        """Character id -> (ID tokens, negative ID tokens), each (32, 2048)."""
        self._sources: dict[str, str] = {}
        """Character id -> where its identity came from (the manifest's ``identity``)."""
        self._pulid: PulidSpace | None = None
        self._face_models: Any = None

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # app_flux.py at 1aa2fc7d: 28 steps (line 210), guidance 4 (line 212).
        return {"steps": 28, "guidance_scale": 4.0}

    @classmethod
    def check(cls, story: Story, settings: PuLIDMethodSettings, family: str | None = None) -> None:
        if story.settings.true_cfg_scale is not None and story.settings.true_cfg_scale > 1:
            raise SettingsError(
                f"true_cfg_scale {story.settings.true_cfg_scale}: PuLID runs its own true CFG, whose negative pass "
                f"takes negative ID tokens and starts at start_cfg_step. Fix: --set true_cfg="
                f"{story.settings.true_cfg_scale} and drop true_cfg_scale."
            )
        characters = story.appearing_characters()
        if settings.identity == "photos":
            missing = [c for c in characters if not c.references and not c.identity]
            if missing:
                numbers = {c.id: n for n, c in enumerate(story.characters)}
                raise StoryError(
                    [
                        Problem(
                            f"characters[{numbers[c.id]}].references",
                            f"identity=photos draws each character from its reference photos, but '{c.id}' has none",
                            "add a photo of the character's face (references: [face.png]), or --set identity=auto "
                            "(discovered from the description)",
                        )
                        for c in missing
                    ],
                    story.source,
                )
        if any(not c.identity and (settings.identity == "discovered" or not c.references) for c in characters):
            if settings.discovery.freeu:
                raise SettingsError(
                    "freeu: discovery's FreeU scales a UNet's skip connections, and PuLID draws candidates with FLUX, "
                    "which has none. Fix: --set freeu=false (or leave it unset)."
                )
            settings.discovery.check_rounds()
        if characters:
            # The pack is checked here where it is named; the default folder (or, on the tiny presets, the stand-ins
            # written into the cache) once the models are known, before anything is drawn (prepare).
            if settings.face_models is not None:
                from storycast.identity.pulid_faces import PULID_FACE_PACK
                from storycast.vision.faces import find_face_models

                find_face_models(settings.face_models, PULID_FACE_PACK, setting="--set face_models=")
            if settings.face_parsing is not None:
                from storycast.vision.face_parsing import find_bisenet

                find_bisenet(settings.face_parsing)

    @classmethod
    def reads_references(cls, settings: PuLIDMethodSettings, family: str | None = None) -> bool:
        return settings.identity != "discovered"

    @classmethod
    def frame_limits(
        cls, story: Story, settings: PuLIDMethodSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # A non-human character's photos hold no face for antelopev2 to find, and PuLID reads an identity from a face:
        # with identity=auto its identity is discovered from its description instead, as for a character without
        # photos (identitystory on FLUX does the same); with identity=photos it is left out; identity=discovered
        # reads no photo. Of the rest, the ID branch draws the first character a frame names (generate's `named`).
        found = []
        if settings.identity != "discovered":
            fallback = WITHOUT_CHARACTERS if settings.identity == "photos" else WITHOUT_REFERENCES
            found = no_face_limits(story, cls.name, fallback)
        kept = apply_limits(story, found)
        for index, frame in enumerate(kept.frames):
            if len(frame.characters) > 1:
                detail = f"PuLID-FLUX draws one identity per frame, the first character named ({frame.characters[0]})"
                found.append(
                    FrameLimit(index, "characters-per-frame", detail, WITHOUT_CHARACTERS, frame.characters[1:])
                )
        return found

    # -- run interface ----------------------------------------------------------------------------

    @property
    def adapter(self) -> Any:
        return attach_pulid_flux(self.models, self.settings.pulid, intervals=self.settings.intervals)

    @property
    def pulid(self) -> PulidSpace:
        """PuLID-FLUX (this method's intervals) with its face models, as discovery reads it; made on first use."""
        if self._pulid is None:
            from storycast.methods.identitystory.flux import pulid_space

            self._pulid = pulid_space(
                self.models, self.settings, self._face_models, reading=self.settings, intervals=self.settings.intervals
            )
        return self._pulid

    def prepare(self, story: Story, context: RunContext) -> None:
        from storycast.methods.identitystory import flux

        characters = [c for c in story.appearing_characters() if c.id not in self._identities]
        if not characters:
            return
        settings = self.resolved_settings(story)
        self._face_models = flux.face_models_folder(settings, self.models, context.cache_dir)
        finder = None
        for character in characters:
            tokens, faceless = None, ""
            if character.references and not character.identity and settings.identity != "discovered":
                photos = read_photos(character.references, f"'{character.id}'")
                try:
                    tokens = self.pulid.photo_tokens(photos, [str(path) for path in character.references])
                    self._sources[character.id] = f"photos ({len(photos)})"
                except NoFaceError as err:
                    # 'auto' means photos where they can be read, else discovery: a drawn character (ViStoryBench's
                    # stylised people) whose face antelopev2 misses is discovered rather than failing the story.
                    if settings.identity == "photos":
                        raise
                    logger.warning(
                        "%s With identity=auto, '%s' is discovered from its description.", err, character.id
                    )
                    faceless = "; no face found in its photos"
            if tokens is None:
                # A library entry the story names, or IdentityStory's discovery in PuLID's space: the finder
                # identitystory on FLUX uses, so each reads what the other stored.
                if finder is None:
                    from storycast.identity.library import IdentityLibrary
                    from storycast.utils.environment import default_cache_dir

                    library = IdentityLibrary((context.cache_dir or default_cache_dir()) / "identities")
                    finder = flux.identity_finder(
                        self, story, library, context, reading=settings, intervals=settings.intervals
                    )
                record = finder.named(character) if character.identity else finder.discovered(character)
                tokens = record.embedding.reshape(self.pulid.token_shape)
                kind = "library" if character.identity else "discovered"
                self._sources[character.id] = f"{kind} ({record.key}{faceless})"
            device = self.models.device
            self._identities[character.id] = (tokens.to(device), self.pulid.uncond_tokens().to(device))

    @torch.no_grad()
    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        settings = self.resolved_settings(story)
        gen, backbone = story.settings, self.backbone
        sampling = self.sampling(story)
        true_cfg = settings.true_cfg > 1
        guided = dataclasses.replace(sampling.guidance, scale=settings.true_cfg) if true_cfg else sampling.guidance
        # 1. Prompts (and the negative ones of true CFG); each row's identity: the first character the frame names.
        prompts = [story.prompt(i) for i in group]
        negatives = [story.negative_prompt(i) or settings.negative_prompt for i in group] if true_cfg else None
        pair = backbone.encode(prompts, negatives, width=gen.width, height=gen.height, guidance=guided)
        cond_only = GuidancePair(None, pair.cond)
        named = [next(iter(story.frame_characters(i)), None) for i in group]
        chosen = [c.id if c is not None and c.id in self._identities else None for c in named]

        def rows(part: int) -> list[list[IDTarget]]:
            """Part 0: each row's ID tokens; part 1: its negative ID tokens."""
            return [
                [IDTarget(self._identities[c][part], weight=settings.id_weight, start_step=settings.start_step)]
                if c is not None
                else []
                for c in chosen
            ]

        cond_rows, uncond_rows = rows(0), rows(1)

        # 2. The loop: the branch on for the draw; true CFG's negative rows from start_cfg_step on.
        with self.adapter.branch() as branch:

            def noise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
                if true_cfg and i >= settings.start_cfg_step:
                    with branch.rows(uncond_rows + cond_rows):
                        return backbone.guided_noise(x, t, pair, guided)
                with branch.rows(cond_rows):
                    return backbone.guided_noise(x, t, cond_only, sampling.guidance)

            seeds = [story.frame_seed(i) for i in group]
            drawn = sample(
                backbone,
                cond_only,
                [make_generator(seed, self.models.device) for seed in seeds],
                sampling,
                noise=noise,
                states=[branch],
                progress=denoise_progress(context.progress),
            )
        return [
            FrameResult(
                index,
                image,
                seed,
                metadata={
                    "prompt": prompt,
                    "negative_prompt": negatives[n] if negatives else None,
                    "identity": {character: self._sources[character]} if character else {},
                    "id_weight": settings.id_weight,
                    "start_step": settings.start_step,
                    "true_cfg": settings.true_cfg,
                    "face_parsing": settings.face_parsing is not None,
                    "denoiser_evaluations": drawn.evaluations // len(group),
                },
            )
            for n, (index, image, seed, prompt, character) in enumerate(
                zip(group, drawn.images, seeds, prompts, chosen, strict=True)
            )
        ]

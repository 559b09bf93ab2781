"""``storynizor``: ID-Synchronizer (auto-mask self-attention) and ID-Injector (Ma et al., AAAI 2025).

What we build, and the source of every choice, is ``docs/methods/storynizor.md`` (and the settings' help).
The run:

1. prepare: each character's reference photos are cut (a face crop for people), encoded by CLIP ViT-H/14
   and turned into identity tokens by the resampler;
2. the anchors (the story's first frames) are drawn as one batch with AMSA, their masked tokens cached at
   every up-block self-attention layer and step;
3. every later group of frames is drawn as one batch, sharing masked tokens within the group and with the
   cached anchors; with ``identity: first-frame`` a character without photos takes its crop in the first
   anchor frame naming it as its reference.

In every batch, each frame's characters are located by their class words' cross-attention maps (Otsu,
refreshed every step), and each named character's identity tokens are injected inside its mask on every
cross-attention layer. Each frame is denoised once: UNet evaluations per frame equal plain text-to-image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from storycast.attention.automask import AutoMaskState, anchor_cache, install_automask_attention
from storycast.attention.character_masks import CharacterMasks
from storycast.attention.injection import IdentityInjectionState, install_identity_injection
from storycast.attention.token_maps import record_token_maps
from storycast.errors import Problem, SettingsError, StorycastError, StoryError
from storycast.methods.base import FrameGroup, FrameResult, RunContext, StoryMethod, denoise_progress
from storycast.methods.limits import (
    WITHOUT_CHARACTERS,
    WITHOUT_REFERENCES,
    FrameLimit,
    apply_limits,
    class_word_limits,
    no_face_limits,
)
from storycast.methods.located import class_word_positions, mask_extras, warn_unnamed_class_words
from storycast.methods.storynizor.about import ABOUT
from storycast.methods.storynizor.settings import DROPOUT_SEED_OFFSET, StorynizorSettings
from storycast.models.presets import PLUS_FACE_WEIGHTS
from storycast.pipelines.sampler import sample
from storycast.story.model import Character, Story
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

ANCHOR_ROLE = "anchors"
GROUP_ROLE = "frames"


def uses_photos(character: Character, settings: StorynizorSettings) -> bool:
    return bool(character.references) and settings.identity != "none"


class StorynizorMethod(StoryMethod, about=ABOUT):
    """Storynizor on SD 1.5 (and SDXL where the parts allow; see ``docs/methods/storynizor.md``)."""

    settings: StorynizorSettings

    def __init__(self, models: Any, settings: StorynizorSettings | None = None):
        super().__init__(models, settings)
        self.anchors = anchor_cache("cpu" if self.settings.synchronizer.anchor_device == "cpu" else None)
        self._identity: dict[str, torch.Tensor] = {}
        self._identity_source: dict[str, str] = {}
        self._detector: Any = None
        self._segmenter: Any = None

    # -- asked before any model is loaded ---------------------------------------------------------

    @classmethod
    def generation_defaults(cls, family: str | None = None) -> dict[str, Any]:
        # diffusers' Stable Diffusion defaults (research notes §7.2): 50 steps, guidance 7.5; the family's size.
        return {"steps": 50, "guidance_scale": 7.5}

    @classmethod
    def check(cls, story: Story, settings: StorynizorSettings, family: str | None = None) -> None:
        appearing = story.appearing_characters()
        numbers = {c.id: number for number, c in enumerate(story.characters)}
        if settings.identity == "photos":
            missing = [c for c in appearing if not c.references]
            if missing:
                raise StoryError(
                    [
                        Problem(
                            f"characters[{numbers[c.id]}].references",
                            f"identity=photos needs reference photos of every character, but '{c.id}' has none",
                            "add photos, or --set identity=auto (AMSA alone for it) or identity=first-frame",
                        )
                        for c in missing
                    ],
                    story.source,
                )
        photo_owners = [c for c in appearing if uses_photos(c, settings)]
        unreadable = [
            Problem(
                f"characters[{numbers[c.id]}].references[{k}]",
                f"reference photo {path} of '{c.id}' is not an image that can be read",
                "give a JPEG, PNG or WebP photo, or remove it",
            )
            for c in photo_owners
            for k, path in enumerate(c.references)
            if not _readable_image(path)
        ]
        if unreadable:
            raise StoryError(unreadable, story.source)
        if photo_owners and settings.injector.reference_crop == "face":
            from storycast.vision.faces import find_face_models

            find_face_models(settings.injector.face_models, settings.injector.face_pack, setting="--set face_models=")
        warn_unnamed_class_words(story, cls.name)

    @classmethod
    def reads_references(cls, settings: StorynizorSettings, family: str | None = None) -> bool:
        return settings.identity != "none"

    @classmethod
    def frame_limits(
        cls, story: Story, settings: StorynizorSettings, family: str | None = None, tokenizer: Any = None
    ) -> list[FrameLimit]:
        # reference_crop=face refuses a photo without a face (auto cuts a non-human character's photos to the
        # segmented character, or takes them whole): with identity=photos the character is left out, else it is
        # drawn by AMSA alone, as a character without photos.
        found = []
        if settings.injector.reference_crop == "face" and cls.reads_references(settings, family):
            fallback = WITHOUT_CHARACTERS if settings.identity == "photos" else WITHOUT_REFERENCES
            found = no_face_limits(story, cls.name, fallback)
        # A character whose class word is not within the prompt's tokens cannot be located there (only a warning
        # outside a benchmark): the frame is drawn without it, which is what the method does with it there.
        return (
            found if tokenizer is None else found + class_word_limits(tokenizer, apply_limits(story, found), cls.name)
        )

    @classmethod
    def plan(cls, story: Story, settings: StorynizorSettings) -> list[FrameGroup]:
        indices = list(range(len(story)))
        anchors = tuple(indices[: settings.anchors])
        groups = [FrameGroup(anchors, role=ANCHOR_ROLE)] if anchors else []
        rest = indices[len(anchors) :]
        size = settings.frames_per_group
        depends = (0,) if anchors else ()
        groups += [FrameGroup(tuple(rest[i : i + size]), depends_on=depends) for i in range(0, len(rest), size)]
        return groups

    # -- run interface ----------------------------------------------------------------------------

    def prepare(self, story: Story, context: RunContext) -> None:
        settings = self.resolved_settings(story)
        self.anchors.clear()
        self._identity, self._identity_source = {}, {}
        self._check_mask_level(settings)
        appearing = story.appearing_characters()
        owners = [c for c in appearing if uses_photos(c, settings)]
        needs_injector = owners or (settings.identity == "first-frame" and appearing)
        if not needs_injector:
            return
        attached = self.injector  # loads now, so that weights that do not fit fail before drawing
        logger.info("ID-Injector: %s", attached.source)
        for character in owners:
            images = self._reference_images(character, settings)
            self._identity[character.id] = self._embed(images)

    def generate(self, story: Story, group: Sequence[int], context: RunContext) -> list[FrameResult]:
        settings = self.resolved_settings(story)
        plan = self.plan(story, settings)
        found = self.planned_group(story, settings, group)
        has_anchors = bool(plan) and plan[0].role == ANCHOR_ROLE
        if found.role == ANCHOR_ROLE:
            later = len(plan) > 1
            return self._draw_anchors(story, found.frames, context, cache=later)
        # Later groups read what the anchors left: their tokens (AMSA) and first-frame identities; anchors drawn in
        # an earlier run are restored first by the runner (restore, below).
        if has_anchors and settings.synchronizer.enabled and self.anchors.empty:
            raise self.not_restored("the anchors' tokens", found.frames, plan[0].frames)
        return self._draw(story, found.frames, context, mode="read" if has_anchors else None)

    def restore(self, story: Story, group: FrameGroup, context: RunContext) -> None:
        """The anchors drawn again (the same seeds give the same tokens), when later frames read anything of them:
        their tokens (AMSA) or a first-frame identity."""
        settings = self.resolved_settings(story)
        if settings.synchronizer.enabled or settings.identity == "first-frame":
            logger.info("restoring the anchors' tokens from frames %s (drawn in an earlier run)", list(group.frames))
            super().restore(story, group, context)

    # -- parts -------------------------------------------------------------------------------------

    @property
    def injector(self) -> Any:
        """The ID-Injector and its image encoder, attached on first use."""
        from storycast.adapters.id_injector import attach_id_injector

        injector = self.settings.injector
        return attach_id_injector(
            self.models,
            injector.weights,
            injector.image_encoder,
            auto_weights=PLUS_FACE_WEIGHTS[self.models.family],
        )

    def _check_mask_level(self, settings: StorynizorSettings) -> None:
        from storycast.attention.layers import attention_layers

        levels = sorted({layer.level for layer in attention_layers(self.backbone.denoiser) if layer.is_cross})
        if settings.synchronizer.mask_level not in levels:
            raise SettingsError(
                f"mask_level={settings.synchronizer.mask_level} has no cross-attention layers to make masks from; this "
                f"UNet has them at levels {levels}. Fix: --set mask_level={levels[-1] if levels else 0}."
            )

    def _face_detector(self, settings: StorynizorSettings, required: bool) -> Any:
        """The face detector for face crops; None (with one warning) when 'auto' finds no face models."""
        if self._detector is None:
            from storycast.errors import MissingWeightsError
            from storycast.vision.faces import ScrfdDetector, find_face_models

            try:
                detector_file, _ = find_face_models(
                    settings.injector.face_models, settings.injector.face_pack, setting="--set face_models="
                )
                self._detector = ScrfdDetector.from_file(detector_file)
            except (MissingWeightsError, ImportError) as err:
                if required:
                    raise
                logger.warning("reference photos are used whole, not cut to the face: %s", err)
                self._detector = False
        return self._detector or None

    def _reference_images(self, character: Character, settings: StorynizorSettings) -> list[Any]:
        """The character's photos as the encoder sees them: cut to the face, or to the segmented character, where
        asked and found (see the ``reference_crop`` setting)."""
        from storycast.identity.reference_crops import face_crop
        from storycast.identity.references import read_photos

        crop = settings.injector.reference_crop
        detector = self._face_detector(settings, required=crop == "face") if crop in ("auto", "face") else None
        images, cuts = [], {"face": 0, "segmented": 0}
        photos = read_photos(character.references, f"'{character.id}'")
        for path, photo in zip(character.references, photos, strict=True):
            image = face_crop(photo, detector) if detector is not None else None
            if image is None and crop == "face":
                raise StorycastError(
                    f"{path}: no face was found in this reference photo of '{character.id}', and reference_crop=face "
                    f"needs one. Fix: use a photo where the face is visible and at least ~40 px, or --set "
                    f"reference_crop=segment (or whole)."
                )
            if image is not None:
                cuts["face"] += 1
            elif crop in ("auto", "segment"):
                image = self._segmented(photo, path, character, settings, required=crop == "segment")
                cuts["segmented"] += image is not None
            images.append(image or photo)
        self._identity_source[character.id] = (
            f"photos ({len(images)}: {cuts['face']} face crop(s), {cuts['segmented']} segmented)"
        )
        return images

    def _segmented(
        self, photo: Any, path: Any, character: Character, settings: StorynizorSettings, *, required: bool
    ) -> Any:
        """The character alone in ``photo`` (GroundingDINO + SAM on its class word); None when 'auto' cannot."""
        from storycast.identity.reference_crops import mask_crop
        from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError
        from storycast.masks.registry import build_provider, detector_available, shares_the_gpu

        masks = settings.injector.segmentation()
        if not required and not detector_available(masks):
            return None
        if self._segmenter is None:
            self._segmenter = build_provider(
                "grounded-sam",
                masks,
                device=self.models.aux_device,
                local_files_only=self.models.spec.local_files_only,
                offload_idle=shares_the_gpu(self.models),
            )
        try:
            found = self._segmenter(MaskInputs(photo, [CharacterQuery(character.id, character.class_word)]))
        except MaskNotFoundError:
            found = {}
        crop = mask_crop(photo, found[character.id]) if character.id in found else None
        if crop is None and required:
            raise StorycastError(
                f"{path}: GroundingDINO found no '{character.class_word}' in this reference photo of '{character.id}', "
                f"and reference_crop=segment needs one. Fix: a photo where the character is clearly visible, a lower "
                f"--set reference_box_threshold, or --set reference_crop=whole."
            )
        return crop

    @torch.no_grad()
    def _embed(self, images: Sequence[Any]) -> torch.Tensor:
        """(2, n x queries, D) identity tokens of ``images``: [uncond (zero pixels, IP-Adapter's), cond]."""
        from storycast.identity.image_encoder import patch_features

        attached = self.injector
        cond, uncond = patch_features(attached.image_encoder, images)
        dtype = next(attached.injector.parameters()).dtype
        tokens = attached.injector.resampler(torch.cat([uncond, cond]).to(dtype))  # (2n, q, D)
        return tokens.reshape(2, -1, tokens.shape[-1])

    def _draw_anchors(
        self, story: Story, frames: Sequence[int], context: RunContext, *, cache: bool
    ) -> list[FrameResult]:
        self.anchors.clear()
        results = self._draw(story, frames, context, mode="write" if cache else None)
        settings = self.resolved_settings(story)
        if settings.identity == "first-frame":
            self._identity_from_anchors(story, results)
        return results

    def _identity_from_anchors(self, story: Story, results: Sequence[FrameResult]) -> None:
        """Characters without photos take their segmented crop in the first anchor frame naming them."""
        from storycast.identity.reference_crops import mask_crop

        for character in story.appearing_characters():
            if character.id in self._identity:
                continue
            for result in results:
                mask = result.extras.get(f"mask-{character.id}")
                if mask is None:
                    continue
                import numpy as np

                crop = mask_crop(result.image, torch.from_numpy(np.asarray(mask) > 127))
                if crop is not None:
                    self._identity[character.id] = self._embed([crop])
                    self._identity_source[character.id] = f"first-frame (frame {result.index})"
                    break

    def _draw(
        self, story: Story, frames: Sequence[int], context: RunContext, *, mode: str | None
    ) -> list[FrameResult]:
        """Denoise ``frames`` as one batch with AMSA and the identity branch; ``mode`` "write" caches the anchors'
        tokens, "read" attends to them."""
        settings = self.resolved_settings(story)
        gen, backbone = story.settings, self.backbone
        unet = backbone.denoiser
        sampling = self.sampling(story, settings.scheduler)
        prompts = [story.prompt(i) for i in frames]
        negatives = [story.negative_prompt(i) or "" for i in frames]
        conditioning = backbone.encode(
            prompts, negatives, width=gen.width, height=gen.height, guidance=sampling.guidance
        )
        # 1. Who is where: each frame's characters, located by their class words' cross-attention maps.
        characters = [story.frames[i].characters for i in frames]
        _, latent_h, latent_w = backbone.latent_shape(gen.width, gen.height)
        level = settings.synchronizer.mask_level
        masks = CharacterMasks(characters, (latent_h, latent_w))
        positions = class_word_positions(backbone.tokenizer, story, frames)
        store = masks.record(positions, (latent_h >> level, latent_w >> level))
        # 2. The attention changes: AMSA on the shared self-attention layers, identity on cross-attention.
        amsa = AutoMaskState(
            frames=len(frames),
            num_steps=gen.steps,
            generator=make_generator(story.frame_seed(frames[0]) + DROPOUT_SEED_OFFSET, "cpu"),
            character_masks=masks,
            dropout=settings.synchronizer.mask_dropout,
            anchors=self.anchors if mode else None,
            anchor_mode=mode,  # type: ignore[arg-type]
        )
        identity = {c: self._identity[c] for names in characters for c in names if c in self._identity}
        injection = IdentityInjectionState(
            frames=len(frames),
            characters=characters,
            identity=identity,
            scale=settings.injector.scale,
            character_masks=masks if settings.injector.masked else None,
        )
        installs: list[Any] = [
            (
                lambda: install_identity_injection(
                    unet, injection, self.injector.injector, store=store, record_level=level
                )
            )
            if identity
            else (lambda: record_token_maps(unet, store, [level]))
        ]
        if settings.synchronizer.enabled:
            installs.append(lambda: install_automask_attention(unet, amsa, settings.synchronizer.block_names()))
        # 3. The frames from their own seeds (as diffusers draws them), denoised together.
        drawn = sample(
            backbone,
            conditioning,
            [make_generator(story.frame_seed(i), str(self.models.device)) for i in frames],
            sampling,
            installs=installs,
            states=[amsa, injection],
            progress=denoise_progress(context.progress),
        )
        # 4. The masks of the last step are saved beside each frame.
        images = drawn.images
        masks.refresh()
        return [
            self._result(story, index, image, masks, number, frames, drawn.evaluations // len(frames), mode)
            for number, (index, image) in enumerate(zip(frames, images, strict=True))
        ]

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
    ) -> FrameResult:
        extras, areas = mask_extras(masks, number, story.frames[index].characters, (image.height, image.width))
        role = {"write": "anchor", "read": "reads the anchors"}.get(mode or "", "frame")
        return FrameResult(
            index,
            image,
            story.frame_seed(index),
            metadata={
                "prompt": story.prompt(index),
                "negative_prompt": story.negative_prompt(index) or "",
                "role": role,
                "group": list(frames),
                "identity": {
                    c: self._identity_source.get(c, "none (AMSA only)") for c in story.frames[index].characters
                },
                "mask_area": areas,
                "denoiser_evaluations": evaluations,
                "anchor_bytes": self.anchors.nbytes,
            },
            extras=extras,
        )


def _readable_image(path: Any) -> bool:
    """Whether PIL can read ``path`` as an image (checked before any model loads)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError):
        return False
    return True

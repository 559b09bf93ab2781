"""The FLUX side of ``identitystory``: PuLID-FLUX as the identity-preserving generator (our extension of the paper,
docs/methods/identitystory.md "On FLUX").

- :func:`identity_finder`: discovery in PuLID's identity space (:mod:`storycast.identity.pulid_discovery`), with the
  method's budget and progress;
- :func:`region_prompt` and :func:`regions`: each character's identity pass of stage 2 (its description, its ID
  tokens);
- :func:`prompt_problems`: the class words checked against T5's tokens before anything is drawn;
- :func:`pulid_space` and :func:`face_models_folder`: PuLID-FLUX and its face models on the loaded FLUX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from storycast.identity.library import IdentityLibrary, IdentityRecord
from storycast.identity.pulid_discovery import PulidIdentityFinder, PulidIdentitySpace, PulidSpace
from storycast.methods.base import ProgressEvent, RunContext
from storycast.methods.identitystory import prompts
from storycast.methods.identitystory.flux_injection import PulidRegion
from storycast.pipelines.guidance import Guidance
from storycast.story.model import Character, Story, join_prompt

DEFAULT_INTERVALS = (2, 4)
"""PuLID-FLUX's (double, single) block intervals (``pulid/pipeline_flux.py`` lines 26-27), the ones identitystory
reads."""


def identity_finder(
    method: Any,
    story: Story,
    library: IdentityLibrary,
    context: RunContext,
    *,
    reading: Any = None,
    intervals: tuple[int, int] = DEFAULT_INTERVALS,
) -> PulidIdentityFinder:
    """Finds identities with ``method``'s PuLID-FLUX (``method.pulid``, attached when first needed), the PuLID
    weights and resolved discovery budget of its settings, and its progress.

    ``reading``: the settings that say how PuLID is read (``id_weight``, ``face_parsing``): identitystory's ``flux``
    section by default, ``pulid``'s own settings for ``--method pulid``. The same weights, reading, model and budget
    make the same keys whichever method asks, so each finds what the other discovered. Other ``intervals`` than the
    authors' are another adapter, so they enter the key.
    """
    pulid = method.settings.pulid
    reading = method.settings.flux if reading is None else reading
    adapter_id = {
        "pulid": pulid.source,
        "file": pulid.file,
        "eva_clip": pulid.eva_clip,
        "id_weight": reading.id_weight,
        "face_parsing": reading.face_parsing,
    }
    if tuple(intervals) != DEFAULT_INTERVALS:
        adapter_id["intervals"] = list(intervals)
    return PulidIdentityFinder(
        adapter=lambda: method.pulid,
        library=library,
        model_info=method.models.info,
        adapter_id=adapter_id,
        budget=method.resolved_settings(story).discovery.budget(story.settings.width, story.settings.height),
        on_progress=lambda done, total, label: context.progress(ProgressEvent("discovery", done, total, label)),
        id_weight=reading.id_weight,
    )


def region_prompt(story: Story, character: Character, characters_in_frame: int) -> str:
    """A character's region prompt on FLUX: its description (what discovery drew it from), after the story's style
    when the frame has several characters, as the authors' region prompts are on SDXL, without PhotoMaker's trigger
    word (PuLID reads no prompt token)."""
    if characters_in_frame > 1 and story.style:
        return join_prompt(story.style, character.description)
    return character.description


def regions(
    space: PulidIdentitySpace,
    story: Story,
    index: int,
    characters: Sequence[Character],
    identities: Mapping[str, IdentityRecord],
    negative: str,
    guidance: Guidance,
) -> list[PulidRegion]:
    """The identity passes of frame ``index``'s characters: region prompts encoded as one batch, ID tokens from the
    library's identities (and PuLID's unconditional tokens for the uncond rows of true CFG)."""
    gen = story.settings
    texts = [region_prompt(story, c, len(characters)) for c in characters]
    conditioning = space.backbone.encode(
        texts, [negative] * len(characters), width=gen.width, height=gen.height, guidance=guidance
    )
    device = space.backbone.device
    uncond = space.uncond_tokens().to(device) if guidance.halves == 2 else None
    return [
        PulidRegion(
            character_id=c.id,
            conditioning=conditioning.rows(row, row + 1),
            id_tokens=identities[c.id].embedding.reshape(space.token_shape).to(device),
            uncond_tokens=uncond,
        )
        for row, c in enumerate(characters)
    ]


def prompt_problems(backbone: Any, story: Story, style: str) -> list[str]:
    """Frames whose prompt lacks a character's class word within the T5 tokens FLUX reads (the attention masks read
    the word's map; the authors refuse such frames on SDXL)."""
    problems = []
    for index in range(len(story)):
        characters = story.frame_characters(index)
        if not characters:
            continue
        prompt = prompts.global_prompt(story, index, style)
        words = [c.class_word for c in characters]
        positions = prompts.class_word_positions(
            backbone.tokenizer, prompt, words, max_length=backbone.max_sequence_length
        )
        for character, position in zip(characters, positions, strict=True):
            if position is None:
                problems.append(
                    f"frames[{index}]: the class word '{character.class_word}' of '{character.id}' is not in the "
                    f"frame's prompt (within the {backbone.max_sequence_length} T5 tokens FLUX reads): '{prompt}'"
                )
    return problems


FACE_PACK = "antelopev2"
"""The insightface pack PuLID-FLUX reads (``FaceAnalysis(name='antelopev2')``)."""


def face_models_folder(settings: Any, models: Any, cache_dir: Path | None) -> Path | None:
    """The folder of the antelopev2 pack, checked before anything is drawn: ``face_models``, else insightface's own
    folder; on the tiny presets without ``face_models``, tiny random stand-ins written once into the cache (as their
    PuLID weights are random).

    Raises:
        MissingWeightsError: A file of the pack is missing (the message names it and ``--set face_models=``).
    """
    from storycast.errors import MissingWeightsError
    from storycast.vision.faces import find_face_models

    folder = Path(settings.face_models).expanduser() if settings.face_models else None
    if folder is None and models.is_tiny:
        from storycast.utils.environment import default_cache_dir
        from storycast.vision.tiny_faces import write_tiny_face_pack

        folder = (cache_dir or default_cache_dir()) / "tiny-face-models" / FACE_PACK
        try:
            find_face_models(folder, FACE_PACK)
        except MissingWeightsError:  # not written yet: write the stand-ins
            write_tiny_face_pack(folder, FACE_PACK, seed=models.spec.seed or 0)
    find_face_models(folder, FACE_PACK, setting="--set face_models=")
    if settings.face_parsing is not None:
        from storycast.vision.face_parsing import find_bisenet

        find_bisenet(settings.face_parsing)
    return folder


def pulid_space(
    models: Any,
    settings: Any,
    face_models: Path | None,
    *,
    reading: Any = None,
    intervals: tuple[int, int] = DEFAULT_INTERVALS,
) -> PulidSpace:
    """PuLID-FLUX on ``models`` (:func:`storycast.adapters.pulid_flux.attach_pulid_flux`, shared with other methods)
    with the antelopev2 face models of ``face_models`` and the face parsing of ``reading`` (``settings.flux`` by
    default, as :func:`identity_finder`), on the auxiliary device."""
    from storycast.adapters.pulid_flux import attach_pulid_flux
    from storycast.identity.pulid_faces import PuLIDFaces

    reading = settings.flux if reading is None else reading
    adapter = attach_pulid_flux(models, settings.pulid, intervals=intervals)
    faces = PuLIDFaces.from_folder(
        face_models, parsing=reading.face_parsing, device=str(models.aux_device), setting="--set face_models="
    )
    return PulidSpace(models.backbone, adapter, faces)

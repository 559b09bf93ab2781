"""A character's PhotoMaker v1 identity: the identity library entry it names, the mean ID embedding of its photos,
or IdentityStory's Iterative Identity Discovery (§3.2) from its description, found once and kept in the library.

Discovery loop: draw m candidates with the identity-preserving generator (PhotoMaker's LoRA on; the first loop
has no identity yet, later loops merge the current identity from ``start_merge_step`` on), embed them with
PhotoMaker's ID encoder, keep the consistent ones with the iterative SVD filter, and average them.

:class:`IdentityFinder` ties it to the library for any method that reads PhotoMaker v1 identities
(``identitystory``, ``photomaker``): a discovered identity is stored under a key that hashes its search prompt,
the base model, the PhotoMaker weights and the discovery budget, so every method finds what another discovered.
Another identity-preserving generator (PuLID-FLUX, :mod:`storycast.identity.pulid_discovery`) subclasses it: its
``generator`` name is part of every key it makes, so identities of different identity spaces never mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from storycast.errors import StorycastError
from storycast.identity.library import IdentityLibrary, IdentityRecord, identity_key
from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.identity.photomaker_prompt import MergedConditioning, search_prompt
from storycast.identity.references import photomaker_identity, read_photos
from storycast.identity.svd_filter import svd_filter
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.freeu import FREEU_SDXL, freeu
from storycast.pipelines.noise import count_evaluations
from storycast.pipelines.sampler import Sampling, sample
from storycast.story.model import Character
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

MODEL_KEYS = ("source", "repo_id", "revision", "commit", "path", "seed", "dtype")
"""What of the base model (``LoadedModels.info``) an identity depends on (part of its library key)."""


@dataclass(frozen=True)
class DiscoveryBudget:
    """Resolved numbers of one discovery (see IdentityStory's ``DiscoverySettings`` for their meaning)."""

    candidates: int
    batch_size: int
    steps: int
    guidance_scale: float
    loops: int
    start_merge_step: int
    svd_rank: int
    svd_keep_ratio: float
    svd_iterations: int
    preview_images: int
    negative_prompt: str
    freeu: bool
    seed: int
    width: int
    height: int


@dataclass
class DiscoveryResult:
    """The identity (D,), its preview images, and what the filter kept in each loop."""

    identity: torch.Tensor
    previews: list[Any]
    kept: list[list[int]]


@torch.no_grad()
def draw_candidates(
    adapter: PhotoMakerAdapter,
    conditioning: GuidancePair,
    class_position: int,
    identity: torch.Tensor | None,
    seeds: list[int],
    budget: DiscoveryBudget,
    on_image: Callable[[], None] | None = None,
) -> list[Any]:
    """Draw one image per seed, in batches, with the identity merged after ``start_merge_step``."""
    backbone = adapter.backbone
    guidance = backbone.guidance(budget.guidance_scale)
    sampling = Sampling(budget.width, budget.height, budget.steps, guidance)
    fused = None
    if identity is not None:
        fused = adapter.fuse(conditioning.cond.embeds, [class_position], identity[None])
    images: list[Any] = []
    for start in range(0, len(seeds), budget.batch_size):
        batch_seeds = seeds[start : start + budget.batch_size]
        count = len(batch_seeds)
        plain = conditioning.repeat(count)
        merged = None
        if fused is not None:
            merged = GuidancePair(plain.uncond, plain.cond.replace(embeds=fused.repeat(count, 1, 1)))
        # The authors use the text alone while i <= start_merge_step, the identity after.
        steps = MergedConditioning(plain, merged, budget.start_merge_step)

        def noise(model_input: torch.Tensor, t: torch.Tensor, i: int, steps=steps) -> torch.Tensor:
            return backbone.guided_noise(model_input, t, steps.at(i), guidance)

        generators = [make_generator(seed, str(adapter.device)) for seed in batch_seeds]
        for image in sample(backbone, plain, generators, sampling, noise=noise).images:
            images.append(image)
            if on_image is not None:
                on_image()
    return images


@torch.no_grad()
def discover_identity(
    adapter: PhotoMakerAdapter,
    prompt_with_trigger: str,
    budget: DiscoveryBudget,
    on_image: Callable[[], None] | None = None,
) -> DiscoveryResult:
    """Find an identity for a description (its search prompt, with PhotoMaker's trigger word)."""
    conditioning, positions = adapter.encode(
        [prompt_with_trigger], [budget.negative_prompt], width=budget.width, height=budget.height
    )
    identity: torch.Tensor | None = None
    kept: list[list[int]] = []
    with adapter.lora(True), freeu(adapter.backbone.denoiser, FREEU_SDXL if budget.freeu else None):
        for loop in range(budget.loops):
            seeds = [budget.seed + loop * budget.candidates + j for j in range(budget.candidates)]
            images = draw_candidates(adapter, conditioning, positions[0], identity, seeds, budget, on_image)
            embeddings = adapter.embed(images)
            result = svd_filter(embeddings, budget.svd_rank, budget.svd_keep_ratio, budget.svd_iterations)
            identity = result.identity.float()
            kept.append(result.indices.tolist())
        preview_seeds = [budget.seed + budget.loops * budget.candidates + j for j in range(budget.preview_images)]
        previews = draw_candidates(adapter, conditioning, positions[0], identity, preview_seeds, budget)
    assert identity is not None
    return DiscoveryResult(identity=identity.cpu(), previews=previews, kept=kept)


def identity_from_photos(adapter: PhotoMakerAdapter, photos: list[Any]) -> torch.Tensor:
    """An identity from a person's photos, on the CPU (as the library keeps it): see
    :func:`storycast.identity.references.photomaker_identity`."""
    return photomaker_identity(adapter, photos).cpu()


def named_identity(character: Character, library: IdentityLibrary, adapter: PhotoMakerAdapter) -> IdentityRecord:
    """The library entry ``character.identity`` names, checked against the adapter's ID embedding size."""
    config = adapter.encoder.config
    size = config.projection_dim + config.projection_dim_2
    return library_entry(character, library, size, "this PhotoMaker's ID embeddings have")


def library_entry(
    character: Character, library: IdentityLibrary, size: int, holds: str, refusal: str | None = None
) -> IdentityRecord:
    """The library entry ``character.identity`` names, refused when absent, when ``refusal`` says why it belongs to
    another identity space, or when it has not ``size`` values (``holds``: what has that size, for the message)."""
    assert character.identity
    record = library.get(character.identity)
    if record is None:
        raise StorycastError(
            f"character '{character.id}': identity '{character.identity}' is not in the identity library at "
            f"{library.root}. Fix: copy a key from `storycast identities list` (with the same --cache-dir), or remove "
            f"the character's identity to discover or embed one."
        )
    if refusal is not None:
        raise StorycastError(f"character '{character.id}': identity '{character.identity}' {refusal}")
    if record.embedding.numel() != size:
        raise StorycastError(
            f"character '{character.id}': identity '{character.identity}' has {record.embedding.numel()} values, but "
            f"{holds} {size} (it was made with another encoder). Fix: pick an identity made with this model and "
            f"adapter, or remove the character's identity."
        )
    logger.info("identity of '%s' taken from the library entry it names (%s)", character.id, character.identity)
    return record


def preview_sheet(images: list[Any]) -> Any:
    """The identity's preview images side by side in one row (None when there are none)."""
    from diffusers.utils import make_image_grid

    return make_image_grid(images, rows=1, cols=len(images)) if images else None


@dataclass
class IdentityFinder:
    """Finds characters' PhotoMaker v1 identities for one adapter on one base model, through the identity library.

    A subclass for another identity-preserving generator sets ``generator`` (part of every key it makes and of every
    entry's info) and overrides :meth:`search`, :meth:`embed_photos`, :meth:`run_discovery`, :meth:`named` and
    :meth:`denoiser`; the library lookups, keys, locking and progress stay these.

    Attributes:
        adapter: Gives PhotoMaker v1 on the base pipeline; called only when an embedding is computed (attaching
            PhotoMaker loads its weights, which identities already in the library do not need).
        library: The identity library.
        model_info: The loaded base model's ``info``; its :data:`MODEL_KEYS` are part of every key.
        adapter_id: The PhotoMaker weights (``{"photomaker": source, "file": file}``), part of every key.
        budget: The discovery's resolved numbers, part of discovered identities' keys.
        on_progress: Called with (candidates drawn, candidates in all, label) while an identity is discovered.
    """

    adapter: Callable[[], PhotoMakerAdapter]
    library: IdentityLibrary
    model_info: Mapping[str, Any]
    adapter_id: Mapping[str, Any]
    budget: DiscoveryBudget
    on_progress: Callable[[int, int, str], None] | None = None
    generator: ClassVar[str | None] = None
    """The identity space's name, part of every key and info (None: PhotoMaker v1's keys, as they always were)."""

    @property
    def model(self) -> dict[str, Any]:
        return {k: self.model_info.get(k) for k in MODEL_KEYS}

    def identity(self, character: Character) -> IdentityRecord:
        """The character's identity: the library entry it names, or from its photos, or from the library, or
        discovered and stored."""
        if character.identity:
            return self.named(character)
        if character.references:
            return self.from_photos(character)
        return self.discovered(character)

    # -- what differs between identity spaces -------------------------------------------------------

    def search(self, character: Character) -> str:
        """What discovery draws candidates from (part of the key): the description with PhotoMaker's trigger."""
        return search_prompt(character)

    def embed_photos(self, photos: list[Any]) -> torch.Tensor:
        """The identity of a person's photos, on the CPU."""
        return identity_from_photos(self.adapter(), photos)

    def run_discovery(self, search: str, on_image: Callable[[], None]) -> DiscoveryResult:
        """Iterative Identity Discovery from ``search``."""
        return discover_identity(self.adapter(), search, self.budget, on_image)

    def named(self, character: Character) -> IdentityRecord:
        """The library entry ``character.identity`` names, checked to fit this identity space."""
        return named_identity(character, self.library, self.adapter())

    def denoiser(self) -> torch.nn.Module:
        """The denoiser whose evaluations discovery spends."""
        return self.adapter().backbone.denoiser

    # -- the library -----------------------------------------------------------------------------------

    def key(self, parts: Mapping[str, Any]) -> str:
        """The library key of an identity of this space."""
        return identity_key(parts if self.generator is None else {"generator": self.generator, **parts})

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        return info if self.generator is None else {**info, "generator": self.generator}

    def from_photos(self, character: Character) -> IdentityRecord:
        """The mean ID embedding of the character's reference photos, stored under the photos' hashes."""

        from storycast.utils.io import sha256_file

        key = self.key(
            {"photos": [sha256_file(p) for p in character.references], "adapter": self.adapter_id, "model": self.model}
        )
        record = self.library.get(key)
        if record is None:
            photos = read_photos(character.references, f"'{character.id}'")
            embedding = self.embed_photos(photos)
            info = {
                "character": character.id,
                "source": "photos",
                "photos": [str(p) for p in character.references],
            }
            record = self.library.put(key, embedding, self._info(info))
        return record

    def discovered(self, character: Character) -> IdentityRecord:
        """The identity discovered from the character's description: from the library, or discovered now and
        stored (one process discovers it; the others wait for it, then find it stored)."""
        budget = self.budget
        search = self.search(character)
        key = self.key({"prompt": search, "model": self.model, "adapter": self.adapter_id, "budget": budget.__dict__})
        with self.library.claim(key):  # one process discovers it; the others wait here, then find it stored
            record = self.library.get(key)
            if record is not None:
                logger.info("identity of '%s' found in the library (%s)", character.id, key)
                return record
            return self._discover(character, search, key)

    def _discover(self, character: Character, search: str, key: str) -> IdentityRecord:
        """Discover ``character``'s identity (the authors' iterative SVD discovery) and store it under ``key``."""
        budget = self.budget
        total = budget.candidates * budget.loops
        done = 0
        label = f"identity of {character.display_name}"
        progress = self.on_progress or (lambda done, total, label: None)
        progress(0, total, label)

        def on_image() -> None:
            nonlocal done
            done += 1
            progress(min(done, total), total, label)

        logger.info("discovering the identity of '%s' (%d candidates)", character.id, total)
        denoiser = self.denoiser()
        started = time.perf_counter()
        with count_evaluations(denoiser) as counter:
            result = self.run_discovery(search, on_image)
        info = {
            "character": character.id,
            "source": "discovered",
            "prompt": search,
            "budget": budget.__dict__,
            "kept": result.kept,
            "denoiser_evaluations": counter.evaluations,
            "seconds": round(time.perf_counter() - started, 2),
        }
        return self.library.put(key, result.identity, self._info(info), preview=preview_sheet(result.previews))

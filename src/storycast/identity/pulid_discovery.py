"""IdentityStory's Iterative Identity Discovery in PuLID-FLUX's identity space (our extension of the paper, see
docs/methods/identitystory.md "On FLUX").

The loop is the paper's (§3.2), with FLUX as the generator and PuLID-FLUX's encoders as the embedding:

1. draw m candidates from the character's description with FLUX (the first loop plain FLUX; later loops with the
   identity found so far given to PuLID's ID branch after ``start_merge_step``, as PhotoMaker's merge step);
2. embed each candidate into PuLID's ID tokens (ArcFace + EVA02-CLIP through IDFormer: (K, D), 32 x 2048 for the
   official weights), flattened to one row;
3. keep the rows the iterative SVD filter keeps (:func:`storycast.identity.svd_filter.svd_filter`, unchanged);
4. the identity is the mean of the kept rows: ID tokens again, what the branch reads.

The SVD filter acts on the ID tokens rather than on the ArcFace embedding alone because they are what conditions
the generator, as PhotoMaker v1's ID embedding is on SDXL: a mean of ArcFace embeddings would still need an image to
become tokens, and the mean of tokens is read by the branch's key and value projections as one identity.

:class:`PulidIdentityFinder` keeps these identities in the identity library under keys that name the generator
(``flux+pulid-flux``), so an SDXL + PhotoMaker identity is never read for a FLUX run, nor the reverse.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from storycast.identity.discovery import DiscoveryBudget, DiscoveryResult, IdentityFinder, library_entry
from storycast.identity.library import IdentityRecord
from storycast.identity.photomaker_faces import NoFaceError
from storycast.identity.pulid_flux_branch import IDTarget, PuLIDFluxBranch
from storycast.identity.svd_filter import svd_filter
from storycast.pipelines.families.base import Family
from storycast.pipelines.sampler import Sampling, sample
from storycast.story.model import Character
from storycast.utils.torch_utils import make_generator

logger = logging.getLogger(__name__)

GENERATOR = "flux+pulid-flux"
"""The identity space's name in library keys and infos."""


class PulidIdentitySpace(Protocol):
    """PuLID-FLUX on a loaded FLUX: what discovery draws with and embeds into (:class:`PulidSpace`).

    Attributes:
        backbone: The FLUX family of the pipeline.
        token_shape: (K, D) of one identity's ID tokens.
    """

    backbone: Family
    token_shape: tuple[int, int]

    def branch(self) -> PuLIDFluxBranch:
        """PuLID's ID branch attached to the transformer; a handle that detaches it."""
        ...

    def id_tokens(self, images: Sequence[Any]) -> torch.Tensor:
        """(n, K, D) float32 ID tokens of n images (PIL), one identity each."""
        ...

    def photo_tokens(self, photos: Sequence[Any], names: Sequence[str]) -> torch.Tensor:
        """(K, D) ID tokens of one person's photos."""
        ...

    def uncond_tokens(self) -> torch.Tensor:
        """(K, D) PuLID's unconditional ID tokens (true CFG's uncond rows)."""
        ...


@contextlib.contextmanager
def branch_acting(space: PulidIdentitySpace, rows: Any) -> Iterator[PuLIDFluxBranch]:
    """The ID branch attached with ``rows`` (one list of ``IDTarget`` per batch row, or None) for a block, detached
    after it whatever happens."""
    with space.branch() as branch, branch.rows(rows):
        yield branch


@dataclass
class PulidSpace:
    """:class:`PulidIdentitySpace` of a :class:`~storycast.identity.pulid_flux_adapter.PuLIDFluxAdapter` and its face
    models.

    A candidate in which the face detector finds no face is embedded whole (its centre square as the aligned face,
    the image at 112 px for ArcFace) rather than dropped: the candidate count stays the one the SVD filter's schedule
    is made for (64 -> 38 -> 22 -> 13), and a faceless candidate, unlike the rest, is the outlier the filter removes.
    Its index is recorded (``faceless``). Reference photos are read strictly: a photo without a face is an error.
    """

    backbone: Family
    adapter: Any
    faces: Any
    faceless: list[int] = field(default_factory=list)
    _parked: dict[str, Any] = field(default_factory=dict)
    _uncond: torch.Tensor | None = None

    @property
    def token_shape(self) -> tuple[int, int]:
        config = self.adapter.pulid.config
        return (config.num_queries, config.output_dim)

    def branch(self) -> PuLIDFluxBranch:
        return self.adapter.branch()

    def _encoders(self) -> dict[str, torch.nn.Module]:
        return {"eva": self.adapter.eva, "idformer": self.adapter.pulid.pulid_encoder}

    def offload_encoders(self) -> None:
        """Move EVA02-CLIP and IDFormer to the CPU until an image is embedded again: drawing needs only the
        cross-attention modules (and the unconditional tokens, kept)."""
        if self._parked:
            return
        self._uncond = self.uncond_tokens()
        for name, module in self._encoders().items():
            self._parked[name] = next(module.parameters()).device
            module.to("cpu")

    def _restore_encoders(self) -> None:
        for name, module in self._encoders().items():
            if name in self._parked:
                module.to(self._parked[name])
        self._parked = {}

    def id_tokens(self, images: Sequence[Any]) -> torch.Tensor:
        self._restore_encoders()
        self.faceless = []
        tokens = []
        for number, image in enumerate(images):
            try:
                face = self.faces.read(image, f"candidate {number}")
            except NoFaceError:
                self.faceless.append(number)
                face = whole_image_face(self.faces, image)
            tokens.append(self.adapter.id_tokens([face])[0])
        return torch.stack(tokens)

    def photo_tokens(self, photos: Sequence[Any], names: Sequence[str]) -> torch.Tensor:
        """(K, D) ID tokens of one person's photos (their mean, as the adapter makes it); no face is an error."""
        self._restore_encoders()
        return self.adapter.id_tokens([self.faces.read(p, n) for p, n in zip(photos, names, strict=True)])[0]

    def uncond_tokens(self) -> torch.Tensor:
        # IDFormer of a zero condition and zero features (``cal_uncond``): the same whatever the face, so a blank one.
        if self._uncond is None:
            from storycast.identity.pulid_faces import ALIGNED_SIZE, PuLIDFace

            self._restore_encoders()
            blank = PuLIDFace(torch.zeros(512), torch.zeros(3, ALIGNED_SIZE, ALIGNED_SIZE))
            self._uncond = self.adapter.id_tokens([blank])[1]
        return self._uncond


def whole_image_face(faces: Any, image: Any) -> Any:
    """A candidate without a detected face as PuLID would read a face: the ArcFace embedding of the image at 112 px
    and its centre square, 512 px and grey, as the aligned face."""
    import numpy as np
    from PIL import Image

    from storycast.identity.pulid_faces import ALIGNED_SIZE, PuLIDFace, to_grey

    rgb = image.convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    arcface = faces.embedder.embed([square.resize((112, 112), Image.Resampling.BICUBIC)], normalize=False)[0]
    aligned = square.resize((ALIGNED_SIZE, ALIGNED_SIZE), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(aligned, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return PuLIDFace(arcface.float(), to_grey(pixels)[0])


@contextlib.contextmanager
def decoding_one_at_a_time(backbone: Any) -> Iterator[None]:
    """The VAE decodes a batch image by image while candidates are drawn (diffusers' VAE slicing), then as before.

    A batch of 16 candidates at 1024 px decoded at once takes ~32 GB of activations (benchmarks/RESULTS.md, "pulid and
    identitystory on FLUX.1-dev at 1024 px"), more than the transformer itself; one at a time it takes a sixteenth,
    for a decode that is a small part of a candidate's cost.
    """
    vae = getattr(getattr(backbone, "pipe", None), "vae", None)
    if vae is None or getattr(vae, "use_slicing", True):
        yield
        return
    vae.enable_slicing()
    try:
        yield
    finally:
        vae.disable_slicing()


@torch.no_grad()
def draw_flux_candidates(
    space: PulidIdentitySpace,
    prompt: str,
    identity: torch.Tensor | None,
    seeds: Sequence[int],
    budget: DiscoveryBudget,
    id_weight: float,
    on_image: Callable[[], None] | None = None,
) -> list[Any]:
    """One FLUX image of ``prompt`` per seed, in batches; with ``identity`` ((K, D) ID tokens) PuLID's branch acts on
    every row from step ``start_merge_step + 1`` (the text alone while i <= start_merge_step, as the authors merge)."""
    backbone = space.backbone
    guidance = backbone.guidance(budget.guidance_scale)
    sampling = Sampling(budget.width, budget.height, budget.steps, guidance)
    conditioning = backbone.encode([prompt], [budget.negative_prompt], **_size(budget), guidance=guidance)
    images: list[Any] = []
    for start in range(0, len(seeds), budget.batch_size):
        batch = list(seeds[start : start + budget.batch_size])
        targets = None
        if identity is not None:
            target = IDTarget(identity, weight=id_weight, start_step=budget.start_merge_step + 1)
            targets = [[target] for _ in range(len(batch) * guidance.halves)]
        generators = [make_generator(seed, str(backbone.device)) for seed in batch]
        with branch_acting(space, targets) as branch, decoding_one_at_a_time(backbone):
            drawn = sample(backbone, conditioning.repeat(len(batch)), generators, sampling, states=[branch])
        for image in drawn.images:
            images.append(image)
            if on_image is not None:
                on_image()
    return images


def _size(budget: DiscoveryBudget) -> dict[str, int]:
    return {"width": budget.width, "height": budget.height}


@torch.no_grad()
def discover_pulid_identity(
    space: PulidIdentitySpace,
    prompt: str,
    budget: DiscoveryBudget,
    id_weight: float,
    on_image: Callable[[], None] | None = None,
) -> DiscoveryResult:
    """Find an identity for a description in PuLID's identity space (module docstring); the identity is (K x D,)."""
    identity: torch.Tensor | None = None
    kept: list[list[int]] = []
    for loop in range(budget.loops):
        seeds = [budget.seed + loop * budget.candidates + j for j in range(budget.candidates)]
        tokens = None if identity is None else identity.reshape(space.token_shape)
        images = draw_flux_candidates(space, prompt, tokens, seeds, budget, id_weight, on_image)
        embeddings = space.id_tokens(images).flatten(1).float()
        result = svd_filter(embeddings, budget.svd_rank, budget.svd_keep_ratio, budget.svd_iterations)
        identity = result.identity.float()
        kept.append(result.indices.tolist())
    assert identity is not None
    preview_seeds = [budget.seed + budget.loops * budget.candidates + j for j in range(budget.preview_images)]
    previews = draw_flux_candidates(
        space, prompt, identity.reshape(space.token_shape), preview_seeds, budget, id_weight
    )
    return DiscoveryResult(identity=identity.cpu(), previews=previews, kept=kept)


@dataclass
class PulidIdentityFinder(IdentityFinder):
    """:class:`IdentityFinder` in PuLID-FLUX's identity space: ``adapter`` gives a :class:`PulidIdentitySpace`
    (attached when first needed), keys and infos name :data:`GENERATOR`, and candidates are drawn with FLUX from the
    character's description.

    Attributes:
        id_weight: PuLID's ``id_weight`` of later loops and previews.
    """

    id_weight: float = 1.0
    generator = GENERATOR

    def search(self, character: Character) -> str:
        # No trigger word: PuLID reads no token of the prompt; the description is what FLUX draws.
        return character.description

    def identity(self, character: Character) -> IdentityRecord:
        # PuLID reads a face: a character whose photos show none to antelopev2 (a stylised drawing, ViStoryBench's
        # unrealistic_human) is discovered from its description instead of failing the story, with a warning.
        if character.references and not character.identity:
            try:
                return self.from_photos(character)
            except NoFaceError as err:
                logger.warning("%s '%s' is discovered from its description instead.", err, character.id)
                return self.discovered(character)
        return super().identity(character)

    def embed_photos(self, photos: list[Any]) -> torch.Tensor:
        # The mean of the photos' ID tokens (the adapter's; PuLID-FLUX v0.9.1 itself reads one photo), flattened.
        names = [f"{n + 1} of {len(photos)}" for n in range(len(photos))]
        return self.adapter().photo_tokens(photos, names).float().reshape(-1).cpu()

    def run_discovery(self, search: str, on_image: Callable[[], None]) -> DiscoveryResult:
        return discover_pulid_identity(self.adapter(), search, self.budget, self.id_weight, on_image)

    def denoiser(self) -> torch.nn.Module:
        return self.adapter().backbone.denoiser

    def named(self, character: Character) -> IdentityRecord:
        assert character.identity
        info = self.library.info(character.identity)
        made_by = None if info is None else info.get("generator", "sdxl+photomaker")
        refusal = None
        if made_by not in (None, GENERATOR):
            refusal = (
                f"was made by {made_by}, not by FLUX + PuLID-FLUX; identities of different generators do not mix. "
                f"Fix: pick an identity made on FLUX (`storycast identities list`), or remove the character's "
                f"identity to discover one."
            )
        rows, width = self.adapter().token_shape
        return library_entry(
            character, self.library, rows * width, f"this PuLID-FLUX's ID tokens ({rows} x {width}) have", refusal
        )

"""``storycast data build SRC --out DATA``: a folder of images and videos -> StoryDB-style character sets.

Steps (``docs/training.md``):

1. **scan** the source (``data/sources.py``): images, video frames (PyAV), sidecar captions and masks, known
   identities (a sub-folder per character, or ``characters.yaml``);
2. **identities** of the rest by clustering embeddings (ArcFace through our face pipeline when the face models
   are on the machine, else DINOv2 features), cos >= a threshold;
3. **masks**: sidecar files, else GroundingDINO + SAM on the class words (our mask provider), else the
   model-free contrast segmenter (``data/ops.py``; the tiny preset's);
4. **captions**: sidecar files, else a captioning model (BLIP through transformers), else a template; every
   caption names each character it shows by its class word, so the auto-masks have a token to track;
5. **filters**: near duplicates and repeated backgrounds (average hashes) are dropped, and sets with fewer
   than ``min_images`` images;
6. **write** the parquet shards, the card and a contact sheet per set, atomically.

Each image's analysis is kept in ``DATA.partial/`` as it is made, so an interrupted build resumes where it
stopped; the data set replaces nothing until it is complete. A build never loses the user's files: it refuses an
output that is, holds or lies inside the source, a link, or anything but a data set (``--overwrite`` replaces a data
set only), and deletes only the ``DATA.partial/`` folder it marked as its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from storycast.data.format import CharacterSet, DataSetInfo, write_dataset
from storycast.data.sources import SourceItem, scan_source, video_frames
from storycast.errors import StorycastError
from storycast.models.presets import ADAPTERS
from storycast.settings import MethodSettings, check_range, setting

logger = logging.getLogger(__name__)

CAPTION_MODEL = "Salesforce/blip-image-captioning-base"


@dataclass(frozen=True)
class BuildSettings(MethodSettings):
    """How ``storycast data build`` makes character sets (``storycast data build --help`` lists them)."""

    min_images: int = setting(4, "Smallest set kept: Storynizor trains on groups of 4 images of one character.")
    max_images: int = setting(64, "Images kept per set at most (the first ones, in source order).")
    class_word: str = setting(
        "person", "Class word of characters whose word characters.yaml does not give (and of found identities)."
    )
    max_side: int = setting(
        768, "Images are shrunk so that their longer side is at most this (SD 1.5 trains at 512-768)."
    )
    masks: Literal["auto", "grounded-sam", "contrast"] = setting(
        "auto",
        "Masks of images without sidecar masks: 'grounded-sam' (GroundingDINO + SAM on the class words), "
        "'contrast' (what stands out from the border colour; no model), 'auto' (grounded-sam when its weights are "
        "on this machine and the preset is not tiny, else contrast).",
    )
    detector: str = setting(ADAPTERS["grounding-dino"].repo_id, "GroundingDINO checkpoint for grounded-sam masks.")
    segmenter: str = setting(ADAPTERS["sam"].repo_id, "SAM checkpoint for grounded-sam masks.")
    box_threshold: float = setting(0.3, "GroundingDINO box threshold (IdentityStory's 0.3).")
    captions: Literal["auto", "given", "model", "template"] = setting(
        "auto",
        "Captions of images without a sidecar .txt: 'model' (caption_model), 'template' (caption_template), "
        "'given' (a missing caption is an error), 'auto' (the model when it is on this machine and the preset is not "
        "tiny, else the template).",
    )
    caption_model: str = setting(CAPTION_MODEL, "Image-captioning model (transformers) for captions: model.")
    caption_template: str = setting(
        "a photo of {characters}", "Template caption; {characters} becomes 'a woman and a man'."
    )
    identities: Literal["auto", "faces", "dino"] = setting(
        "auto",
        "Embeddings that cluster images of unknown characters: 'faces' (ArcFace), 'dino' (DINOv2), 'auto' (faces "
        "when the face models are on this machine, else dino).",
    )
    face_threshold: float = setting(0.5, "Cosine similarity that links two faces (ArcFace; insightface's examples).")
    dino_threshold: float = setting(0.8, "Cosine similarity that links two images by DINOv2 features.")
    face_models: str | None = setting(None, "Folder of the insightface pack (default ~/.insightface/models).")
    near_duplicate_bits: int = setting(
        4, "Images whose average hashes differ in at most this many of 64 bits are near duplicates: one is kept."
    )
    background_bits: int = setting(
        6,
        "Images of a set whose backgrounds (the character painted over) hash within this many bits share one "
        "background: one is kept, for background variety (-1: keep all). Our choice: the same background with the "
        "character moved differs by ~4 bits, different ones by 15 or more.",
    )
    video_every_seconds: float = setting(1.0, "A video frame is taken every this many seconds.")
    video_max_frames: int = setting(64, "Frames taken per video at most.")

    def validate(self) -> None:
        check_range("min_images", self.min_images, 1)
        check_range("max_images", self.max_images, self.min_images)
        check_range("max_side", self.max_side, 64)
        check_range("box_threshold", self.box_threshold, 0, 1)
        check_range("face_threshold", self.face_threshold, -1, 1)
        check_range("dino_threshold", self.dino_threshold, -1, 1)
        check_range("near_duplicate_bits", self.near_duplicate_bits, 0, 64)
        check_range("background_bits", self.background_bits, -1, 64)
        check_range("video_max_frames", self.video_max_frames, 1)
        if self.video_every_seconds <= 0:
            raise StorycastError(f"video_every_seconds must be positive, got {self.video_every_seconds}.")
        if "{characters}" not in self.caption_template:
            raise StorycastError(
                f"caption_template {self.caption_template!r} must hold {{characters}}, where the class words go."
            )


@dataclass
class Analysed:
    """One image after analysis: what it shows, where, and its caption."""

    name: str
    characters: list[str]
    caption: str
    mask_files: list[str]
    image_file: str


def ensure_class_words(caption: str, words: Sequence[str]) -> str:
    """``caption`` with every class word in ``words`` present: a missing one is put in front ("a woman, ...")."""
    missing = [w for w in words if not re.search(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", caption, re.IGNORECASE)]
    if not missing:
        return caption
    return (
        ", ".join([" and ".join(f"a {w}" for w in missing), caption])
        if caption
        else " and ".join(f"a {w}" for w in missing)
    )


def _key(item: SourceItem, root: Path, frame: int | None, settings: BuildSettings) -> str:
    stat = item.path.stat()
    text = json.dumps(
        [item.path.relative_to(root).as_posix(), frame, stat.st_size, stat.st_mtime_ns, asdict(settings)]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Builder:
    """Builds one data set; see the module docstring. Models are loaded on first need."""

    def __init__(
        self, settings: BuildSettings, *, tiny: bool = False, device: str = "cpu", local_files_only: bool = False
    ):
        self.settings = settings
        self.tiny = tiny
        self.device = device
        self.local_files_only = local_files_only
        self._segmenter: Any = None
        self._captioner: Any = None
        self._embedder: Any = None

    # -- steps ---------------------------------------------------------------------------------------

    def frames_of(self, item: SourceItem) -> Iterator[tuple[int | None, Any]]:
        """(video frame index or None, image) of one source item, one at a time, shrunk to ``max_side``."""
        from PIL import Image, UnidentifiedImageError

        if item.frame is not None:
            for index, image in video_frames(
                item.path, self.settings.video_every_seconds, self.settings.video_max_frames
            ):
                yield index, self._shrink(image)
            return
        try:
            with Image.open(item.path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise StorycastError(
                f"{item.path} is not a readable image ({type(err).__name__}). Fix: replace or remove it; the build "
                f"resumes where it stopped."
            ) from None
        yield None, self._shrink(image)

    def _shrink(self, image: Any) -> Any:
        side = max(image.size)
        if side <= self.settings.max_side:
            return image
        scale = self.settings.max_side / side
        from PIL import Image

        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)

    @property
    def cluster_threshold(self) -> float:
        return self.settings.face_threshold if self._embedder_kind() == "faces" else self.settings.dino_threshold

    def _embedder_kind(self) -> str:
        if self.settings.identities != "auto":
            return self.settings.identities
        from storycast.errors import MissingWeightsError
        from storycast.vision.faces import find_face_models

        try:
            find_face_models(self.settings.face_models)
            return "faces"
        except MissingWeightsError:
            return "dino"

    def embed(self, image: Any) -> Any:
        """The identity embedding (d,) of one image of an unknown character, or None (no face); the embedder
        is loaded on first use."""
        if self._embedder is None:
            if self._embedder_kind() == "faces":
                from storycast.vision.faces import FaceAnalyzer

                self._embedder = FaceAnalyzer.from_folder(self.settings.face_models, setting="--set face_models=")
            else:
                from storycast.vision.features import DEFAULT_DINO_CHECKPOINT, DinoFeatures

                self._embedder = (
                    DinoFeatures.tiny()
                    if self.tiny
                    else DinoFeatures.from_pretrained(
                        DEFAULT_DINO_CHECKPOINT, device=self.device, local_files_only=self.local_files_only
                    )
                )
        if self._embedder_kind() == "faces":
            return self._embedder.main_faces([image])[0]
        return self._embedder.encode_images([image])[0]

    def masks(
        self, item: SourceItem, image: Any, characters: Sequence[str], class_words: dict[str, str]
    ) -> list[np.ndarray] | None:
        """One boolean mask per character, or None when they cannot be found."""
        from PIL import Image

        if item.masks:
            files = [item.masks.get(c) or (item.masks.get("") if len(characters) == 1 else None) for c in characters]
            if all(files):
                return [np.asarray(Image.open(f).convert("L").resize(image.size)) > 127 for f in files]  # type: ignore[arg-type]
        kind = self._mask_kind()
        if kind == "contrast":
            if len(characters) != 1:
                return None  # one region stands out: it cannot tell several characters apart
            from storycast.data.ops import contrast_mask

            mask = contrast_mask(image)
            return [mask] if mask.any() else None
        from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError

        provider = self._grounded_sam()
        queries = [CharacterQuery(c, class_words[c]) for c in characters]
        try:
            found = provider(MaskInputs(image, queries))
        except MaskNotFoundError:
            return None
        return [found[c].cpu().numpy().astype(bool) for c in characters]

    def _mask_kind(self) -> str:
        if self.settings.masks != "auto":
            return self.settings.masks
        from storycast.masks.registry import MaskSettings, detector_available

        settings = MaskSettings(detector=self.settings.detector, segmenter=self.settings.segmenter)
        return "grounded-sam" if not self.tiny and detector_available(settings) else "contrast"

    def _grounded_sam(self) -> Any:
        if self._segmenter is None:
            from storycast.masks.registry import MaskSettings, build_provider

            settings = MaskSettings(
                detector=self.settings.detector,
                segmenter=self.settings.segmenter,
                box_threshold=self.settings.box_threshold,
            )
            self._segmenter = build_provider(
                "grounded-sam", settings, device=self.device, local_files_only=self.local_files_only
            )
        return self._segmenter

    def caption(self, item: SourceItem, image: Any, words: Sequence[str]) -> str:
        """The image's caption, naming every character's class word."""
        if item.caption:
            return ensure_class_words(item.caption, words)
        kind = self.settings.captions
        if kind == "given":
            raise StorycastError(
                f"{item.path} has no caption file ({item.path.with_suffix('.txt').name}) and captions=given. Fix: write "
                f"one, or --set captions=template (or model)."
            )
        if kind == "auto":
            kind = "template" if self.tiny or not self._caption_model_available() else "model"
        if kind == "template":
            return self.settings.caption_template.format(characters=" and ".join(f"a {w}" for w in words))
        return ensure_class_words(self._caption_with_model(image), words)

    def _caption_model_available(self) -> bool:
        from huggingface_hub import try_to_load_from_cache

        source = self.settings.caption_model
        if Path(source).is_dir():
            return True
        try:
            return isinstance(try_to_load_from_cache(source, "config.json"), str)
        except ValueError:
            return False

    def _caption_with_model(self, image: Any) -> str:
        import torch

        if self._captioner is None:
            from transformers import BlipForConditionalGeneration, BlipProcessor

            from storycast.models.checkpoints import load_checkpoint

            def load(path: str, offline: bool) -> Any:
                return (
                    BlipProcessor.from_pretrained(path, local_files_only=offline),
                    BlipForConditionalGeneration.from_pretrained(path, local_files_only=offline)
                    .to(self.device)
                    .eval(),
                )

            self._captioner = load_checkpoint(
                load,
                self.settings.caption_model,
                what="captioning model",
                point_at="set caption_model to",
                local_files_only=self.local_files_only,
            )
        processor, model = self._captioner
        with torch.no_grad():
            inputs = processor(images=image, return_tensors="pt").to(self.device)
            ids = model.generate(**inputs, max_new_tokens=40)
        return processor.decode(ids[0], skip_special_tokens=True).strip()


def _cached_embedding(builder: Builder, image: Any, stem: Path) -> Any:
    """The identity embedding of an image of an unknown character, kept beside its source image in the work
    folder (``<key>.source.png``, ``<key>.embedding.pt``; a resumed build reads both back); None without a face."""
    import torch

    source, cached = stem.with_name(stem.name + ".source.png"), stem.with_name(stem.name + ".embedding.pt")
    if not source.is_file():
        image.save(source)
    if cached.is_file():
        return torch.load(cached, weights_only=True)
    embedding = builder.embed(image)
    torch.save(embedding, cached)
    return embedding


def build_dataset(
    source: str | Path,
    out: str | Path,
    settings: BuildSettings | None = None,
    *,
    tiny: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
    local_files_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DataSetInfo:
    """Build the data set of ``source`` into ``out`` (see the module docstring); returns what the card says.

    Raises:
        StorycastError: The source holds nothing usable, no set reaches ``min_images``, an image is unreadable,
            or ``out`` holds something else and ``overwrite`` is not set.
    """
    from PIL import Image

    from storycast.data.ops import average_hash, background_hash, near_duplicates
    from storycast.utils.io import atomic_directory

    settings = settings or BuildSettings()
    out = Path(out).expanduser()
    work = out.with_name(out.name + ".partial")
    _check_out(Path(source).expanduser(), out, work, overwrite)
    scanned = scan_source(source)
    builder = Builder(settings, tiny=tiny, device=device, local_files_only=local_files_only)
    (work / "items").mkdir(parents=True, exist_ok=True)
    (work / WORK_MARK).touch()
    words = {name: word or settings.class_word for name, word in scanned.class_words.items()}
    dropped: dict[str, int] = {}

    def drop(reason: str, count: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + count

    def analyse(
        item: SourceItem, frame: int | None, image: Any, characters: Sequence[str], key: str
    ) -> Analysed | None:
        """Masks and caption of one image, kept in the work folder (a resumed build reads them back)."""
        for name in characters:
            words.setdefault(name, settings.class_word)
        record = work / "items" / f"{key}.json"
        if record.is_file():  # analysed by an earlier, interrupted build
            entry = Analysed(**json.loads(record.read_text()))
            return dataclasses.replace(entry, characters=list(characters))  # found identities are renumbered
        masks = builder.masks(item, image, characters, words)
        if masks is None:
            drop("characters not found")
            return None
        caption = builder.caption(item, image, [words[c] for c in characters])
        image.save(work / "items" / f"{key}.png")
        mask_files = []
        for number, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(work / "items" / f"{key}.mask{number}.png")
            mask_files.append(f"{key}.mask{number}.png")
        name = (
            item.name(scanned.root) if frame is None else f"{item.path.relative_to(scanned.root).as_posix()}#{frame}"
        )
        entry = Analysed(name, list(characters), caption, mask_files, f"{key}.png")
        record.write_text(json.dumps(asdict(entry)))
        return entry

    # 1. Every image, one at a time: known characters analysed now; the others embedded for clustering.
    analysed: list[Analysed] = []
    unknown: list[tuple[str, SourceItem, int | None, Any]] = []
    for done, item in enumerate(scanned.items):
        if progress is not None:
            progress(done, len(scanned.items))
        for frame, image in builder.frames_of(item):
            key = _key(item, scanned.root, frame, settings)
            if item.characters is None:
                unknown.append((key, item, frame, _cached_embedding(builder, image, work / "items" / key)))
            elif (entry := analyse(item, frame, image, item.characters, key)) is not None:
                analysed.append(entry)
    if progress is not None:
        progress(len(scanned.items), len(scanned.items))
    # 2. Identities of the rest: clusters of their embeddings (all of them, so a resumed build numbers alike).
    usable = [u for u in unknown if u[3] is not None]
    if len(unknown) > len(usable):
        drop("no face to cluster", len(unknown) - len(usable))
    if usable:
        import torch

        from storycast.data.ops import cluster_embeddings

        labels = cluster_embeddings(torch.stack([u[3] for u in usable]), builder.cluster_threshold)
        for (key, item, frame, _), label in zip(usable, labels, strict=True):
            image = Image.open(work / "items" / f"{key}.source.png").convert("RGB")
            if (entry := analyse(item, frame, image, (f"{settings.class_word}_{label:03d}",), key)) is not None:
                analysed.append(entry)

    # 3. Sets by the characters they show; filters inside each set (hashes only: one image open at a time).
    def load(file: str, mode: str = "RGB") -> Any:
        with Image.open(work / "items" / file) as opened:
            return opened.convert(mode)

    by_set: dict[tuple[str, ...], list[Analysed]] = {}
    for entry in analysed:
        by_set.setdefault(tuple(sorted(entry.characters)), []).append(entry)
    planned: list[tuple[tuple[str, ...], list[Analysed]]] = []
    for names, entries in sorted(by_set.items()):
        duplicates = set(
            near_duplicates([average_hash(load(e.image_file)) for e in entries], settings.near_duplicate_bits)
        )
        kept = [e for i, e in enumerate(entries) if i not in duplicates]
        drop("near duplicates", len(duplicates))
        if settings.background_bits >= 0:
            hashes = [
                background_hash(
                    load(e.image_file), np.any([np.asarray(load(m, "L")) > 127 for m in e.mask_files], axis=0)
                )
                for e in kept
            ]
            repeated = set(near_duplicates(hashes, settings.background_bits))
            drop("repeated backgrounds", len(repeated))
            kept = [e for i, e in enumerate(kept) if i not in repeated]
        kept = kept[: settings.max_images]
        if len(kept) < settings.min_images:
            drop(f"sets under {settings.min_images} images", len(kept))
            continue
        planned.append((names, kept))
    if not planned:
        raise StorycastError(
            f"no character set of '{scanned.root}' has {settings.min_images} or more usable images ({dropped or 'none'} "
            f"left out). Fix: add images per character, or --set min_images=N; what was analysed is kept in {work}."
        )

    def character_set(names: tuple[str, ...], kept: list[Analysed]) -> CharacterSet:
        return CharacterSet(
            "+".join(names),
            [(n, words[n]) for n in names],
            [load(e.image_file) for e in kept],
            [e.caption for e in kept],
            [e.characters for e in kept],
            [[load(m, "L") for m in e.mask_files] for e in kept],
            [e.name for e in kept],
        )

    info = DataSetInfo(
        sets=len(planned),
        images=sum(len(kept) for _, kept in planned),
        characters=len({c for names, _ in planned for c in names}),
        multi_character_sets=sum(len(names) > 1 for names, _ in planned),
        source=str(scanned.root),
        built_with={**asdict(settings), "tiny": tiny},
        dropped=dropped,
    )
    with atomic_directory(out) as staging:

        def make(names: tuple[str, ...], kept: list[Analysed]) -> Callable[[], CharacterSet]:
            def one() -> CharacterSet:  # a set's images are loaded when it is written, its sheet drawn then
                made = character_set(names, kept)
                write_contact_sheets([made], staging / "contact_sheets")
                return made

            return one

        write_dataset([make(names, kept) for names, kept in planned], staging, info)
    shutil.rmtree(work, ignore_errors=True)  # ours: _check_out refused a work folder without our mark
    return info


WORK_MARK = ".storycast-build"
"""The file that marks a ``DATA.partial`` folder as a build's own work (the only kind a build deletes)."""


def _check_out(source: Path, out: Path, work: Path, overwrite: bool) -> None:
    """Refuse, before anything is read, an ``out`` the build would lose the user's files through: the source
    itself, a folder holding it or one inside it; a link; something other than a data set (even with
    ``overwrite``, which replaces a data set only); and a ``OUT.partial`` folder the build did not make."""
    from storycast.data.format import MANIFEST_FILE

    mine, theirs = out.resolve(), source.resolve()
    if mine == theirs or theirs.is_relative_to(mine) or mine.is_relative_to(theirs):
        where = "is" if mine == theirs else ("holds" if theirs.is_relative_to(mine) else "lies inside")
        raise StorycastError(
            f"--out '{out}' {where} the source folder '{source}'; building there would replace or mix with your "
            f"photos. Fix: pick an --out outside the source, e.g. {theirs.parent / (theirs.name + '-data')}."
        )
    for path in (out, work):
        if path.is_symlink():
            raise StorycastError(
                f"'{path}' is a symbolic link; a build does not replace or write through links. Fix: pass the "
                f"folder it points to ({path.resolve()}) as --out, or another --out."
            )
    if os.path.lexists(out):
        dataset = out.is_dir() and (out / MANIFEST_FILE).is_file()
        if not overwrite or not dataset:
            what = "a data set" if dataset else "files that are not a storycast data set"
            fix = (
                "pass --overwrite (overwrite=True in Python) to replace it, or another --out"
                if dataset
                else "pick another --out (--overwrite replaces only a data set a build made)"
            )
            raise StorycastError(f"'{out}' already holds {what}. Fix: {fix}.")
    if os.path.lexists(work) and not (work / WORK_MARK).is_file():
        raise StorycastError(
            f"'{work}' exists and is not the work folder of an earlier build (a build keeps its analyses there and "
            f"deletes it when done). Fix: move it away, or pick another --out."
        )


def write_contact_sheets(sets: Sequence[CharacterSet], folder: Path, thumb: int = 128, columns: int = 8) -> None:
    """A sheet per set: every image with its characters' masks tinted red, for a person to check."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for character_set in sets:
        tiles = []
        for image, masks in zip(character_set.images, character_set.masks, strict=True):
            pixels = np.asarray(image.convert("RGB").resize((thumb, thumb)), dtype=np.float32)
            for mask in masks:
                inside = np.asarray(mask.resize((thumb, thumb))) > 127
                pixels[inside] = 0.6 * pixels[inside] + 0.4 * np.array([255.0, 0.0, 0.0])
            tiles.append(Image.fromarray(pixels.astype(np.uint8)))
        cols = min(columns, len(tiles))
        rows = -(-len(tiles) // cols)
        tiles += [Image.new("RGB", (thumb, thumb), "white")] * (rows * cols - len(tiles))
        make_image_grid(tiles, rows=rows, cols=cols).save(folder / f"{character_set.set_id}.png")

"""The Evaluator: extractors loaded once, features cached on disk, scores and results written.

``Evaluator(preset, options)`` scores run folders with one protocol (an :class:`EvalPreset`):

- each extractor (CLIP, a second CLIP for CLIP-I, DINO, faces, Q-Align) is loaded on first use and
  kept for the life of the evaluator, so a benchmark loads each once;
- the frames of a story are encoded in batches, and only those not in the feature cache
  (``<cache>/features``, keyed by image sha256 and extractor identity, see ``cache.py``): rescoring
  with another preset that shares an extractor, or again after a crash, recomputes nothing;
- ``score_run`` writes ``scores.json`` and the contact sheet ``scores.png`` into the run folder, and
  skips a run whose ``scores.json`` was made by the same protocol and extractors from the same frames;
- ``evaluate`` scores a run or a tree of runs and writes ``results.json``, ``results.md`` and the chart
  ``results.png`` (see ``report.py``).

``ExtractorOptions`` says where the models come from: the preset's checkpoints (Hub ids, cached), local
copies (``--clip-model`` ...), or tiny random-weight stand-ins (``tiny=True``, ``--preset tiny``) that
keep the protocol and run offline.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from storycast.errors import RunFolderError, SettingsError, StoryError
from storycast.evaluation.cache import FeatureCache, namespace_of
from storycast.evaluation.presets import QALIGN_TASKS, EvalPreset, template_fields
from storycast.evaluation.report import (
    ScoredRun,
    build_results,
    compare_results,
    comparison_markdown,
    results_markdown,
)
from storycast.evaluation.runfolders import (
    BENCHMARK_RECORD,
    CONTACT_SHEET_NAME,
    RESULTS_CHART,
    RESULTS_JSON,
    RESULTS_MD,
    SCORES_NAME,
    EvalRun,
    find_runs,
    load_run,
    read_json,
    run_status,
)
from storycast.evaluation.scoring import FrameFaces, StoryInputs, StoryScores, score_story
from storycast.evaluation.vistory_run import STYLE_METRICS, VISTORY_METRICS, needs_cids
from storycast.methods.base import ProgressCallback, ProgressEvent, no_progress
from storycast.utils.io import (
    atomic_directory,
    atomic_save_image,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
    sha256_json,
)
from storycast.version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

    from storycast.evaluation.vistory_judge import JudgeOptions, VisionJudge
    from storycast.story.model import Story

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 1
"""Bumped when the meaning of cached features changes (invalidates the feature cache)."""
SCORES_FORMAT = 1
"""Bumped when scoring changes (invalidates every scores.json)."""
TINY_SEED = 0
FP32_ROLES = ("csd", "inception")
"""Extractors that always run in float32, as ViStoryBench runs them (``load_csd``, torchvision's Inception-v3)."""
MAX_FACES_PER_IMAGE = 10
"""Faces kept per image, by detection score: story frames show a few people, and matching faces to
characters enumerates assignments, so a crowd (or a tiny random detector firing everywhere) stays cheap."""

ROLE_FLAGS: dict[str, str] = {
    "clip": "--clip-model",
    "clip_i": "--clip-i-model",
    "dino": "--dino-model",
    "faces": "--face-models",
    "qalign": "--qalign-model",
    # ViStoryBench's character metrics (vistory_scoring.py)
    "detector": "--eval-set detector_model=",
    "arcface": "--face-models",
    "adaface": "--eval-set adaface_model=",
    "facenet": "--eval-set facenet_model=",
    # ViStoryBench's style, quality and diversity metrics (vistory_run.py)
    "csd": "--csd-model",
    "aesthetic": "--aesthetic-model",
    "inception": "--inception-model",
}
"""The command-line flag that points each extractor at a local copy (named in missing-file errors)."""


@dataclass(frozen=True)
class ExtractorOptions:
    """Where the evaluation models come from and how they run.

    Attributes:
        tiny: Tiny random-weight extractors built in code (offline; numbers mean nothing). An explicit
            model below still wins for its own extractor.
        clip_model: CLIP for CLIP-T / CLIP-T-C (and CLIP-I when the preset uses one CLIP): Hub id or folder.
        clip_i_model: CLIP for CLIP-I, when the preset uses a second one (1prompt1story: ViT-B/16).
        dino_model: DINO for DINO-I: Hub id or folder.
        face_models: Folder with the preset's insightface pack files, or the URL of the pack's .zip (downloaded
            once into the cache); default ``~/.insightface/models``.
        qalign_model: OneAlign: Hub id or folder.
        csd_model: CSD weights file for ViStoryBench's cross/self CSD (a file, URL or '<hub repo>/<file>').
        aesthetic_model: Aesthetic Predictor V2.5 head file (a file, URL or '<hub repo>/<file>').
        siglip_model: The SigLIP backbone under that head: Hub id or folder.
        inception_model: Inception-v3 weights file for the Inception Score (a file, URL or '<hub repo>/<file>').
        judge: The vision-language judge of ViStoryBench's prompt alignment (None or no URL: skipped).
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
        dtype: 'fp32' (default: the same numbers on every machine), 'fp16', 'bf16' or 'auto'.
        batch_size: Images (or texts) per forward pass.
        local_files_only: Never contact the Hub.
    """

    tiny: bool = False
    clip_model: str | None = None
    clip_i_model: str | None = None
    dino_model: str | None = None
    face_models: str | Path | None = None
    qalign_model: str | None = None
    csd_model: str | None = None
    aesthetic_model: str | None = None
    siglip_model: str | None = None
    inception_model: str | None = None
    judge: JudgeOptions | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 16
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}.")


@dataclass(frozen=True)
class ModelSource:
    """Where one extractor comes from.

    Attributes:
        role: 'clip', 'clip_i', 'dino', 'faces' or 'qalign'.
        source: Hub id or folder ('' for the default face folder).
        tiny: Built in code with random weights.
        flag: The flag that points it at a local copy.
        backbone: The backbone it sits on, when that is loaded apart (the aesthetic head's SigLIP).
    """

    role: str
    source: str
    tiny: bool
    flag: str
    backbone: str | None = None


def model_sources(preset: EvalPreset, options: ExtractorOptions) -> dict[str, ModelSource]:
    """The extractors ``preset`` needs, and where each comes from under ``options``.

    CLIP-I uses the CLIP-T extractor (and its cached features) when both resolve to the same model.
    """
    metrics = set(preset.metrics)

    def pick(role: str, explicit: str | Path | None, default: str) -> ModelSource:
        if explicit is not None:
            return ModelSource(role, str(explicit), False, ROLE_FLAGS[role])
        return ModelSource(role, "tiny" if options.tiny else default, options.tiny, ROLE_FLAGS[role])

    sources: dict[str, ModelSource] = {}
    clip = pick("clip", options.clip_model, preset.clip_model)
    clip_i_explicit = options.clip_i_model or (options.clip_model if preset.clip_i_model is None else None)
    clip_i = pick("clip_i", clip_i_explicit, preset.clip_i_checkpoint)
    same_clip = (clip.source, clip.tiny) == (clip_i.source, clip_i.tiny)
    if metrics & {"clip_t", "clip_t_c"} or ("clip_i" in metrics and same_clip):
        sources["clip"] = clip
    if "clip_i" in metrics and not same_clip:
        sources["clip_i"] = clip_i
    if "dino_i" in metrics:
        sources["dino"] = pick("dino", options.dino_model, preset.dino_model)
    if metrics & {"face_sim", "face_sim_r"}:
        sources["faces"] = pick("faces", options.face_models, "")
    if metrics & set(QALIGN_TASKS):
        sources["qalign"] = pick("qalign", options.qalign_model, preset.qalign_model)
    judged = options.judge is not None and options.judge.skip_reason() is None
    if needs_cids(metrics, judged):  # ViStoryBench: GroundingDINO, CLIP for non-humans, the face ensemble
        sources.setdefault("clip", clip)
        sources["detector"] = pick("detector", None, preset.detector_model)
        sources["arcface"] = pick("arcface", options.face_models, "")
        sources["adaface"] = pick("adaface", None, preset.adaface_model)
        sources["facenet"] = pick("facenet", None, preset.facenet_model)
    if metrics & STYLE_METRICS:
        sources["csd"] = pick("csd", options.csd_model, preset.csd_model)
    if "aesthetic" in metrics:  # tiny only as a whole: a real head does not fit a tiny SigLIP
        if options.tiny and options.aesthetic_model is None and options.siglip_model is None:
            sources["aesthetic"] = ModelSource("aesthetic", "tiny", True, ROLE_FLAGS["aesthetic"])
        else:
            head = options.aesthetic_model or preset.aesthetic_model
            backbone = options.siglip_model or preset.siglip_model
            sources["aesthetic"] = ModelSource("aesthetic", head, False, ROLE_FLAGS["aesthetic"], backbone)
    if "inception_score" in metrics:
        sources["inception"] = pick("inception", options.inception_model, preset.inception_model)
    return sources


def frame_text(template: str, story: Story, index: int) -> str | None:
    """A preset's text template filled for frame ``index``; None when it needs a context phrase the frame lacks."""
    frame = story.frames[index]
    if "context" in template_fields(template) and not frame.context:
        return None
    text = template.format(
        prompt=story.prompt(index), context=frame.context or "", scene=story.scene_text(index), style=story.style
    )
    return " ".join(text.split())


class _Images:
    """The frames of a run, opened on first use."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self._images: dict[int, Image.Image] = {}

    def __getitem__(self, index: int) -> Image.Image:
        if index not in self._images:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(self.paths[index]) as image:
                    self._images[index] = image.convert("RGB")
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise RunFolderError(
                    f"frame file {self.paths[index]} cannot be read as an image ({type(err).__name__}). Fix: delete it "
                    f"and run the same `storycast generate` command again to redraw it."
                ) from None
        return self._images[index]

    def all(self) -> list[Image.Image]:
        return [self[i] for i in range(len(self.paths))]


@dataclass
class EvaluationResult:
    """What ``Evaluator.evaluate`` produced.

    Attributes:
        results: The content of ``results.json``.
        paths: The files written ('json', 'markdown', 'chart').
        scored: Runs scored now.
        reused: Runs whose scores were already up to date.
        skipped: Unfinished runs left out, with the reason.
    """

    results: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    scored: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Evaluator:
    """Scores run folders with one protocol; owns the extractors and the feature cache.

    Args:
        preset: The protocol.
        options: Where the extractors come from.
        cache_dir: storycast's cache: features go to ``<cache_dir>/features``, identities (for Face-Sim(R))
            are read from ``<cache_dir>/identities``, tiny face models are written to ``<cache_dir>/evaluation``.
            Default ``$STORYCAST_CACHE`` or ``~/.cache/storycast``.
        feature_cache: Keep features on disk (True), only in memory (False), or in this folder.
        pictures: Write contact sheets and charts.
        progress: Receives 'scoring' events while a tree of runs is scored.
    """

    def __init__(
        self,
        preset: EvalPreset,
        options: ExtractorOptions | None = None,
        *,
        cache_dir: str | Path | None = None,
        feature_cache: bool | str | Path = True,
        pictures: bool = True,
        progress: ProgressCallback = no_progress,
    ):
        from storycast.utils.environment import default_cache_dir

        self.preset = preset
        self.options = options or ExtractorOptions()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if feature_cache is True:
            cache_root: Path | None = self.cache_dir / "features"
        elif feature_cache is False:
            cache_root = None
        else:
            cache_root = Path(feature_cache)
        self.cache = FeatureCache(cache_root)
        self.pictures = pictures
        self.progress = progress
        self.sources = model_sources(preset, self.options)
        self.judge, self.judge_skip_reason = self._make_judge()
        self._models: dict[str, Any] = {}
        self._identities: dict[str, dict[str, Any]] = {}
        self._environment: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------
    # Devices, identities, keys

    @property
    def device(self) -> str:
        from storycast.utils.torch_utils import resolve_device

        return resolve_device(self.options.device)

    @property
    def dtype(self) -> torch.dtype:
        from storycast.utils.torch_utils import resolve_dtype

        return resolve_dtype(self.options.dtype, self.device)

    def _make_judge(self) -> tuple[VisionJudge | None, str | None]:
        """ViStoryBench's prompt-alignment judge, or why there is none (only when the preset has judge metrics)."""
        from storycast.evaluation.presets import VISTORY_JUDGE_METRICS

        if not set(self.preset.metrics) & set(VISTORY_JUDGE_METRICS):
            return None, None
        from storycast.evaluation.vistory_judge import JudgeOptions, VisionJudge

        options = self.options.judge or JudgeOptions()
        reason = options.skip_reason()
        return (VisionJudge(options) if reason is None else None), reason

    def _tiny_face_folder(self) -> Path:
        return self.cache_dir / "evaluation" / "tiny-face-packs" / f"{self.preset.face_pack}-seed{TINY_SEED}"

    def identity(self, role: str) -> dict[str, Any]:
        """What determines the features of extractor ``role``: its cache namespace and its record in results."""
        if role in self._identities:
            return self._identities[role]
        from storycast.utils.torch_utils import dtype_name

        source = self.sources[role]
        identity: dict[str, Any] = {"role": role, "format": FEATURE_FORMAT, "tiny": source.tiny}
        if role in ("faces", "arcface"):
            from storycast.vision.faces import FaceSettings, find_face_models

            settings = FaceSettings(pack=self.preset.face_pack)
            identity["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()}
            identity["onnxruntime"] = _version("onnxruntime")
            identity["max_faces"] = MAX_FACES_PER_IMAGE
            if source.tiny:
                identity["source"] = f"tiny-face-pack:{self.preset.face_pack}:{TINY_SEED}"
                identity["torch"] = torch.__version__
            else:
                folder = self._face_folder(source)
                detector, recognizer = find_face_models(folder, self.preset.face_pack, setting=source.flag)
                identity["source"] = self.preset.face_pack  # not the folder: the same files anywhere share features
                identity["files"] = {p.name: p.stat().st_size for p in (detector, recognizer)}
        else:
            identity["source"] = f"tiny:{TINY_SEED}" if source.tiny else source.source
            if source.backbone:
                identity["backbone"] = source.backbone
            identity["dtype"] = dtype_name(self.dtype) if not (source.tiny or role in FP32_ROLES) else "fp32"
            identity["transformers"] = _version("transformers")
            if source.tiny:
                identity["torch"] = torch.__version__
        self._identities[role] = identity
        return identity

    def _namespace(self, role: str, kind: str) -> str:
        identity = {**self.identity(role), "kind": kind}
        namespace = namespace_of(identity)
        self.cache.describe(namespace, identity)
        return namespace

    @property
    def extractor_identities(self) -> dict[str, dict[str, Any]]:
        return {role: self.identity(role) for role in self.sources}

    @property
    def judge_identity(self) -> dict[str, Any] | None:
        """Who judges prompt alignment (None when the preset has no judge metric): part of the eval key, so that
        scores made without a judge are made again with one."""
        if self.judge is not None:
            from storycast.evaluation.vistory_judge import SOURCE

            return {"model": self.judge.options.model, "prompts": SOURCE}
        return {"skipped": self.judge_skip_reason} if self.judge_skip_reason else None

    @property
    def eval_key(self) -> str:
        """Hash of the protocol and the extractors: a scores.json with another key is recomputed."""
        key: dict[str, Any] = {
            "format": SCORES_FORMAT,
            "preset": self.preset.to_dict(),
            "extractors": self.extractor_identities,
        }
        if self.judge_identity is not None:
            key["judge"] = self.judge_identity
        return sha256_json(key)

    @property
    def info(self) -> dict[str, Any]:
        """The protocol, extractors and versions, recorded in every scores.json and results.json."""
        return {
            "preset": self.preset.to_dict(),
            "eval_key": self.eval_key,
            "tiny": any(s.tiny for s in self.sources.values()),
            "extractors": self.extractor_identities,
            **({"judge": self.judge.info} if self.judge is not None else {}),
            "feature_cache": str(self.cache.root) if self.cache.root else None,
            "storycast_version": __version__,
            "environment": self.environment,
        }

    @property
    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            from storycast.utils.environment import environment_summary

            self._environment = environment_summary()
        return self._environment

    # ------------------------------------------------------------------------------------------
    # Extractors

    def load(self) -> None:
        """Load every extractor the preset needs now (fail fast, before a long benchmark starts)."""
        for role in self.sources:
            self.extractor(role)

    def extractor(self, role: str) -> Any:
        """The extractor of ``role``, loaded on first use and kept."""
        if role in self._models:
            return self._models[role]
        source = self.sources[role]
        device, dtype, batch = self.device, self.dtype, self.options.batch_size
        local_only = self.options.local_files_only
        logger.info("loading %s extractor (%s)", role, "tiny" if source.tiny else source.source or "default")
        if role in ("clip", "clip_i"):
            from storycast.vision.features import ClipFeatures

            model = (
                ClipFeatures.tiny(TINY_SEED, device=device, batch_size=batch)
                if source.tiny
                else ClipFeatures.from_pretrained(
                    source.source,
                    device=device,
                    dtype=dtype,
                    batch_size=batch,
                    local_files_only=local_only,
                    setting=source.flag,
                )
            )
        elif role == "dino":
            from storycast.vision.features import DinoFeatures

            model = (
                DinoFeatures.tiny("dinov2", TINY_SEED, device=device, batch_size=batch)
                if source.tiny
                else DinoFeatures.from_pretrained(
                    source.source,
                    device=device,
                    dtype=dtype,
                    batch_size=batch,
                    local_files_only=local_only,
                    setting=source.flag,
                )
            )
        elif role in ("faces", "arcface"):
            from storycast.vision.faces import FaceAnalyzer, FaceSettings

            folder = self._write_tiny_face_pack() if source.tiny else self._face_folder(source)
            face_device = device if device.startswith("cuda") and _onnx_has_cuda() else "cpu"
            model = FaceAnalyzer.from_folder(
                folder, settings=FaceSettings(pack=self.preset.face_pack), device=face_device, setting=source.flag
            )
        elif role in ("detector", "adaface", "facenet"):
            from storycast.evaluation.vistory_scoring import load_vistory_extractor

            model = load_vistory_extractor(
                role, source.source, source.tiny, cache_dir=self.cache_dir, device=device, dtype=dtype,
                local_files_only=local_only, caption=self.preset.detector_caption,
                box_threshold=self.preset.box_threshold,
            )  # fmt: skip
        elif role in ("csd", "aesthetic", "inception"):
            from storycast.evaluation.vistory_run import load_vistory_model

            model = load_vistory_model(
                source, cache_dir=self.cache_dir, device=device, dtype=dtype, batch_size=batch,
                local_files_only=local_only,
            )  # fmt: skip
        elif role == "qalign":
            from storycast.evaluation.quality import OneAlignScorer, TinyQualityScorer

            model = (
                TinyQualityScorer(TINY_SEED)
                if source.tiny
                else OneAlignScorer.from_pretrained(
                    source.source, device=device, dtype=dtype, local_files_only=local_only, setting=source.flag
                )
            )
        else:
            raise KeyError(role)
        self._models[role] = model
        return model

    def _face_folder(self, source: ModelSource) -> str | Path | None:
        """The face pack's folder: as given, fetched into the cache when it is a URL, or None for the default."""
        from storycast.evaluation.downloads import fetch_zip, is_url

        if is_url(source.source):
            return fetch_zip(source.source, self.cache_dir, setting=source.flag)
        return source.source or None

    def _write_tiny_face_pack(self) -> Path:
        from storycast.utils.io import file_lock
        from storycast.vision.faces import FACE_PACKS
        from storycast.vision.tiny_faces import write_tiny_face_pack

        folder = self._tiny_face_folder()
        spec = FACE_PACKS[self.preset.face_pack]
        folder.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(folder.parent / f".{folder.name}.lock"):  # processes of one run share the cache
            if all((folder / name).is_file() for name in (spec.detector, spec.recognizer)):
                return folder
            with atomic_directory(folder) as staging:
                write_tiny_face_pack(staging, self.preset.face_pack, seed=TINY_SEED)
        return folder

    # ------------------------------------------------------------------------------------------
    # Features, through the cache

    def cached_rows(
        self,
        role: str,
        kind: str,
        hashes: Sequence[str],
        images: _Images,
        compute: Callable[[Any, Sequence[Image.Image]], torch.Tensor],
        key: str = "features",
    ) -> torch.Tensor:
        """(n, ...) outputs of extractor ``role`` for the images whose sha256 are ``hashes``, one row per image:
        only cache misses go through ``compute(extractor, images)``, at once (the extractor batches them)."""
        namespace = self._namespace(role, kind)
        rows = [self.cache.get(namespace, h) for h in hashes]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            computed = compute(self.extractor(role), [images[i] for i in missing])
            for i, value in zip(missing, computed, strict=True):
                rows[i] = {key: value}
                self.cache.put(namespace, hashes[i], rows[i])
        return torch.stack([row[key] for row in rows])

    def file_rows(
        self,
        role: str,
        kind: str,
        files: Sequence[Path],
        compute: Callable[[Any, Sequence[Image.Image]], torch.Tensor],
        *,
        hashes: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """:meth:`cached_rows` of image files (``hashes``: their sha256 when already known)."""
        hashes = [sha256_file(p) for p in files] if hashes is None else hashes
        return self.cached_rows(role, kind, hashes, _Images(files), compute)

    def image_features(self, role: str, hashes: Sequence[str], images: _Images) -> torch.Tensor:
        """(n, d) features of the images whose sha256 are ``hashes``; only cache misses are encoded, in batches."""
        return self.cached_rows(role, "image", hashes, images, lambda model, batch: model.encode_images(batch))

    def text_features(self, role: str, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) CLIP text features; only texts not in the cache are encoded, in batches."""
        namespace = self._namespace(role, "text")
        keys = [sha256_json({"text": t}) for t in texts]
        rows = [self.cache.get(namespace, k) for k in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            encoded = self.extractor(role).encode_texts([texts[i] for i in missing])
            for i, feature in zip(missing, encoded, strict=True):
                rows[i] = {"features": feature}
                self.cache.put(namespace, keys[i], rows[i])
        return torch.stack([row["features"] for row in rows])

    def faces(self, hashes: Sequence[str], images: _Images) -> list[FrameFaces]:
        """Every face of each image (detections and ArcFace embeddings), cached per image."""
        namespace = self._namespace("faces", "faces")
        rows = [self.cache.get(namespace, h) for h in hashes]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            analyzed = self.extractor("faces").analyze_images(
                [images[i] for i in missing], max_faces=MAX_FACES_PER_IMAGE
            )
            for i, found in zip(missing, analyzed, strict=True):
                rows[i] = {
                    "embeddings": torch.stack([f.embedding for f in found]) if found else torch.zeros(0, 0),
                    "boxes": torch.tensor([f.detection.box.tolist() for f in found], dtype=torch.float32).reshape(
                        -1, 4
                    ),
                    "scores": torch.tensor([f.detection.score for f in found], dtype=torch.float32),
                }
                self.cache.put(namespace, hashes[i], rows[i])
        return [FrameFaces(row["embeddings"].float(), row["boxes"], row["scores"]) for row in rows]

    def quality(self, metric: str, hashes: Sequence[str], images: _Images) -> torch.Tensor:
        """(n,) Q-Align scores (1-5) for ``metric`` 'qalign_gen' or 'qalign_aes', cached per image."""
        task = QALIGN_TASKS[metric]
        scores = self.cached_rows(
            "qalign", task, hashes, images, lambda model, batch: model.score(batch, task).reshape(-1, 1), key="score"
        )
        return scores.reshape(-1)

    # ------------------------------------------------------------------------------------------
    # One story

    def _needs_references(self, story: Story) -> bool:
        if "faces" not in self.sources:
            return False
        return "face_sim_r" in self.preset.metrics or len(story.characters) > 1

    def reference_files(self, run: EvalRun) -> dict[str, dict[str, Any]]:
        """Per character, where its reference face comes from: {'kind': 'photos'|'identity'|'none', 'files': [...]}."""
        if not self._needs_references(run.story):
            return {}
        mode = self.preset.face_reference
        out: dict[str, dict[str, Any]] = {}
        for character in run.story.characters:
            photos = [Path(p) for p in character.references]
            previews = [self.cache_dir / "identities" / key / "preview.png" for key in run.identity_keys(character.id)]
            previews = [p for p in previews if p.is_file()][:1]
            if mode in ("photos", "auto") and photos:
                out[character.id] = {"kind": "photos", "files": photos}
            elif mode in ("identity", "auto") and previews:
                out[character.id] = {"kind": "identity", "files": previews}
            else:
                out[character.id] = {"kind": "none", "files": []}
        return out

    def _reference_faces(self, references: Mapping[str, Mapping[str, Any]], story: Story) -> list[torch.Tensor | None]:
        from storycast.evaluation.metrics import l2_normalize

        out: list[torch.Tensor | None] = []
        for character in story.characters:
            entry = references.get(character.id, {"kind": "none", "files": []})
            files = list(entry["files"])
            if not files:
                out.append(None)
                continue
            found = self.faces([sha256_file(p) for p in files], _Images(files))
            if entry["kind"] == "photos":
                embeddings = [f.main(self.preset.face_choice) for f in found]
            else:
                embeddings = [f.mean_embedding() for f in found]
            embeddings = [e for e in embeddings if e is not None]
            out.append(l2_normalize(torch.stack(embeddings).mean(dim=0)) if embeddings else None)
        return out

    def story_inputs(self, run: EvalRun, references: Mapping[str, Mapping[str, Any]] | None = None) -> StoryInputs:
        """Extract (or read from the cache) every feature the preset needs for one run."""
        story, metrics = run.story, set(self.preset.metrics)
        images = _Images(run.frame_files)
        hashes = run.frame_hashes
        index = {c.id: i for i, c in enumerate(story.characters)}
        values: dict[str, Any] = {
            "frames": len(story),
            "character_ids": tuple(index),
            "frame_characters": tuple(tuple(index[c] for c in frame.characters) for frame in story.frames),
        }
        if metrics & {"clip_t", "clip_t_c"}:
            values["clip_images"] = self.image_features("clip", hashes, images)
        if "clip_t" in metrics:
            texts = [frame_text(self.preset.clip_t_text, story, i) for i in range(len(story))]
            lacking = [i for i, t in enumerate(texts) if t is None]
            if lacking:
                raise SettingsError(
                    f"{run.path}: frame(s) {lacking} have no context phrase, which clip_t_text "
                    f"'{self.preset.clip_t_text}' needs. Fix: add 'context' to those frames or use another text."
                )
            values["clip_t_texts"] = self.text_features("clip", texts)
        if "clip_t_c" in metrics:
            contexts = [(i, frame_text(self.preset.clip_t_c_text, story, i)) for i in range(len(story))]
            contexts = [(i, t) for i, t in contexts if t is not None]
            values["context_frames"] = tuple(i for i, _ in contexts)
            if contexts:
                values["clip_t_c_texts"] = self.text_features("clip", [t for _, t in contexts])
        if "clip_i" in metrics:
            role = "clip_i" if "clip_i" in self.sources else "clip"
            values["clip_i_images"] = (
                values["clip_images"]
                if role == "clip" and "clip_images" in values
                else self.image_features(role, hashes, images)
            )
        if "dino_i" in metrics:
            values["dino_images"] = self.image_features("dino", hashes, images)
        if "faces" in self.sources:
            values["faces"] = tuple(self.faces(hashes, images))
            if references is None:
                references = self.reference_files(run)
            values["reference_faces"] = tuple(self._reference_faces(references, story))
        if metrics & set(QALIGN_TASKS):
            values["quality"] = {m: self.quality(m, hashes, images) for m in QALIGN_TASKS if m in metrics}
        return StoryInputs(**values)

    def inputs_key(self, run: EvalRun, references: Mapping[str, Mapping[str, Any]]) -> str:
        """Hash of what a run's scores depend on besides the protocol: frames, story, reference images."""
        from storycast.runs.folder import STORY_NAME

        return sha256_json(
            {
                "frames": run.frame_hashes,
                "story": sha256_file(run.path / STORY_NAME),
                "references": {
                    cid: {"kind": entry["kind"], "files": [sha256_file(p) for p in entry["files"]]}
                    for cid, entry in references.items()
                },
            }
        )

    def is_scored(self, run_dir: str | Path) -> bool:
        """True when the run is finished and its scores.json is up to date for this evaluator."""
        run_dir = Path(run_dir)
        if run_status(run_dir) is not None:
            return False
        existing = read_json(run_dir / SCORES_NAME)
        if not existing or existing.get("eval_key") != self.eval_key:
            return False
        run = load_run(run_dir)
        return existing.get("inputs_sha256") == self.inputs_key(run, self.reference_files(run))

    def score_run(self, run_dir: str | Path, *, split: str = "", force: bool = False) -> ScoredRun:
        """Score one finished run; reuse its scores.json when it is up to date (unless ``force``).

        Writes ``scores.json`` (and the contact sheet ``scores.png`` with ``pictures``) into the run folder.

        Raises:
            RunFolderError: The folder is not a finished run.
            MissingWeightsError: An extractor's model files are absent (the message names the file and flag).
        """
        run = load_run(run_dir, split)
        references = self.reference_files(run)
        key = self.inputs_key(run, references)
        existing = read_json(run.path / SCORES_NAME)
        if (
            not force
            and existing
            and existing.get("eval_key") == self.eval_key
            and existing.get("inputs_sha256") == key
        ):
            try:
                scores = StoryScores.from_dict(existing)
            except (KeyError, TypeError, ValueError, AttributeError):
                logger.warning("%s is damaged; scoring the run again", run.path / SCORES_NAME)
            else:
                if self.pictures and not (run.path / CONTACT_SHEET_NAME).is_file():
                    self._write_contact_sheet(run, scores)
                return ScoredRun(run, scores, reused=True)
        scores = score_story(self.story_inputs(run, references), self.preset)
        if set(self.preset.metrics) & VISTORY_METRICS:  # ViStoryBench's metrics, from the run folder
            from storycast.evaluation.vistory_run import score_vistory_metrics

            found = score_vistory_metrics(self, run)
            values = {**scores.values, **found.values}
            scores.values = {m: values[m] for m in self.preset.ordered_metrics if m in values}
            for frame, values in zip(scores.frames, found.frames, strict=True):
                frame.update(values)
            scores.details.update(found.details)
        record = {
            "format": SCORES_FORMAT,
            "kind": "storycast-scores",
            "created": _now(),
            "eval_key": self.eval_key,
            "inputs_sha256": key,
            "preset": self.preset.name,
            "run": {
                "title": run.title,
                "method": run.method,
                "model": run.model,
                "frames": len(run.story),
                "source": (run.manifest.get("story") or {}).get("source"),
            },
            **scores.to_dict(),
            "frame_files": [p.relative_to(run.path).as_posix() for p in run.frame_files],
            "references": {
                cid: {"kind": e["kind"], "files": [str(p) for p in e["files"]]} for cid, e in references.items()
            },
            "contact_sheet": CONTACT_SHEET_NAME if self.pictures else None,
            "evaluation": self.info,
        }
        if self.pictures:
            self._write_contact_sheet(run, scores)
        atomic_write_json(run.path / SCORES_NAME, record)
        return ScoredRun(run, scores)

    def _write_contact_sheet(self, run: EvalRun, scores: StoryScores) -> Path:
        from storycast.evaluation.pictures import render_contact_sheet

        sheet = render_contact_sheet(
            _Images(run.frame_files).all(), scores, self.preset, title=f"{run.title} · {run.method}"
        )
        return atomic_save_image(run.path / CONTACT_SHEET_NAME, sheet)

    # ------------------------------------------------------------------------------------------
    # A tree of runs

    def evaluate(
        self, path: str | Path, *, force: bool = False, extra: Mapping[str, Any] | None = None
    ) -> EvaluationResult:
        """Score a run, or every run under a folder, and write results.json, results.md and results.png there.

        Unfinished runs in a folder are left out (and listed); a single unfinished run is an error.
        ``extra`` is recorded in results.json; by default the folder's benchmark.json, if any.
        """
        root = Path(path)
        if extra is None:
            extra = read_json(root / BENCHMARK_RECORD)
        found = find_runs(root)
        if len(found) == 1 and found[0][0] == root:
            load_run(root)  # a lone unfinished run: say so
        result = EvaluationResult(results={})
        scored: list[ScoredRun] = []
        self.progress(ProgressEvent("scoring", 0, len(found), "scoring"))
        for done, (run_dir, split) in enumerate(found, start=1):
            problem = run_status(run_dir)
            if problem is not None:
                logger.warning("skipping %s: not a finished run (%s)", run_dir, problem)
                result.skipped.append({"run": run_dir.relative_to(root).as_posix(), "reason": problem})
            else:
                try:
                    item = self.score_run(run_dir, split=split, force=force)
                except (RunFolderError, StoryError) as err:  # one damaged run does not stop the others
                    logger.warning("skipping %s: %s", run_dir, err)
                    result.skipped.append({"run": run_dir.relative_to(root).as_posix(), "reason": str(err)})
                else:
                    scored.append(item)
                    (result.reused if item.reused else result.scored).append(run_dir)
            self.progress(ProgressEvent("scoring", done, len(found), "scoring"))
        if not scored:
            raise RunFolderError(f"no finished run under '{root}'. Fix: finish the runs with `storycast generate`.")
        result.results, result.paths = self.write_results(root, scored, skipped=result.skipped, extra=extra)
        return result

    def write_results(
        self,
        root: Path,
        scored: Sequence[ScoredRun],
        *,
        skipped: Sequence[Mapping[str, str]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Write results.json, results.md (and results.png with ``pictures``) for ``scored`` into ``root``."""
        pooled = None
        if set(self.preset.metrics) & VISTORY_METRICS:  # the Inception Score: one per row, over all its frames
            from storycast.evaluation.vistory_run import pooled_vistory_metrics

            def pooled(items: Sequence[ScoredRun], summaries: Mapping[str, Any]) -> dict[str, Any]:
                return pooled_vistory_metrics(self, items, summaries)

        results = build_results(root, scored, self.preset, self.info, skipped=skipped, extra=extra, pooled=pooled)
        paths = {
            "json": atomic_write_json(root / RESULTS_JSON, results),
            "markdown": atomic_write_text(root / RESULTS_MD, results_markdown(results)),
        }
        if self.pictures:
            from storycast.evaluation.pictures import render_results_chart

            paths["chart"] = atomic_save_image(root / RESULTS_CHART, render_results_chart(results))
        return results, paths


def _onnx_has_cuda() -> bool:
    """Whether onnxruntime can run the face models on CUDA (onnxruntime-gpu); else they run on the CPU."""
    from storycast.utils.imports import require

    ort = require("onnxruntime", extra="faces", purpose="face detection and ArcFace embeddings")
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _version(package: str) -> str | None:
    from storycast.utils.environment import package_version

    return package_version(package)


COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_CHART = "comparison.png"


def compare(
    paths: Sequence[str | Path], out_dir: str | Path, *, pictures: bool = True
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Put several evaluated folders side by side: comparison.json, comparison.md and comparison.png in ``out_dir``.

    Raises:
        RunFolderError: A folder has no results.json (evaluate it first).
        SettingsError: The folders were scored with different protocols or extractors.
    """
    out_dir = Path(out_dir)
    document = compare_results(paths)
    written = {
        "json": atomic_write_json(out_dir / COMPARISON_JSON, document),
        "markdown": atomic_write_text(out_dir / COMPARISON_MD, comparison_markdown(document)),
    }
    if pictures:
        from storycast.evaluation.pictures import render_results_chart

        written["chart"] = atomic_save_image(out_dir / COMPARISON_CHART, render_results_chart(document))
    return document, written

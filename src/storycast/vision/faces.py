"""Face detection (SCRFD), 5-point alignment and ArcFace embeddings, run as ONNX models with onnxruntime.

This is what insightface's ``FaceAnalysis`` does for Face-Sim, without insightface, cv2 or skimage:
the two ONNX files of an insightface model pack are read from a local folder and run with
onnxruntime (``pip install 'storycast[faces]'``); decoding and alignment are ``face_geometry.py``.

Packs (insightface GitHub release v0.7; **non-commercial research licence**):

- ``buffalo_l``: ``det_10g.onnx`` (SCRFD-10G with keypoints) + ``w600k_r50.onnx`` (ArcFace R50, WebFace600K)
- ``antelopev2``: ``scrfd_10g_bnkps.onnx`` (SCRFD-10G) + ``glintr100.onnx`` (ArcFace R100, Glint360K);
  IdentityStory's code loads this pack (``det_size=(640, 640)``).

Preprocessing (insightface 0.7.3): the detector sees the image resized into 640 x 640 keeping its
aspect ratio (top-left, black padding), as RGB ``(x - 127.5) / 128``; detections with score >= 0.5
go through NMS at IoU 0.4. The recogniser sees the 112 x 112 aligned RGB crop as
``(x - 127.5) / 127.5``, and its 512-d output is L2-normalised. insightface picks the recogniser's
normalisation by looking for Sub/Mul nodes at the start of the graph (MXNet exports normalise
inside, mean 0 / std 1); the two packs above normalise outside, hence the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.utils.imports import require
from storycast.vision import face_geometry as geometry

DEFAULT_FACE_ROOT = Path("~/.insightface/models")
"""Where insightface keeps its packs (``<root>/<pack>/<file>.onnx``); searched when no folder is given."""
FaceChoice = Literal["largest", "score"]


@dataclass(frozen=True)
class FacePack:
    """The two ONNX files of an insightface model pack."""

    name: str
    detector: str
    recognizer: str


FACE_PACKS: dict[str, FacePack] = {
    "buffalo_l": FacePack("buffalo_l", "det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": FacePack("antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}


@dataclass(frozen=True)
class FaceSettings:
    """How faces are detected and embedded (defaults: insightface 0.7.3 ``FaceAnalysis``).

    Attributes:
        pack: Model pack name, a key of ``FACE_PACKS``.
        det_size: Detector input (width, height) when the detector's input size is dynamic.
        det_threshold: Minimum detection score.
        nms_threshold: IoU above which a lower-scoring detection is suppressed.
        rec_input_mean: Subtracted from the aligned crop's 0-255 pixels before the recogniser.
        rec_input_std: The crop is then divided by this.
        batch_size: Aligned crops per recogniser call.
    """

    pack: str = "buffalo_l"
    det_size: tuple[int, int] = (640, 640)
    det_threshold: float = 0.5
    nms_threshold: float = 0.4
    rec_input_mean: float = 127.5
    rec_input_std: float = 127.5
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.pack not in FACE_PACKS:
            raise SettingsError(f"face pack '{self.pack}' is not known. Fix: use one of {', '.join(FACE_PACKS)}.")
        if len(self.det_size) != 2 or min(self.det_size) < 32 or any(s % 32 for s in self.det_size):
            raise SettingsError(
                f"det_size {self.det_size} must be (width, height), multiples of 32. Fix: e.g. (640, 640)."
            )
        for name in ("det_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.rec_input_std <= 0 or self.batch_size < 1:
            raise SettingsError("rec_input_std must be positive and batch_size at least 1.")


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face, in the pixels of the input image.

    Attributes:
        box: x1, y1, x2, y2.
        score: Detector confidence.
        landmarks: (5, 2) eyes, nose tip, mouth corners as (x, y).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(geometry.box_areas(self.box[None])[0])


@dataclass(frozen=True, eq=False)
class Face:
    """A detection with its L2-normalised ArcFace embedding (d,) float32."""

    detection: Detection
    embedding: torch.Tensor


# ----------------------------------------------------------------------------------------------
# Files and sessions


def find_face_models(
    folder: str | Path | None = None, pack: str = "buffalo_l", *, setting: str = "--face-models"
) -> tuple[Path, Path]:
    """Paths of the pack's detector and recogniser: ``folder/<file>`` or ``folder/<pack>/<file>``.

    Without a folder, insightface's own ``~/.insightface/models/<pack>`` is used.

    Raises:
        MissingWeightsError: A file is missing; the message names it, the folders searched and ``setting``.
    """
    if pack not in FACE_PACKS:
        raise SettingsError(f"face pack '{pack}' is not known. Fix: use one of {', '.join(FACE_PACKS)}.")
    spec = FACE_PACKS[pack]
    root = Path(folder if folder is not None else DEFAULT_FACE_ROOT).expanduser()
    found = []
    for filename in (spec.detector, spec.recognizer):
        candidates = [root / filename, root / pack / filename]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            searched = ", ".join(str(c) for c in candidates)
            raise MissingWeightsError(
                f"face model file '{filename}' of the '{pack}' pack was not found (searched {searched}). Fix: "
                f"download {pack}.zip from the insightface v0.7 release (non-commercial licence), unzip it and "
                f"pass {setting}{'' if setting.endswith('=') else ' '}/path/to/folder-with-{filename}."
            )
        found.append(path)
    return found[0], found[1]


def _providers(device: str) -> list[Any]:
    ort = require("onnxruntime", extra="faces", purpose="face detection and ArcFace embeddings")
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SettingsError(
                f"device '{device}' was asked for faces but this onnxruntime has no CUDA provider. "
                "Fix: pip install onnxruntime-gpu, or use device 'cpu' for faces."
            )
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise SettingsError(f"device '{device}' is not supported for faces. Fix: use 'cpu' or 'cuda[:N]'.")


def onnx_session(path: str | Path, device: str = "cpu") -> Any:
    """An onnxruntime ``InferenceSession`` for ``path`` on ``device`` ('cpu' or 'cuda[:N]'), quiet."""
    ort = require("onnxruntime", extra="faces", purpose="face detection and ArcFace embeddings")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=_providers(device))
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(
            f"ONNX model '{path}' could not be loaded ({first_line}). Fix: re-download the file."
        ) from None


# ----------------------------------------------------------------------------------------------
# Detector


class ScrfdDetector:
    """SCRFD face detector with 5 keypoints (insightface ``det_10g`` / ``scrfd_10g_bnkps``).

    Output layout (insightface): 3 x fmc outputs, scores then boxes then keypoints, one per stride;
    9 outputs mean strides 8/16/32 with 2 anchors per cell, 15 mean strides 8..128 with 1 anchor.
    """

    def __init__(
        self,
        session: Any,
        *,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        source: str = "<session>",
    ):
        self.session = session
        self.source = source
        inputs = session.get_inputs()
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        layouts = {9: ((8, 16, 32), 2), 15: ((8, 16, 32, 64, 128), 1)}
        if len(self.output_names) not in layouts:
            raise ModelLoadError(
                f"'{source}' has {len(self.output_names)} outputs; an SCRFD detector with keypoints has 9 or 15. "
                "Fix: use the pack's detector file (det_10g.onnx or scrfd_10g_bnkps.onnx)."
            )
        self.strides, self.num_anchors = layouts[len(self.output_names)]
        height, width = inputs[0].shape[2:4]
        fixed = isinstance(height, int) and isinstance(width, int)
        self.input_size = (width, height) if fixed else tuple(input_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    @classmethod
    def from_file(
        cls, path: str | Path, *, device: str = "cpu", settings: FaceSettings | None = None
    ) -> ScrfdDetector:
        settings = settings or FaceSettings()
        return cls(
            onnx_session(path, device),
            input_size=settings.det_size,
            score_threshold=settings.det_threshold,
            nms_threshold=settings.nms_threshold,
            source=str(path),
        )

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """The detector input (1, 3, H, W) float32 and the resize factor from image to input pixels."""
        new_w, new_h, scale = geometry.letterbox_size(image.size, self.input_size)
        resized = np.asarray(geometry.resize_bilinear(image.convert("RGB"), (new_w, new_h)), dtype=np.float32)
        canvas = np.zeros((self.input_size[1], self.input_size[0], 3), dtype=np.float32)
        canvas[:new_h, :new_w] = resized
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob), scale

    def decode(
        self, outputs: Sequence[np.ndarray], input_height: int, input_width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs to (boxes (n, 4), scores (n,), keypoints (n, 5, 2)) above the score threshold, in input pixels."""
        fmc = len(self.strides)
        boxes, scores, keypoints = [], [], []
        for level, stride in enumerate(self.strides):
            level_scores, level_boxes, level_kps = (
                np.asarray(outputs[level + k * fmc], dtype=np.float32) for k in range(3)
            )
            if level_scores.ndim == 3:  # batched export: (1, n, c)
                level_scores, level_boxes, level_kps = level_scores[0], level_boxes[0], level_kps[0]
            centers = geometry.anchor_centers(input_height // stride, input_width // stride, stride, self.num_anchors)
            keep = np.where(level_scores.reshape(-1) >= self.score_threshold)[0]
            scores.append(level_scores.reshape(-1)[keep])
            boxes.append(geometry.distance_to_boxes(centers[keep], level_boxes[keep] * stride))
            keypoints.append(geometry.distance_to_keypoints(centers[keep], level_kps[keep] * stride))
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(keypoints)

    def detect(self, image: Image.Image) -> list[Detection]:
        """Faces in ``image``, by decreasing score, in image pixels."""
        blob, scale = self.prepare(image)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        boxes, scores, keypoints = self.decode(outputs, blob.shape[2], blob.shape[3])
        keep = geometry.nms(boxes, scores, self.nms_threshold)
        return [Detection(boxes[i] / scale, float(scores[i]), keypoints[i] / scale) for i in keep]


# ----------------------------------------------------------------------------------------------
# Recogniser


class ArcFaceEmbedder:
    """ArcFace recogniser on 112 x 112 aligned RGB crops; embeddings are L2-normalised unless asked otherwise."""

    def __init__(
        self,
        session: Any,
        *,
        input_mean: float = 127.5,
        input_std: float = 127.5,
        batch_size: int = 32,
        source: str = "<session>",
    ):
        self.session = session
        self.source = source
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = session.get_outputs()[0].name
        height, width = model_input.shape[2:4]
        self.input_size = (int(width), int(height)) if isinstance(width, int) else (112, 112)
        fixed_batch = model_input.shape[0]
        self.batch_size = fixed_batch if isinstance(fixed_batch, int) and fixed_batch > 0 else batch_size
        self.input_mean = input_mean
        self.input_std = input_std

    @classmethod
    def from_file(
        cls, path: str | Path, *, device: str = "cpu", settings: FaceSettings | None = None
    ) -> ArcFaceEmbedder:
        settings = settings or FaceSettings()
        return cls(
            onnx_session(path, device),
            input_mean=settings.rec_input_mean,
            input_std=settings.rec_input_std,
            batch_size=settings.batch_size,
            source=str(path),
        )

    def embed(self, crops: Sequence[Image.Image], *, normalize: bool = True) -> torch.Tensor:
        """Embeddings (n, d) float32 of aligned crops (``face_geometry.align_face``): L2-normalised (insightface's
        ``normed_embedding``), or with ``normalize=False`` the recogniser's raw output (``embedding``)."""
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = [np.asarray(c.convert("RGB"), dtype=np.float32) for c in crops[start : start + self.batch_size]]
            blob = ((np.stack(batch) - self.input_mean) / self.input_std).transpose(0, 3, 1, 2)
            chunks.append(self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(blob)})[0])
        if not chunks:
            return torch.zeros(0, 0)
        raw = torch.from_numpy(np.concatenate(chunks)).float()
        return torch.nn.functional.normalize(raw, dim=-1) if normalize else raw


# ----------------------------------------------------------------------------------------------
# Detector + alignment + recogniser


def choose_face(detections: Sequence[Detection], choose: FaceChoice = "largest") -> int | None:
    """Index of the main face: the largest box ('largest') or the highest score ('score', ViStoryBench's faces[0])."""
    if not detections:
        return None
    if choose == "largest":
        return geometry.largest_box(np.stack([d.box for d in detections]))
    if choose == "score":
        return int(np.argmax([d.score for d in detections]))
    raise SettingsError(f"face choice '{choose}' is not known. Fix: use 'largest' or 'score'.")


class FaceAnalyzer:
    """Detect, align and embed faces: what Face-Sim needs, loaded once per process.

    Build it with :meth:`from_folder`; then ``main_faces(images)`` gives one embedding (or None) per
    image for single-character Face-Sim, ``all_faces(images)`` every face per image for
    multi-character matching (``metrics.match_faces_to_characters``).
    """

    def __init__(self, detector: ScrfdDetector, embedder: ArcFaceEmbedder, *, pack: str = "<custom>"):
        self.detector = detector
        self.embedder = embedder
        self.pack = pack

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | None = None,
        *,
        settings: FaceSettings | None = None,
        device: str = "cpu",
        setting: str = "--face-models",
    ) -> FaceAnalyzer:
        """Load the pack named in ``settings`` from ``folder`` (see :func:`find_face_models`)."""
        settings = settings or FaceSettings()
        detector_path, recognizer_path = find_face_models(folder, settings.pack, setting=setting)
        detector = ScrfdDetector.from_file(detector_path, device=device, settings=settings)
        embedder = ArcFaceEmbedder.from_file(recognizer_path, device=device, settings=settings)
        return cls(detector, embedder, pack=settings.pack)

    @property
    def info(self) -> dict[str, Any]:
        """What produced the embeddings: to be recorded next to the numbers."""
        return {
            "pack": self.pack,
            "detector": Path(self.detector.source).name,
            "recognizer": Path(self.embedder.source).name,
            "det_size": list(self.detector.input_size),
            "det_threshold": self.detector.score_threshold,
            "nms_threshold": self.detector.nms_threshold,
        }

    def _embed(self, image_detections: Sequence[tuple[Image.Image, Detection]]) -> list[torch.Tensor]:
        crops = [geometry.align_face(image.convert("RGB"), d.landmarks) for image, d in image_detections]
        return list(self.embedder.embed(crops)) if crops else []

    def analyze(self, image: Image.Image) -> list[Face]:
        """Every face in ``image``, by decreasing detection score, with its embedding."""
        detections = self.detector.detect(image)
        embeddings = self._embed([(image, d) for d in detections])
        return [Face(d, e) for d, e in zip(detections, embeddings, strict=True)]

    def analyze_images(self, images: Sequence[Image.Image], *, max_faces: int | None = None) -> list[list[Face]]:
        """Per image, its faces by decreasing detection score (the best ``max_faces`` when given); the
        recogniser sees the crops of all images in batches."""
        per_image = [[(image, d) for d in self.detector.detect(image)[:max_faces]] for image in images]
        flat = self._embed([pair for pairs in per_image for pair in pairs])
        out, start = [], 0
        for pairs in per_image:
            rows = flat[start : start + len(pairs)]
            out.append([Face(d, e) for (_, d), e in zip(pairs, rows, strict=True)])
            start += len(pairs)
        return out

    def all_faces(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Per image, the embeddings of all its faces, (k_i, d) (k_i = 0 when none is found)."""
        return [
            torch.stack([f.embedding for f in faces]) if faces else torch.zeros(0, 0)
            for faces in self.analyze_images(images)
        ]

    def main_faces(
        self, images: Sequence[Image.Image], *, choose: FaceChoice = "largest"
    ) -> list[torch.Tensor | None]:
        """Per image, the embedding (d,) of its main face (see :func:`choose_face`), or None when no face is found."""
        chosen: list[tuple[Image.Image, Detection] | None] = []
        for image in images:
            detections = self.detector.detect(image)
            index = choose_face(detections, choose)
            chosen.append(None if index is None else (image, detections[index]))
        embeddings = iter(self._embed([c for c in chosen if c is not None]))
        return [None if c is None else next(embeddings) for c in chosen]

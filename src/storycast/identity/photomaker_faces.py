"""The ArcFace embedding PhotoMaker v2 reads from each reference photo, without insightface.

The authors (``inference_scripts/inference_pmv2.py``, ``gradio_demo/app_v2.py``) run insightface's
``FaceAnalysis`` (pack ``buffalo_l``, detection and recognition) through ``analyze_faces``
(``photomaker/insightface_package.py``): detect at 640 x 640; if no face is found, again at 640, 576, ... 320
and 256; take ``faces[0]`` (the highest detection score) and its **raw** ``embedding`` (not the L2-normalised
``normed_embedding``). storycast runs the same two ONNX files with onnxruntime
(:mod:`storycast.vision.faces`: SCRFD, 5-point alignment, ArcFace), so this needs the ``faces`` extra and
the pack's files, not insightface.

Where the authors silently drop a photo without a face (and then fail on mismatched shapes), here it is an
error that names the photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from storycast.errors import StorycastError

if TYPE_CHECKING:
    from PIL import Image

    from storycast.vision.faces import ArcFaceEmbedder, ScrfdDetector

DETECTION_SIZES = (640, 576, 512, 448, 384, 320, 256)
"""The detector sizes ``analyze_faces`` tries, in order (640, then 640 down by 64 while above 256, then 256)."""
DEFAULT_FACE_PACK = "buffalo_l"
"""insightface ``FaceAnalysis``'s default pack, which the PhotoMaker v2 scripts load."""


class NoFaceError(StorycastError):
    """A reference photo has no face the detector finds."""


@dataclass
class PhotoMakerFaces:
    """The detector (one per size tried) and the ArcFace recogniser of one insightface pack.

    Build it with :meth:`from_folder`; :meth:`embed` gives one raw embedding per photo.
    """

    detectors: list[ScrfdDetector]
    embedder: ArcFaceEmbedder
    pack: str = DEFAULT_FACE_PACK

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | None = None,
        pack: str = DEFAULT_FACE_PACK,
        *,
        device: str = "cpu",
        setting: str = "--set face_models=",
    ) -> PhotoMakerFaces:
        """The pack's ONNX files from ``folder`` (``folder/<file>`` or ``folder/<pack>/<file>``; default
        ``~/.insightface/models/<pack>``).

        Raises:
            MissingWeightsError: A file is missing (the message names it and ``setting``).
            ExtraNotInstalledError: onnxruntime is not installed.
        """
        from storycast.vision.faces import (
            ArcFaceEmbedder,
            FaceSettings,
            ScrfdDetector,
            find_face_models,
            onnx_session,
        )

        detector_file, recognizer_file = find_face_models(folder, pack, setting=setting)
        settings = FaceSettings(pack=pack)
        session = onnx_session(detector_file, device)
        detectors: list[ScrfdDetector] = []
        for size in DETECTION_SIZES:
            detector = ScrfdDetector(
                session,
                input_size=(size, size),
                score_threshold=settings.det_threshold,
                nms_threshold=settings.nms_threshold,
                source=str(detector_file),
            )
            if all(d.input_size != detector.input_size for d in detectors):  # a fixed-size detector has one size
                detectors.append(detector)
        embedder = ArcFaceEmbedder.from_file(recognizer_file, device=device, settings=settings)
        return cls(detectors, embedder, pack)

    def embed_one(self, image: Image.Image) -> torch.Tensor | None:
        """The raw ArcFace embedding (d,) of the highest-scoring face, at the first detector size that finds one;
        None when no size does."""
        from storycast.vision.face_geometry import align_face
        from storycast.vision.faces import choose_face

        rgb = image.convert("RGB")
        for detector in self.detectors:
            detections = detector.detect(rgb)
            index = choose_face(detections, "score")
            if index is not None:
                crop = align_face(rgb, detections[index].landmarks)
                return self.embedder.embed([crop], normalize=False)[0]
        return None

    def embed(self, photos: Sequence[Image.Image], paths: Sequence[str | Path], owner: str) -> torch.Tensor:
        """Raw ArcFace embeddings (n, d) float32 of ``photos`` (read from ``paths``), one per photo.

        Raises:
            NoFaceError: Naming every photo of ``owner`` in which no face was found, and the fix.
        """
        if len(photos) != len(paths):
            raise ValueError(f"got {len(photos)} photos but {len(paths)} paths.")
        embeddings = [self.embed_one(photo) for photo in photos]
        missing = [str(path) for path, e in zip(paths, embeddings, strict=True) if e is None]
        if missing:
            sizes = ", ".join(str(size) for size in DETECTION_SIZES[: len(self.detectors)])
            raise NoFaceError(
                f"no face was found in {len(missing)} reference photo(s) of '{owner}': {', '.join(missing)} (the "
                f"{self.pack} detector tried sizes {sizes}). PhotoMaker v2 needs an ArcFace embedding of each "
                "photo. Fix: use photos where the face is visible and large (the authors: it should fill most of "
                "the photo), remove these from the character's references, or use PhotoMaker v1 "
                "(--set photomaker_file=photomaker-v1.bin --set photomaker=TencentARC/PhotoMaker)."
            )
        return torch.stack([e for e in embeddings if e is not None]).float()

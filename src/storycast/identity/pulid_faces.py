"""What PuLID-FLUX reads from a reference photo, without insightface, facexlib or torchvision: the ArcFace embedding
and the face image its EVA02-CLIP tower sees.

The authors' ``PuLIDPipeline.get_id_embedding`` (``pulid/pipeline_flux.py`` at 1aa2fc7d; the photo first resized to
a long side of 1024, ``app_flux.py`` line 120):

1. insightface ``FaceAnalysis`` (pack ``antelopev2``, 640 x 640): the **largest** face's raw ``embedding``
   (``glintr100``, not normalised). Here: the pack's SCRFD and ArcFace ONNX files through
   :mod:`storycast.vision.faces`.
2. facexlib ``FaceRestoreHelper`` (RetinaFace-R50, ``only_center_face``): the face nearest the image centre aligned
   to FFHQ's 5-point template at 512 x 512 (``cv2.estimateAffinePartial2D`` with LMEDS, grey border
   (135, 133, 132) BGR). Here: the same SCRFD detections, the face nearest the centre, a least-squares similarity
   (Umeyama) to the same template, the same border. Where insightface finds no face they embed the aligned crop;
   here both steps share one detector, so a photo without a face is an error naming it.
3. facexlib's BiSeNet parses the aligned face (ImageNet mean and std); the background, neck, clothes, ears,
   earrings and hat go white and the rest grey (``0.299 R + 0.587 G + 0.114 B``). Here: the same network in torch
   (:mod:`storycast.vision.face_parsing`), when its weights are given; without them the whole crop goes grey and
   nothing is whited out (a documented deviation, docs/methods/pulid.md).
4. Bicubic resize (antialiased, as torchvision's tensor ``resize``) to 336 and OpenAI CLIP's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from storycast.identity.eva_clip import OPENAI_MEAN, OPENAI_STD
from storycast.identity.photomaker_faces import NoFaceError

if TYPE_CHECKING:
    from PIL import Image

    from storycast.vision.face_parsing import BiSeNet
    from storycast.vision.faces import ArcFaceEmbedder, Detection, ScrfdDetector

PULID_FACE_PACK = "antelopev2"
"""The insightface pack PuLID-FLUX loads (``FaceAnalysis(name='antelopev2')``, ``glintr100.onnx``)."""
LONG_SIDE = 1024
"""``resize_numpy_image_long(id_image, 1024)`` before anything else (``app_flux.py``)."""
ALIGNED_SIZE = 512
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]]
)  # fmt: skip
"""facexlib's 5-point template of a 512 x 512 FFHQ face (eyes, nose tip, mouth corners)."""
BORDER_RGB = (132, 133, 135)
"""facexlib's ``borderValue=(135, 133, 132)`` of its BGR images, in RGB."""


@dataclass(frozen=True)
class PuLIDFace:
    """One photo as PuLID reads it: the raw ArcFace embedding (512,) and the grey aligned face (3, 512, 512) in
    [0, 1]."""

    arcface: torch.Tensor
    face: torch.Tensor


def resize_long_side(image: Image.Image, long_side: int = LONG_SIDE) -> Image.Image:
    """The photo with its long side ``long_side`` (``resize_numpy_image_long``: only ever shrinking; cv2 area
    resampling there, PIL's box filter here)."""
    from PIL import Image

    width, height = image.size
    scale = long_side / max(width, height)
    if scale >= 1:
        return image
    return image.resize((round(width * scale), round(height * scale)), Image.Resampling.BOX)


def to_grey(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> its luma repeated on 3 channels (PuLID's ``to_gray``)."""
    luma = 0.299 * pixels[:, 0:1] + 0.587 * pixels[:, 1:2] + 0.114 * pixels[:, 2:3]
    return luma.repeat(1, 3, 1, 1)


def eva_pixels(faces: torch.Tensor, size: int) -> torch.Tensor:
    """Grey aligned faces (B, 3, 512, 512) in [0, 1] as the EVA tower's input: bicubic to ``size`` and CLIP's mean
    and std."""
    resized = F.interpolate(faces, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_MEAN, dtype=faces.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=faces.dtype).view(1, 3, 1, 1)
    return (resized - mean) / std


def nearest_to_centre(detections: Sequence[Detection], size: tuple[int, int]) -> int:
    """Index of the face whose box centre is nearest the image centre (facexlib's ``only_center_face``)."""
    centre = np.array(size, dtype=np.float64) / 2
    distances = [np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - centre) for d in detections]
    return int(np.argmin(distances))


def aligned_face(rgb: Image.Image, face: Detection) -> torch.Tensor:
    """The face aligned to FFHQ's template at 512 x 512 with facexlib's grey border, (1, 3, 512, 512) in [0, 1]."""
    from storycast.vision.face_geometry import alignment_matrix, warp_affine

    matrix = alignment_matrix(face.landmarks, FFHQ_TEMPLATE_512)
    aligned = warp_affine(rgb, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), fill=BORDER_RGB)
    return torch.from_numpy(np.asarray(aligned, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@dataclass
class PuLIDFaces:
    """The antelopev2 detector and ArcFace of PuLID-FLUX, and facexlib's face parser where given; build with
    :meth:`from_folder`."""

    detector: ScrfdDetector
    embedder: ArcFaceEmbedder
    parser: BiSeNet | None = None

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | None = None,
        *,
        parsing: str | Path | None = None,
        device: str = "cpu",
        setting: str = "--set face_models=",
    ) -> PuLIDFaces:
        """The pack's ONNX files from ``folder`` (``folder/<file>`` or ``folder/antelopev2/<file>``; default
        ``~/.insightface/models/antelopev2``), and facexlib's ``parsing_bisenet.pth`` at ``parsing`` (a file or its
        folder; None: no parsing).

        Raises:
            MissingWeightsError: A file is missing (the message names it and ``setting``).
            ExtraNotInstalledError: onnxruntime is not installed.
        """
        from storycast.vision.faces import ArcFaceEmbedder, FaceSettings, ScrfdDetector, find_face_models

        detector_file, recognizer_file = find_face_models(folder, PULID_FACE_PACK, setting=setting)
        settings = FaceSettings(pack=PULID_FACE_PACK)
        detector = ScrfdDetector.from_file(detector_file, device=device, settings=settings)
        embedder = ArcFaceEmbedder.from_file(recognizer_file, device=device, settings=settings)
        if parsing is None:
            return cls(detector, embedder)
        from storycast.vision.face_parsing import load_bisenet

        return cls(detector, embedder, load_bisenet(parsing).to(device))

    def read(self, photo: Image.Image, name: str) -> PuLIDFace:
        """The photo's ArcFace embedding and grey aligned face.

        Raises:
            NoFaceError: No face is found; the message names ``name`` and the fix.
        """
        from storycast.vision.face_geometry import align_face
        from storycast.vision.faces import choose_face

        rgb = resize_long_side(photo.convert("RGB"))
        detections = self.detector.detect(rgb)
        if not detections:
            raise NoFaceError(
                f"no face was found in the reference photo {name} (the {PULID_FACE_PACK} detector at "
                f"{self.detector.input_size[0]} px). PuLID reads the face of each photo. Fix: use a photo where the face "
                "is visible and large, or remove it from the character's references."
            )
        largest = detections[choose_face(detections, "largest")]
        arcface = self.embedder.embed([align_face(rgb, largest.landmarks)], normalize=False)[0]
        pixels = aligned_face(rgb, detections[nearest_to_centre(detections, rgb.size)])
        grey = to_grey(pixels)
        if self.parser is not None:
            from storycast.vision.face_parsing import white_out

            grey = white_out(grey, self.parser.labels(pixels))
        return PuLIDFace(arcface.float(), grey[0])

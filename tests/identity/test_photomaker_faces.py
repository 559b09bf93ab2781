"""PhotoMaker v2's ArcFace input, on the tiny ONNX face pack: the raw (not normalised) embedding of the
highest-scoring face, the authors' fallback detector sizes, and a clear error for a photo without a face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny models

from storycast.errors import MissingWeightsError
from storycast.identity.photomaker_faces import DETECTION_SIZES, NoFaceError, PhotoMakerFaces
from storycast.vision.face_geometry import align_face
from storycast.vision.faces import Detection, FaceAnalyzer
from storycast.vision.tiny_faces import TinyArcFace, paint_tiny_face, write_tiny_face_pack


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_tiny_face_pack(tmp_path_factory.mktemp("buffalo_l"), seed=0)


def _photo(seed: int) -> Image.Image:
    """A 640 px photo whose face the tiny detector sees as one textured 32 px cell at its 640 input."""
    canvas = np.full((640, 640, 3), 60, dtype=np.uint8)
    paint_tiny_face(canvas, 96, 64, 32, np.random.default_rng(seed).random((4, 4)))
    return Image.fromarray(canvas)


def test_the_embedding_is_the_raw_arcface_output_of_the_best_face(pack):
    faces = PhotoMakerFaces.from_folder(pack)
    photos = [_photo(1), _photo(2)]
    raw = faces.embed(photos, ["a.png", "b.png"], "mara")
    assert raw.shape == (2, 512) and raw.dtype == torch.float32
    assert (raw.norm(dim=-1) > 2).all()  # insightface's face.embedding, not normed_embedding
    assert not torch.allclose(raw[0], raw[1], atol=1e-2)  # two faces, two identities
    normed = FaceAnalyzer.from_folder(pack).main_faces(photos, choose="score")
    for row, expected in zip(raw, normed, strict=True):
        torch.testing.assert_close(torch.nn.functional.normalize(row, dim=0), expected)
    # Independently: the tiny recogniser itself on the aligned crop of the highest-scoring detection.
    best = max(faces.detectors[0].detect(photos[0]), key=lambda d: d.score)
    crop = np.asarray(align_face(photos[0], best.landmarks), dtype=np.float32)
    blob = torch.from_numpy((crop - 127.5) / 127.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        torch.testing.assert_close(raw[0], TinyArcFace(seed=0)(blob)[0], rtol=1e-4, atol=1e-3)


def test_detector_sizes_are_the_authors_fallbacks(pack):
    faces = PhotoMakerFaces.from_folder(pack)
    assert DETECTION_SIZES == (640, 576, 512, 448, 384, 320, 256)
    assert [d.input_size for d in faces.detectors] == [(s, s) for s in DETECTION_SIZES]
    assert len({id(d.session) for d in faces.detectors}) == 1  # one ONNX session, several input sizes


class _Detector:
    def __init__(self, detections):
        self.detections = detections
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        return list(self.detections)


def test_a_smaller_size_is_tried_when_none_is_found_and_the_highest_score_wins(pack):
    real = PhotoMakerFaces.from_folder(pack)
    photo = _photo(3)
    found = real.detectors[0].detect(photo)
    low, high = (
        Detection(found[0].box, 0.6, found[0].landmarks),
        Detection(found[0].box, 0.9, found[0].landmarks + np.array([4.0, 2.0])),
    )
    first, second, third = _Detector([]), _Detector([low, high]), _Detector([low])
    faces = PhotoMakerFaces([first, second, third], real.embedder)  # type: ignore[list-item]
    embedding = faces.embed_one(photo)
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)
    expected = real.embedder.embed([align_face(photo, high.landmarks)], normalize=False)[0]
    torch.testing.assert_close(embedding, expected)
    assert not torch.allclose(embedding, real.embedder.embed([align_face(photo, low.landmarks)], normalize=False)[0])


def test_a_photo_without_a_face_is_an_error_naming_it(pack, tmp_path):
    faces = PhotoMakerFaces.from_folder(pack)
    blank = Image.new("RGB", (128, 128), (60, 60, 60))
    with pytest.raises(NoFaceError) as caught:
        faces.embed([_photo(4), blank, blank], ["ok.png", "beach.png", "back.jpg"], "mara")
    message = str(caught.value)
    assert "no face was found in 2 reference photo(s) of 'mara': beach.png, back.jpg" in message
    assert "sizes 640, 576, 512, 448, 384, 320, 256" in message
    assert "Fix: use photos where the face is visible" in message
    assert "--set photomaker_file=photomaker-v1.bin" in message


def test_a_missing_pack_names_the_setting(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"'det_10g\.onnx' of the 'buffalo_l' pack.*--set face_models="):
        PhotoMakerFaces.from_folder(tmp_path)

"""The ONNX face path for real, on tiny ONNX models with the SCRFD and ArcFace signatures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import ExtraNotInstalledError, MissingWeightsError, ModelLoadError, SettingsError
from storycast.evaluation import metrics as M
from storycast.vision import faces as F

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny models

from storycast.vision.tiny_faces import TinyArcFace, paint_tiny_face, write_tiny_face_pack  # noqa: E402

BACKGROUND = 60


@pytest.fixture(scope="module")
def pack_folder(tmp_path_factory) -> Path:
    return write_tiny_face_pack(tmp_path_factory.mktemp("buffalo_l"), "buffalo_l", seed=0)


@pytest.fixture(scope="module")
def analyzer(pack_folder) -> F.FaceAnalyzer:
    return F.FaceAnalyzer.from_folder(pack_folder)


def _pattern(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((4, 4))


def _image(width: int, height: int, faces=()) -> Image.Image:
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for x, y, size, pattern in faces:
        paint_tiny_face(canvas, x, y, size, pattern)
    return Image.fromarray(canvas)


# ----------------------------------------------------------------------------------------------
# Files


def test_missing_file_names_the_file_and_the_setting(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"'det_10g\.onnx'.*--faces-dir") as err:
        F.find_face_models(tmp_path, "buffalo_l", setting="--faces-dir")
    assert str(tmp_path / "buffalo_l" / "det_10g.onnx") in str(err.value)
    (tmp_path / "scrfd_10g_bnkps.onnx").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match=r"'glintr100\.onnx' of the 'antelopev2' pack"):
        F.find_face_models(tmp_path, "antelopev2")
    with pytest.raises(SettingsError, match="buffalo_s"):
        F.find_face_models(tmp_path, "buffalo_s")


def test_pack_is_found_in_a_root_with_pack_subfolders(pack_folder, tmp_path):
    root = tmp_path / "models"
    (root / "buffalo_l").mkdir(parents=True)
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (root / "buffalo_l" / name).write_bytes((pack_folder / name).read_bytes())
    detector, recognizer = F.find_face_models(root, "buffalo_l")
    assert detector == root / "buffalo_l" / "det_10g.onnx" and recognizer.name == "w600k_r50.onnx"


def test_unreadable_or_wrong_files_are_load_errors(pack_folder, tmp_path):
    broken = tmp_path / "det_10g.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match=r"det_10g\.onnx"):
        F.ScrfdDetector.from_file(broken)
    with pytest.raises(ModelLoadError, match="9 or 15"):
        F.ScrfdDetector.from_file(pack_folder / "w600k_r50.onnx")


def test_missing_onnxruntime_names_the_extra(monkeypatch, pack_folder):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExtraNotInstalledError, match=r"storycast\[faces\]"):
        F.onnx_session(pack_folder / "det_10g.onnx")


def test_face_settings_are_validated():
    with pytest.raises(SettingsError, match="det_size"):
        F.FaceSettings(det_size=(600, 600))
    with pytest.raises(SettingsError, match="pack"):
        F.FaceSettings(pack="nope")
    with pytest.raises(SettingsError, match="det_threshold"):
        F.FaceSettings(det_threshold=1.5)


# ----------------------------------------------------------------------------------------------
# Detection


def test_detector_signature_is_scrfd_like(analyzer):
    detector = analyzer.detector
    assert len(detector.output_names) == 9 and detector.strides == (8, 16, 32) and detector.num_anchors == 2
    assert detector.input_size == (640, 640)


def test_detector_input_is_letterboxed_and_normalised(analyzer):
    image = Image.fromarray(np.full((160, 320, 3), (255, 0, 128), dtype=np.uint8))
    blob, scale = analyzer.detector.prepare(image)
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32 and scale == 2.0
    np.testing.assert_allclose(blob[0, :, :320, :].reshape(3, -1).mean(axis=1), [127.5 / 128, -127.5 / 128, 0.5 / 128])
    np.testing.assert_array_equal(blob[0, :, 320:, :], -127.5 / 128)  # black padding below the image


@pytest.mark.parametrize(
    ("size", "face", "box"),
    [
        ((640, 640), (64, 96, 32), (64, 96, 96, 128)),  # scale 1
        ((320, 320), (160, 48, 16), (160, 48, 176, 64)),  # upscaled x2 for the detector
        ((1280, 720), (512, 320, 64), (512, 320, 576, 384)),  # downscaled x0.5, padded below
        ((480, 960), (96, 480, 48), (96, 480, 144, 528)),  # portrait: scaled x2/3, padded right
    ],
)
def test_one_face_gives_one_box_in_image_pixels(analyzer, size, face, box):
    detections = analyzer.detector.detect(_image(*size, [(*face, _pattern(0))]))
    assert len(detections) == 1  # the two anchors of the cell are merged by NMS
    np.testing.assert_allclose(detections[0].box, box, atol=1e-3)
    assert detections[0].score > 0.99
    x, y, s = face
    expected_landmarks = np.array([x, y]) + s * (0.1 + 0.8 * F.geometry.ARCFACE_TEMPLATE_112 / 112)
    np.testing.assert_allclose(detections[0].landmarks, expected_landmarks, atol=1e-3)


def test_every_stride_is_decoded_at_its_own_scale(analyzer):
    canvas = np.full((640, 640, 3), BACKGROUND, dtype=np.uint8)
    canvas[:, :, :2] = 0
    canvas[200:208, 40:48, 0] = 255  # red: a stride-8 cell (row 25, col 5)
    canvas[400:416, 320:336, 1] = 255  # green: a stride-16 cell (row 25, col 20)
    paint_tiny_face(canvas, 576, 32, 32, _pattern(1))  # blue: a stride-32 cell (row 1, col 18)
    boxes = sorted(d.box.tolist() for d in analyzer.detector.detect(Image.fromarray(canvas)))
    assert boxes == [[40, 200, 48, 208], [320, 400, 336, 416], [576, 32, 608, 64]]


def test_empty_image_has_no_face(analyzer):
    assert analyzer.detector.detect(_image(200, 300)) == []
    assert analyzer.main_faces([_image(200, 300)]) == [None]
    assert analyzer.all_faces([_image(200, 300)])[0].numel() == 0


def test_main_face_is_the_largest_or_the_best_scored(analyzer):
    canvas = np.asarray(_image(640, 640, [(64, 64, 32, _pattern(2))])).copy()
    canvas[320:336, 320:336, 1] = 255  # a smaller, brighter (higher-scoring) stride-16 face
    image = Image.fromarray(canvas)
    detections = analyzer.detector.detect(image)
    assert len(detections) == 2 and detections[0].area == 256  # sorted by score: the small one first
    assert F.choose_face(detections, "largest") == 1
    assert F.choose_face(detections, "score") == 0
    largest, best = analyzer.main_faces([image])[0], analyzer.main_faces([image], choose="score")[0]
    assert not torch.allclose(largest, best)


# ----------------------------------------------------------------------------------------------
# Embeddings and Face-Sim end to end


def test_arcface_onnx_equals_the_torch_module_on_normalised_crops(analyzer):
    crops = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8)) for i in range(3)
    ]
    got = analyzer.embedder.embed(crops)
    blob = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in crops])).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = TinyArcFace(seed=0)((blob - 127.5) / 127.5)
    torch.testing.assert_close(got, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=0)
    analyzer.embedder.batch_size = 1
    try:
        torch.testing.assert_close(analyzer.embedder.embed(crops), got, atol=1e-6, rtol=0)
    finally:
        analyzer.embedder.batch_size = 32


def test_same_face_anywhere_and_at_any_scale_embeds_the_same(analyzer):
    a, b = _pattern(10), _pattern(11)
    frames = [
        _image(640, 640, [(64, 96, 32, a)]),
        _image(320, 320, [(160, 48, 16, a)]),
        _image(640, 480, [(256, 256, 32, a)]),
        _image(1280, 960, [(512, 320, 64, b)]),
    ]
    e = torch.stack(analyzer.main_faces(frames))
    sims = e @ e.T
    assert sims[0, 1] > 0.95 and sims[0, 2] > 0.999
    assert sims[0, 3] < 0.5 and sims[1, 3] < 0.5


def test_face_sim_of_a_story_with_a_missing_face(analyzer):
    a = _pattern(20)
    frames = [_image(640, 640, [(64, 64, 32, a)]), _image(400, 400), _image(640, 640, [(320, 192, 32, a)])]
    embeddings = analyzer.main_faces(frames)
    assert embeddings[1] is None
    skip = M.face_similarity_pairwise(embeddings, missing="skip", scale=100)
    zero = M.face_similarity_pairwise(embeddings, missing="zero", scale=100)
    assert skip.value > 99.0 and (skip.pairs_scored, skip.pairs_total) == (1, 3)
    assert zero.value == pytest.approx(skip.value / 3, rel=1e-6)


def test_multi_character_frames_are_matched_to_the_right_character(analyzer):
    patterns = [_pattern(30), _pattern(31)]
    references = torch.stack(analyzer.main_faces([_image(640, 640, [(0, 0, 32, p)]) for p in patterns]))
    frames = [
        _image(640, 640, [(64, 64, 32, patterns[0]), (320, 320, 32, patterns[1])]),
        _image(640, 640, [(64, 64, 32, patterns[1]), (320, 320, 32, patterns[0])]),
        _image(640, 640, [(480, 96, 32, patterns[1])]),
    ]
    per_frame = analyzer.all_faces(frames)
    assert [len(f) for f in per_frame] == [2, 2, 1]
    matched = M.match_faces_to_characters(per_frame, references)
    for character in matched:
        found = [e for e in character.embeddings if e is not None]
        assert len(found) == (3 if character.character == 1 else 2)
        for embedding in found:
            assert float(embedding @ references[character.character]) > 0.95
    scores = M.character_face_similarity(per_frame, references, mode="reference", missing="zero", scale=100)
    assert scores[0].value == pytest.approx(
        2
        / 3
        * M.face_similarity_to_reference(
            [e for e in matched[0].embeddings if e is not None], references[0], scale=100
        ).value,
        rel=1e-5,
    )
    assert scores[1].value > 95.0

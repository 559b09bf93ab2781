"""SCRFD decoding and ArcFace alignment pieces against naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from storycast.vision import face_geometry as G


def test_anchor_centers_are_row_major_with_anchors_fastest():
    got = G.anchor_centers(height=2, width=3, stride=8, num_anchors=2)
    naive = [(x * 8, y * 8) for y in range(2) for x in range(3) for _ in range(2)]
    assert got.tolist() == [list(map(float, p)) for p in naive]


def test_distance_decoding_matches_loops():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (6, 2)).astype(np.float32)
    dist = rng.uniform(0, 20, (6, 4)).astype(np.float32)
    kps = rng.uniform(-20, 20, (6, 10)).astype(np.float32)
    boxes = G.distance_to_boxes(points, dist)
    keypoints = G.distance_to_keypoints(points, kps)
    for i in range(6):
        cx, cy = points[i]
        assert boxes[i].tolist() == pytest.approx([cx - dist[i, 0], cy - dist[i, 1], cx + dist[i, 2], cy + dist[i, 3]])
        for k in range(5):
            assert keypoints[i, k].tolist() == pytest.approx([cx + kps[i, 2 * k], cy + kps[i, 2 * k + 1]])


def _naive_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        inter = w * h
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.1, 0.4, 0.7])
def test_nms_matches_the_naive_greedy_loop(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    xy = rng.uniform(0, 60, (40, 2))
    wh = rng.uniform(5, 30, (40, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.permutation(40) / 40.0  # distinct scores: no tie order to argue about
    assert G.nms(boxes, scores, threshold).tolist() == _naive_nms(boxes, scores, threshold)


def test_largest_box_uses_the_plain_area():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 1, 90], [5, 5, 12, 14]], dtype=np.float32)
    # (x2-x1)*(y2-y1): 100, 90, 63 -> box 0. The +1 convention would give 121, 182, 80 -> box 1.
    assert G.box_areas(boxes).tolist() == [100, 90, 63]
    assert G.largest_box(boxes) == 0
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (20, 2))
    many = np.concatenate([xy, xy + rng.uniform(1, 40, (20, 2))], axis=1)
    naive = max(range(20), key=lambda i: (many[i, 2] - many[i, 0]) * (many[i, 3] - many[i, 1]))
    assert G.largest_box(many) == naive


@pytest.mark.parametrize(
    ("image", "expected"),
    [((1024, 1024), (640, 640)), ((1280, 720), (640, 360)), ((720, 1280), (360, 640)), ((300, 200), (640, 426))],
)
def test_letterbox_size_follows_scrfd(image, expected):
    new_w, new_h, scale = G.letterbox_size(image, (640, 640))
    assert (new_w, new_h) == expected
    assert scale == pytest.approx(new_h / image[1])


def _bilinear(a: np.ndarray, x: float, y: float, *, clamp: bool) -> np.ndarray:
    """OpenCV-convention bilinear sample (pixel centres at integers); zero or edge outside."""
    h, w = a.shape[:2]

    def px(i: int, j: int) -> np.ndarray:
        if clamp:
            return a[min(max(i, 0), h - 1), min(max(j, 0), w - 1)].astype(float)
        return a[i, j].astype(float) if 0 <= i < h and 0 <= j < w else np.zeros(a.shape[2])

    x0, y0 = math.floor(x), math.floor(y)
    dx, dy = x - x0, y - y0
    return (
        (1 - dx) * (1 - dy) * px(y0, x0)
        + dx * (1 - dy) * px(y0, x0 + 1)
        + (1 - dx) * dy * px(y0 + 1, x0)
        + dx * dy * px(y0 + 1, x0 + 1)
    )


def _random_image(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, Image.Image]:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    return arr, Image.fromarray(arr)


@pytest.mark.parametrize("size", [(40, 30), (100, 75)])
def test_resize_bilinear_is_cv2_inter_linear(size):
    arr, image = _random_image()
    got = np.asarray(G.resize_bilinear(image, size)).astype(float)
    sx, sy = 64 / size[0], 48 / size[1]
    for y in range(size[1]):
        for x in range(size[0]):
            src_x = min(max((x + 0.5) * sx - 0.5, 0.0), 63.0)
            src_y = min(max((y + 0.5) * sy - 0.5, 0.0), 47.0)
            assert np.abs(got[y, x] - _bilinear(arr, src_x, src_y, clamp=True)).max() <= 1.0


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def test_umeyama_recovers_a_known_similarity_transform():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (5, 2))
    for scale, angle, tx, ty in [(1.0, 0.0, 0.0, 0.0), (0.37, 0.8, 12.0, -40.0), (2.5, -2.9, -3.0, 7.5)]:
        truth = _similarity(scale, angle, tx, ty)
        dst = src @ truth[:2, :2].T + truth[:2, 2]
        np.testing.assert_allclose(G.umeyama(src, dst), truth, atol=1e-9)


def test_umeyama_is_the_least_squares_similarity_on_noisy_points():
    # Naive reference: a 2-D similarity is z -> a z + b over complex numbers; solve a, b by least squares.
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (5, 2))
    dst = src @ _similarity(0.8, 0.4, 5.0, 9.0)[:2, :2].T + rng.normal(0, 3.0, (5, 2))
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    (a, b), *_ = np.linalg.lstsq(np.stack([zs, np.ones(5)], axis=1), zd, rcond=None)
    expected = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0, 0, 1]])
    got = G.umeyama(src, dst)
    np.testing.assert_allclose(got, expected, atol=1e-8)
    assert np.linalg.det(got[:2, :2]) > 0


def test_umeyama_never_returns_a_reflection():
    # Mirrored points: the best orthogonal map is a reflection; the best similarity is not.
    rng = np.random.default_rng(6)
    src = rng.uniform(0, 100, (5, 2))
    dst = src * np.array([-1.0, 1.0])
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    (a, b), *_ = np.linalg.lstsq(np.stack([zs, np.ones(5)], axis=1), zd, rcond=None)
    expected = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0, 0, 1]])
    got = G.umeyama(src, dst)
    assert np.linalg.det(got[:2, :2]) > 0
    np.testing.assert_allclose(got, expected, atol=1e-8)


def test_alignment_matrix_maps_landmarks_onto_the_template():
    truth = _similarity(0.5, 0.3, 20.0, 10.0)  # template -> image
    landmarks = G.ARCFACE_TEMPLATE_112 @ truth[:2, :2].T + truth[:2, 2]
    matrix = G.alignment_matrix(landmarks)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, G.ARCFACE_TEMPLATE_112, atol=1e-4)


def test_warp_affine_samples_like_cv2_warp_affine():
    arr, image = _random_image(seed=4)
    matrix = _similarity(0.7, 0.3, 10.3, -5.2)[:2]
    got = np.asarray(G.warp_affine(image, matrix, (40, 40))).astype(float)
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    checked = 0
    for y in range(40):
        for x in range(40):
            sx, sy, _ = inverse @ [x, y, 1.0]
            if 1 <= sx <= 62 and 1 <= sy <= 46:  # away from the border, where cv2 and PIL blend differently
                assert np.abs(got[y, x] - _bilinear(arr, sx, sy, clamp=False)).max() <= 1.0
                checked += 1
    assert checked > 500


def test_warp_affine_integer_translation_is_exact():
    arr, image = _random_image(seed=5)
    shifted = np.asarray(G.warp_affine(image, np.array([[1.0, 0, -7], [0, 1.0, -3]]), (20, 16)))
    np.testing.assert_array_equal(shifted, arr[3:19, 7:27])


def test_align_face_undoes_a_similarity_transform():
    # Draw a face crop, place it in a bigger image with a known transform, then align it back.
    crop = np.zeros((112, 112, 3), dtype=np.uint8)
    crop[:, :, 0] = np.linspace(0, 255, 112)[None, :]
    crop[:, :, 1] = np.linspace(0, 255, 112)[:, None]
    truth = _similarity(1.6, 0.25, 60.0, 30.0)  # crop -> image
    image = G.warp_affine(Image.fromarray(crop), truth[:2], (300, 260))
    landmarks = G.ARCFACE_TEMPLATE_112 @ truth[:2, :2].T + truth[:2, 2]
    aligned = np.asarray(G.align_face(image, landmarks)).astype(float)
    assert np.abs(aligned[4:-4, 4:-4] - crop[4:-4, 4:-4]).max() <= 3.0
    with pytest.raises(ValueError, match="multiples of 112"):
        G.align_face(image, landmarks, size=100)

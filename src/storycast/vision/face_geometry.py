"""Face-detection decoding and 5-point alignment in numpy and PIL (no cv2, no skimage).

These reproduce insightface 0.7.3's SCRFD post-processing (``model_zoo/scrfd.py``) and ArcFace
alignment (``utils/face_align.py``: ``estimate_norm`` + ``norm_crop``) as facts, in our own code:

- anchor centres: for a feature map of h x w at stride s, centre (x * s, y * s) of cell (y, x), row
  major, each repeated ``num_anchors`` times in a row (SCRFD-10G: 2 anchors, strides 8/16/32);
- boxes: ``(cx - d0, cy - d1, cx + d2, cy + d3)`` with the distances already multiplied by the stride;
  keypoints: ``(cx + d_2k, cy + d_2k+1)``;
- NMS: greedy by score with insightface's "+1" pixel areas, IoU threshold 0.4;
- alignment: least-squares similarity transform (Umeyama 1991, as skimage's ``SimilarityTransform``)
  from the 5 landmarks to the 112 x 112 ArcFace template, warped like ``cv2.warpAffine`` (bilinear,
  black border).

Coordinates follow OpenCV: pixel (i, j) has its centre at (x=j, y=i).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye (in the image)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
"""insightface's ``arcface_dst``: where the 5 landmarks land in a 112 x 112 aligned face."""


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = 1) -> np.ndarray:
    """Anchor centres of an h x w feature map, (h * w * num_anchors, 2) as (x, y), in input pixels."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def distance_to_boxes(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes (n, 4) as x1, y1, x2, y2 from centres (n, 2) and distances to left, top, right, bottom (n, 4)."""
    return np.concatenate([points - distances[:, :2], points + distances[:, 2:4]], axis=1)


def distance_to_keypoints(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Keypoints (n, k, 2) from centres (n, 2) and offsets (n, 2k) as dx0, dy0, dx1, dy1, ..."""
    return points[:, None, :] + distances.reshape(len(distances), distances.shape[1] // 2, 2)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas ``(x2 - x1) * (y2 - y1)`` of boxes (n, 4), as insightface's ``max_num`` selection."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def largest_box(boxes: np.ndarray) -> int:
    """Index of the box with the largest area (the first one on ties)."""
    if len(boxes) == 0:
        raise ValueError("largest_box needs at least one box.")
    return int(np.argmax(box_areas(boxes)))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, by decreasing score.

    Areas and intersections use insightface's pixel-inclusive "+1" convention. A box is dropped when
    its IoU with a kept, higher-scoring box exceeds ``iou_threshold``.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def letterbox_size(image_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, float]:
    """SCRFD's resize: fit (w, h) into the detector input (w, h) keeping the aspect ratio.

    Returns (new_w, new_h, scale) with ``scale = new_h / h``; the resized image sits at the top-left of a
    black input, and detections are divided by ``scale`` to return to image pixels.
    """
    width, height = image_size
    input_w, input_h = input_size
    if height / width > input_h / input_w:
        new_h = input_h
        new_w = int(new_h / (height / width))
    else:
        new_w = input_w
        new_h = int(new_w * (height / width))
    return new_w, new_h, new_h / height


def resize_bilinear(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize like ``cv2.resize(..., INTER_LINEAR)``: point-sampled bilinear, no antialiasing.

    PIL's ``resize`` antialiases when shrinking; SCRFD was run on cv2's plain bilinear resize, so we
    use an affine transform, whose bilinear filter samples source pixel ``(x + 0.5) * s - 0.5`` as cv2 does.
    """
    width, height = image.size
    sx, sy = width / size[0], height / size[1]
    return image.transform(size, Image.Transform.AFFINE, (sx, 0.0, 0.0, 0.0, sy, 0.0), Image.Resampling.BILINEAR)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` (n, d) onto ``dst`` (n, d): a (d+1, d+1) matrix.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns", eqs. (34)-(43); a proper rotation (no reflection), uniform scale, translation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / n
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(dim)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    src_var = (src_c**2).sum() / n
    if src_var == 0:
        raise ValueError("umeyama needs source points that are not all equal.")
    scale = float(singular @ signs) / src_var if estimate_scale else 1.0
    transform = np.eye(dim + 1)
    transform[:dim, :dim] = scale * rotation
    transform[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return transform


def alignment_matrix(landmarks: np.ndarray, template: np.ndarray = ARCFACE_TEMPLATE_112) -> np.ndarray:
    """The 2 x 3 similarity transform from 5 image landmarks to the template (insightface ``estimate_norm``)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != template.shape:
        raise ValueError(f"landmarks must have shape {template.shape}, got {landmarks.shape}.")
    return umeyama(landmarks, template)[:2]


def warp_affine(
    image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill: tuple[int, int, int] | None = None
) -> Image.Image:
    """``cv2.warpAffine(image, matrix, size)``: output pixel p takes the image at ``matrix^-1 p``, bilinear; pixels
    from outside the image are ``fill`` (``borderValue``; default black).

    PIL wants the inverse map in its own coordinates, where pixel centres sit at +0.5; the map is
    conjugated by that half-pixel shift so that both conventions sample the same points.
    """
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    pil_map = shift @ inverse @ unshift
    return image.transform(
        size, Image.Transform.AFFINE, tuple(pil_map[:2].ravel()), Image.Resampling.BILINEAR, fillcolor=fill
    )


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """Crop the face with these 5 landmarks to ``size`` x ``size`` in ArcFace's canonical pose (insightface ``norm_crop``)."""
    if size % 112:
        raise ValueError(f"ArcFace alignment supports multiples of 112 px, got {size}.")
    matrix = alignment_matrix(landmarks, ARCFACE_TEMPLATE_112 * (size / 112))
    return warp_affine(image, matrix, (size, size))

"""Tiny ONNX stand-ins for an insightface pack, so that the Face-Sim path runs offline in tests.

The files have the real models' signatures (SCRFD: one image input with dynamic height and width,
9 outputs = scores, boxes, keypoints for strides 8/16/32 with 2 anchors per cell; ArcFace: a
(n, 3, 112, 112) input and a (n, 512) output) and a behaviour simple enough to predict:

- the detector fires on a stride-``s`` cell whose mean value, in the channel of that stride
  (red for 8, green for 16, blue for 32), is bright (above ~159 of 255). Its box is the cell, and
  its 5 keypoints are the ArcFace template scaled into the cell's inner 80 %, so a "face" is a bright
  square aligned to the grid and its aligned crop is the middle of that square stretched to 112 x 112;
- the recogniser is a fixed random linear map of the 8 x 8-pooled crop, each channel's mean removed.

Building them needs ``torch.onnx`` (legacy exporter) and the ``onnx`` package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from storycast.utils.imports import require
from storycast.vision.face_geometry import ARCFACE_TEMPLATE_112
from storycast.vision.faces import FACE_PACKS

TINY_STRIDES = (8, 16, 32)
TINY_CHANNEL_OF_STRIDE = {8: 0, 16: 1, 32: 2}
TINY_EMBEDDING_DIM = 512
TINY_GAIN = 20.0
TINY_FACE_MARGIN = 0.1
"""The aligned crop covers the cell less this fraction on each side, so it never samples the background."""


class TinyScrfd(torch.nn.Module):
    """Scores from per-stride average pooling of one channel; constant boxes (the cell) and keypoints."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("box", torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
        inner = TINY_FACE_MARGIN + (1.0 - 2.0 * TINY_FACE_MARGIN) * ARCFACE_TEMPLATE_112 / 112.0
        self.register_buffer("keypoints", torch.from_numpy(inner).reshape(1, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, boxes, keypoints = [], [], []
        for stride in TINY_STRIDES:
            channel = TINY_CHANNEL_OF_STRIDE[stride]
            pooled = F.avg_pool2d(x[:, channel : channel + 1], stride, stride)
            score = torch.sigmoid(TINY_GAIN * (pooled - 0.25)).permute(0, 2, 3, 1).reshape(-1, 1)
            score = torch.cat([score, score], dim=1).reshape(-1, 1)  # 2 anchors per cell, anchor fastest
            scores.append(score)
            boxes.append(score * 0.0 + self.box)
            keypoints.append(score * 0.0 + self.keypoints)
        return (*scores, *boxes, *keypoints)


class TinyArcFace(torch.nn.Module):
    """A fixed random projection of the 8 x 8 average-pooled crop, each channel's mean removed."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(TINY_EMBEDDING_DIM, 3 * 14 * 14, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 8)
        return (pooled - pooled.mean(dim=(2, 3), keepdim=True)).flatten(1) @ self.projection.T


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str], dynamic: dict) -> None:
    require("onnx", extra="dev", purpose="writing tiny ONNX test models")
    torch.onnx.export(
        module.eval(),
        (example,),
        str(path),
        input_names=["input.1"],
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def write_tiny_face_pack(folder: str | Path, pack: str = "buffalo_l", *, seed: int = 0) -> Path:
    """Write the tiny detector and recogniser under the file names of ``pack`` into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = FACE_PACKS[pack]
    level_outputs = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in TINY_STRIDES]
    _export(
        TinyScrfd(),
        torch.zeros(1, 3, 64, 64),
        folder / spec.detector,
        level_outputs,
        {"input.1": {2: "height", 3: "width"}},
    )
    _export(
        TinyArcFace(seed),
        torch.zeros(1, 3, 112, 112),
        folder / spec.recognizer,
        ["embedding"],
        {"input.1": {0: "batch"}, "embedding": {0: "batch"}},
    )
    return folder


def paint_tiny_face(canvas: np.ndarray, x: int, y: int, size: int, pattern: np.ndarray) -> np.ndarray:
    """Paint a face the tiny detector finds: a ``size`` square at (x, y) in the blue channel, textured by ``pattern``.

    ``pattern`` is a small (k, k) array in [0, 1], upsampled by nearest neighbour; blue runs 170..255
    so the cell's mean stays bright, red and green stay 0. Returns ``canvas`` (H, W, 3) uint8.
    """
    cells = np.asarray(pattern, dtype=np.float64)
    reps = size // cells.shape[0]
    if reps * cells.shape[0] != size:
        raise ValueError(f"size {size} must be a multiple of the pattern size {cells.shape[0]}.")
    block = np.kron(cells, np.ones((reps, reps)))
    canvas[y : y + size, x : x + size, 2] = np.round(170 + 85 * block).astype(np.uint8)
    canvas[y : y + size, x : x + size, :2] = 0
    return canvas


def write_tiny_face_photo(path: str | Path, seed: int) -> str:
    """A 640 px photo whose face the tiny face pack's detector finds (one textured 32 px cell), with a gradient
    elsewhere for the image encoders to see; ``seed`` moves the face and changes its texture."""
    from PIL import Image

    canvas = np.full((640, 640, 3), 60, dtype=np.uint8)
    canvas[:, :, 0] = np.linspace(0, 120, 640, dtype=np.uint8)
    paint_tiny_face(canvas, 96 + 32 * seed, 64, 32, np.random.default_rng(seed).random((4, 4)))
    Image.fromarray(canvas).save(path)
    return str(path)

"""AdaFace's IR (improved residual) face network, written so that the official checkpoints load into it.

The network is AdaFace's ``net.Backbone`` in ``ir`` mode (``mk-minchul/AdaFace`` @ c60eaa7, ``net.py``; the commit
ViStoryBench's submodule pins): a 3x3 stem with PReLU, ``BasicBlockIR`` units (BN, 3x3 conv, BN, PReLU, 3x3 conv
with the stride, BN; the shortcut a 1x1 max pool or a strided 1x1 conv + BN), and an output layer of BN, dropout,
flatten, a linear map to 512 and a BN without affine parameters. It returns the L2-normalised embedding and the
norm. Module names equal theirs (``input_layer.0``, ``body.N.res_layer.M``, ``output_layer.3``...), so a
checkpoint's ``model.``-prefixed keys load after the prefix is cut (their ``inference.load_pretrained_model``).

ViStoryBench's CIDS uses IR-101 trained on WebFace12M (``adaface_ir101_webface12m.ckpt``) on 112 x 112 aligned
faces given as BGR scaled to [-1, 1] (their ``inference.to_input``: :func:`adaface_input`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
"""Units per stage of the IR depths (``net.get_blocks``); ``ir_101`` is depth 100."""
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
EMBEDDING_DIM = 512
CHECKPOINT_PREFIX = "model."


class BasicBlockIR(nn.Module):
    """One IR unit: ``res_layer(x) + shortcut_layer(x)`` (``net.BasicBlockIR``)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(nn.Module):
    """AdaFace's IR backbone for 112 x 112 faces.

    Args:
        units: Units per stage (IR-101: 3, 13, 30, 3).
        widths: Channels per stage (64, 128, 256, 512); each stage halves the resolution.
        embedding_dim: Output size (512).
    """

    def __init__(
        self,
        units: Sequence[int] = UNITS[100],
        widths: Sequence[int] = WIDTHS,
        embedding_dim: int = EMBEDDING_DIM,
    ):
        super().__init__()
        if len(units) != len(widths) or min(units) < 1:
            raise ValueError(f"units and widths must pair up, with at least one unit per stage: {units}, {widths}.")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])
        )
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for count, depth in zip(units, widths, strict=True):
            for k in range(count):
                blocks.append(BasicBlockIR(in_channels, depth, 2 if k == 0 else 1))
                in_channels = depth
        self.body = nn.Sequential(*blocks)
        side = INPUT_SIZE // 2 ** len(widths)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(in_channels * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, 112, 112) BGR in [-1, 1] -> (embedding L2-normalised (n, d), norm (n, 1))."""
        x = self.output_layer(self.body(self.input_layer(x)))
        norm = torch.norm(x, 2, 1, True)
        return x / norm, norm

    @classmethod
    def ir101(cls) -> AdaFaceIR:
        return cls(UNITS[100])

    @classmethod
    def tiny(cls, seed: int = 0) -> AdaFaceIR:
        """A random-weight IR with the same module names: one unit per stage, widths 4-16, embedding 32."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls((1, 1, 1, 1), (4, 8, 8, 16), 32).eval()


def adaface_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors of an AdaFace checkpoint: a Lightning file's ``state_dict`` entries under ``model.``
    (the ``head.`` margin weights are training-only), or a plain state dict as it is."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(str(k).startswith(CHECKPOINT_PREFIX) for k in state):
        return {k[len(CHECKPOINT_PREFIX) :]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
    return dict(state)


def load_adaface(path: str | Path, *, model: AdaFaceIR | None = None) -> AdaFaceIR:
    """``model`` (default: a new IR-101) with the weights of ``path``, in eval mode on the CPU.

    Raises:
        MissingWeightsError: No such file.
        ModelLoadError: The file is not an AdaFace checkpoint of this depth (the message names the first wrong key).
    """
    from storycast.vision.checkpoints import load_state_dict_checked, read_state_dict

    model = model if model is not None else AdaFaceIR.ir101()
    state = adaface_state_dict(read_state_dict(path, what="AdaFace", setting="--eval-set adaface_model="))
    load_state_dict_checked(model, state, what="AdaFace IR", source=str(path))
    return model.eval()


def adaface_input(aligned_rgb: Sequence[np.ndarray]) -> torch.Tensor:
    """(n, 3, 112, 112) input from aligned RGB uint8 faces: channels reversed to BGR, ``(x / 255 - 0.5) / 0.5``
    (AdaFace ``inference.to_input``)."""
    batch = np.stack([np.asarray(face)[:, :, ::-1] for face in aligned_rgb]).astype(np.float64)
    return torch.from_numpy(((batch / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()).float()

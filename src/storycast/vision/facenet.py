"""FaceNet's Inception-ResNet-v1, written so that the VGGFace2 checkpoint ``20180402-114759-vggface2.pt`` loads.

The network is facenet-pytorch's ``InceptionResnetV1`` as ViStoryBench vendors it (``ViStoryBench/vistorybench`` @
514cc31, ``vistorybench/bench/content/inception_resnet_v1.py``): a convolutional stem, 5 Block35 (scale 0.17),
Mixed_6a, 10 Block17 (0.10), Mixed_7a, 5 Block8 (0.20), a last Block8 without ReLU, global average pooling,
dropout, a 1792 -> 512 linear map without bias, BatchNorm1d (eps 0.001) and L2 normalisation. Convolutions have no
bias and are followed by BatchNorm2d(eps=0.001) and ReLU. Module names equal theirs (``conv2d_1a.conv``,
``repeat_1.0.branch1.1.bn``, ``last_bn``...); the checkpoint's classifier (``logits.*``, 8631 VGGFace2 identities)
is not part of the embedding and is left out.

``width`` divides every channel count and ``repeats`` sets the block counts, for the tiny test network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPEATS = (5, 10, 5)
EMBEDDING_DIM = 512
CLASSIFIER_PREFIX = "logits."


class BasicConv2d(nn.Sequential):
    """Conv (no bias) + BatchNorm2d(eps=0.001) + ReLU, named ``conv`` / ``bn``."""

    def __init__(self, cin: int, cout: int, kernel, stride: int, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU()


class _Residual(nn.Module):
    """``relu(x + scale * conv2d(cat(branches)))``: Block35, Block17 and Block8 differ only in their branches."""

    def __init__(self, branches: list[nn.Module], width: int, channels: int, scale: float, relu: bool = True):
        super().__init__()
        self.scale = scale
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self.n_branches = len(branches)
        self.conv2d = nn.Conv2d(width, channels, 1, 1)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], 1)
        out = self.conv2d(out) * self.scale + x
        return self.relu(out) if self.relu is not None else out


def _block35(c: dict[str, int], scale: float) -> _Residual:
    b, d = c["b35"], c["c35"]
    return _Residual(
        [
            BasicConv2d(d, b, 1, 1),
            nn.Sequential(BasicConv2d(d, b, 1, 1), BasicConv2d(b, b, 3, 1, 1)),
            nn.Sequential(BasicConv2d(d, b, 1, 1), BasicConv2d(b, b, 3, 1, 1), BasicConv2d(b, b, 3, 1, 1)),
        ],
        3 * b,
        d,
        scale,
    )


def _block17(c: dict[str, int], scale: float) -> _Residual:
    b, d = c["b17"], c["c17"]
    return _Residual(
        [
            BasicConv2d(d, b, 1, 1),
            nn.Sequential(
                BasicConv2d(d, b, 1, 1), BasicConv2d(b, b, (1, 7), 1, (0, 3)), BasicConv2d(b, b, (7, 1), 1, (3, 0))
            ),
        ],
        2 * b,
        d,
        scale,
    )


def _block8(c: dict[str, int], scale: float, relu: bool = True) -> _Residual:
    b, d = c["b8"], c["c8"]
    return _Residual(
        [
            BasicConv2d(d, b, 1, 1),
            nn.Sequential(
                BasicConv2d(d, b, 1, 1), BasicConv2d(b, b, (1, 3), 1, (0, 1)), BasicConv2d(b, b, (3, 1), 1, (1, 0))
            ),
        ],
        2 * b,
        d,
        scale,
        relu,
    )


class _Concat(nn.Module):
    """Mixed_6a / Mixed_7a: branches side by side (the last one a max pool)."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self.n_branches = len(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], 1)


def _channels(width: int) -> dict[str, int]:
    """Channel counts of the official network divided by ``width`` (they stay consistent: 896 = 384 + 256 + 256,
    1792 = 384 + 256 + 256 + 896)."""
    full = {"s1": 32, "s2": 64, "s3": 80, "s4": 192, "c35": 256, "b35": 32, "m6a": 384, "m6b": 192, "c17": 896,
            "b17": 128, "m7a": 256, "m7b": 384, "c8": 1792, "b8": 192}  # fmt: skip
    if any(v % width for v in full.values()):
        raise ValueError(f"width {width} must divide every channel count of the network (use 1, 2, 4, 8 or 16).")
    return {k: v // width for k, v in full.items()}


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 embedding network (no classifier).

    Args:
        repeats: Block35, Block17 and Block8 counts (5, 10, 5).
        width: Divisor of every channel count (1: the official network).
        embedding_dim: Output size (512).
    """

    def __init__(self, repeats: Sequence[int] = REPEATS, width: int = 1, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        c = _channels(width)
        self.conv2d_1a = BasicConv2d(3, c["s1"], 3, 2)
        self.conv2d_2a = BasicConv2d(c["s1"], c["s1"], 3, 1)
        self.conv2d_2b = BasicConv2d(c["s1"], c["s2"], 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, 2)
        self.conv2d_3b = BasicConv2d(c["s2"], c["s3"], 1, 1)
        self.conv2d_4a = BasicConv2d(c["s3"], c["s4"], 3, 1)
        self.conv2d_4b = BasicConv2d(c["s4"], c["c35"], 3, 2)
        self.repeat_1 = nn.Sequential(*[_block35(c, 0.17) for _ in range(repeats[0])])
        self.mixed_6a = _Concat(
            [
                BasicConv2d(c["c35"], c["m6a"], 3, 2),
                nn.Sequential(
                    BasicConv2d(c["c35"], c["m6b"], 1, 1),
                    BasicConv2d(c["m6b"], c["m6b"], 3, 1, 1),
                    BasicConv2d(c["m6b"], c["c35"], 3, 2),
                ),
                nn.MaxPool2d(3, 2),
            ]
        )
        self.repeat_2 = nn.Sequential(*[_block17(c, 0.10) for _ in range(repeats[1])])
        self.mixed_7a = _Concat(
            [
                nn.Sequential(BasicConv2d(c["c17"], c["m7a"], 1, 1), BasicConv2d(c["m7a"], c["m7b"], 3, 2)),
                nn.Sequential(BasicConv2d(c["c17"], c["m7a"], 1, 1), BasicConv2d(c["m7a"], c["m7a"], 3, 2)),
                nn.Sequential(
                    BasicConv2d(c["c17"], c["m7a"], 1, 1),
                    BasicConv2d(c["m7a"], c["m7a"], 3, 1, 1),
                    BasicConv2d(c["m7a"], c["m7a"], 3, 2),
                ),
                nn.MaxPool2d(3, 2),
            ]
        )
        self.repeat_3 = nn.Sequential(*[_block8(c, 0.20) for _ in range(repeats[2])])
        self.block8 = _block8(c, 1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.6)
        self.last_linear = nn.Linear(c["c8"], embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, d) L2-normalised embeddings."""
        for layer in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b):
            x = layer(x)
        for layer in (self.conv2d_4a, self.conv2d_4b, self.repeat_1, self.mixed_6a, self.repeat_2, self.mixed_7a):
            x = layer(x)
        x = self.avgpool_1a(self.block8(self.repeat_3(x)))
        x = self.last_bn(self.last_linear(self.dropout(x).flatten(1)))
        return F.normalize(x, p=2, dim=1)

    @classmethod
    def tiny(cls, seed: int = 0) -> InceptionResnetV1:
        """A random-weight network with the same module names: one block per repeat, channels / 16, embedding 32."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls((1, 1, 1), width=16, embedding_dim=32).eval()


def load_facenet(path: str | Path, *, model: InceptionResnetV1 | None = None) -> InceptionResnetV1:
    """``model`` (default: the official-size network) with the weights of ``path`` (e.g. ``20180402-114759-vggface2.pt``), eval mode.

    Raises:
        MissingWeightsError: No such file.
        ModelLoadError: The file is not an Inception-ResNet-v1 of this size (the message names the first wrong key).
    """
    from storycast.vision.checkpoints import load_state_dict_checked, read_state_dict

    model = model if model is not None else InceptionResnetV1()
    state = {
        k: v
        for k, v in read_state_dict(path, what="FaceNet", setting="--eval-set facenet_model=").items()
        if not k.startswith(CLASSIFIER_PREFIX)
    }
    load_state_dict_checked(model, state, what="FaceNet Inception-ResNet-v1", source=str(path))
    return model.eval()


def facenet_input(aligned_bgr: Sequence[np.ndarray]) -> torch.Tensor:
    """(n, 3, h, w) input as ViStoryBench gives it (``_get_facenet_features``): the aligned face in facexlib's BGR
    channel order, divided by 255, without facenet-pytorch's usual ``(x - 127.5) / 128`` standardisation."""
    batch = np.stack([np.asarray(face) for face in aligned_bgr]).astype(np.float32) / 255.0
    return torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())

"""Inception-v3 class probabilities, for the Inception Score as ViStoryBench computes it.

ViStoryBench (``ViStoryBench/vistorybench`` @ 514cc31, ``vistorybench/bench/diversity/inception_score.py``) uses
``torchvision.models.inception_v3(pretrained=True, transform_input=False)``: the ImageNet weights ported from
TensorFlow, ``inception_v3_google-0cc3c7bd.pth`` (https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth),
in eval mode (the auxiliary classifier is built, so the file loads, but not run), softmax over the 1000 logits.
torchvision is not a dependency of storycast, so the network is written here with torchvision's module names
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch_pool.bn.running_mean``, ``AuxLogits.fc.weight``, ``fc.bias``, ...)
and block shapes (``torchvision/models/inception.py``), and that same file loads into it.

Preprocessing (``inception_score.py`` lines 56-61): ``Resize(299)`` (shorter side to 299, PIL bilinear),
``CenterCrop(299)``, ``ToTensor()``, ``Normalize`` with ImageNet's mean and std. With ``transform_input=False`` the
ImageNet-normalised pixels go in as they are, although these TensorFlow weights were trained on [-1, 1] inputs
(torchvision's default for pretrained weights, ``transform_input=True``, would convert them); we keep the benchmark's
choice, since its numbers depend on it (docs/metrics-vistorybench.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from storycast.utils.torch_utils import seeded
from storycast.vision.checkpoints import load_module_file
from storycast.vision.features import ImageEncoder

if TYPE_CHECKING:
    from PIL import Image

INCEPTION_CHECKPOINT_FILE = "inception_v3_google-0cc3c7bd.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 299
TORCHVISION_PARAMETERS = 27_161_264
"""torchvision's ``Inception_V3_Weights.IMAGENET1K_V1.meta['num_params']`` (with the auxiliary classifier)."""


@dataclass(frozen=True)
class InceptionConfig:
    """Shape of the network.

    Attributes:
        num_classes: Classifier outputs (1000 for ImageNet).
        width_divisor: Every block's channel count is divided by this (at least 2 channels): 1 is torchvision's
            network; larger values make random-weight test models.
    """

    num_classes: int = 1000
    width_divisor: int = 1

    def channels(self, c: int) -> int:
        return max(2, c // self.width_divisor)

    @classmethod
    def tiny(cls) -> InceptionConfig:
        return cls(num_classes=10, width_divisor=16)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU: torchvision's ``BasicConv2d``."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(x: torch.Tensor, *convs: nn.Module) -> torch.Tensor:
    for conv in convs:
        x = conv(x)
    return x


def _pooled(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """The branch every A, C and E block has: 3x3 average pool (stride 1, padding counted), then a 1x1 conv."""
    return conv(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int, ch: Callable[[int], int]):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, ch(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, ch(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(ch(48), ch(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, ch(pool_features), kernel_size=1)
        self.out_channels = ch(64) + ch(64) + ch(96) + ch(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch5x5_1, self.branch5x5_2),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                _pooled(x, self.branch_pool),
            ],
            1,
        )


class InceptionB(nn.Module):
    def __init__(self, in_channels: int, ch: Callable[[int], int]):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, ch(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), ch(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), ch(96), kernel_size=3, stride=2)
        self.out_channels = ch(384) + ch(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int, ch: Callable[[int], int]):
        super().__init__()
        c7 = ch(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, ch(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, ch(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, ch(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, ch(192), kernel_size=1)
        self.out_channels = 4 * ch(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4)
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                _chain(x, *double, self.branch7x7dbl_5),
                _pooled(x, self.branch_pool),
            ],
            1,
        )


class InceptionD(nn.Module):
    def __init__(self, in_channels: int, ch: Callable[[int], int]):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, ch(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(ch(192), ch(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, ch(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(ch(192), ch(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(ch(192), ch(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(ch(192), ch(192), kernel_size=3, stride=2)
        self.out_channels = ch(320) + ch(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                _chain(x, self.branch3x3_1, self.branch3x3_2),
                _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, ch: Callable[[int], int]):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, ch(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, ch(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(ch(384), ch(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(ch(384), ch(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, ch(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(448), ch(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(ch(384), ch(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(ch(384), ch(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, ch(192), kernel_size=1)
        self.out_channels = ch(320) + 4 * ch(384) + ch(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                _pooled(x, self.branch_pool),
            ],
            1,
        )


class InceptionAux(nn.Module):
    """The auxiliary classifier: present so that the checkpoint's ``AuxLogits.*`` keys load; never run here."""

    def __init__(self, in_channels: int, num_classes: int, ch: Callable[[int], int]):
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, ch(128), kernel_size=1)
        self.conv1 = BasicConv2d(ch(128), ch(768), kernel_size=5)
        self.fc = nn.Linear(ch(768), num_classes)


class InceptionV3(nn.Module):
    """torchvision's ``Inception3`` in eval mode with ``transform_input=False``: logits (n, num_classes)."""

    def __init__(self, config: InceptionConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.Conv2d_1a_3x3 = BasicConv2d(3, ch(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(ch(32), ch(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(ch(32), ch(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(ch(64), ch(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(ch(80), ch(192), kernel_size=3)
        self.Mixed_5b = InceptionA(ch(192), 32, ch)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, ch)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, ch)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, ch)
        width = self.Mixed_6a.out_channels
        self.Mixed_6b = InceptionC(width, 128, ch)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, ch)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, ch)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, ch)
        self.AuxLogits = InceptionAux(self.Mixed_6e.out_channels, config.num_classes, ch)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, ch)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, ch)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, ch)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, config.num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = _chain(pixel_values, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a)
        x = _chain(x, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e)
        x = _chain(x, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # dropout is the identity in eval


def resize_shorter_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on a PIL image (bilinear; its size arithmetic)."""
    from PIL import Image as PILImage

    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), PILImage.Resampling.BILINEAR)
    top = round((new_h - size) / 2.0)  # Python rounds halves to even, as torchvision does
    left = round((new_w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def inception_pixel_values(images: Sequence[Image.Image], size: int = INPUT_SIZE) -> torch.Tensor:
    """ViStoryBench's Inception preprocessing: RGB, shorter side to ``size``, center crop, [0, 1], ImageNet-normalised."""
    import numpy as np

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    arrays = [np.asarray(resize_shorter_center_crop(i.convert("RGB"), size), dtype=np.float32) / 255.0 for i in images]
    if not arrays:
        return torch.zeros(0, 3, size, size)
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - mean) / std


class InceptionClassifier(ImageEncoder):
    """Inception-v3 softmax class probabilities of images (``class_probabilities``: (n, num_classes) float32)."""

    def __init__(self, model: InceptionV3, *, input_size: int = INPUT_SIZE, **options: Any):
        super().__init__(model, None, **options)
        self.input_size = input_size

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        setting: str = "--inception-model",
        config: InceptionConfig | None = None,
    ) -> InceptionClassifier:
        """Load torchvision's ``inception_v3_google-0cc3c7bd.pth`` (or any file with its keys and shapes) into the network
        of ``config`` (default torchvision's)."""
        build = partial(InceptionV3, config or InceptionConfig())
        model = load_module_file(build, path, what="Inception-v3", setting=setting)
        return cls(model, device=device, dtype=dtype, batch_size=batch_size, checkpoint=str(path))

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        image_size: int = 75,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> InceptionClassifier:
        """A random-weight Inception-v3 with channels / 16 and 10 classes on 75-px inputs (its smallest size)."""
        with seeded(seed):
            model = InceptionV3(InceptionConfig.tiny())
            for module in model.modules():  # random statistics, so that batch norm is not an identity
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0.0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        return cls(
            model, input_size=image_size, device=device, dtype=dtype, batch_size=batch_size, checkpoint=f"tiny:{seed}"
        )

    @property
    def dim(self) -> int:
        return self.model.config.num_classes

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return inception_pixel_values(images, self.input_size)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise TypeError("InceptionClassifier gives class probabilities: call class_probabilities(images).")

    def class_probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``softmax(logits)`` per image, (n, num_classes) float32 on the CPU (``inception_score.py`` line 83)."""
        return self.raw_outputs(images).softmax(dim=1)

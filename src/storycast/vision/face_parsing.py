"""Face parsing with facexlib's BiSeNet (19 CelebAMask-HQ classes), in torch with facexlib's key names, so that its
``parsing_bisenet.pth`` (facexlib release v0.2.0) loads strictly; what PuLID whites out before EVA-CLIP sees a face.

Architecture (xinntao/facexlib ``facexlib/parsing/bisenet.py`` and ``resnet.py`` at 260620a; facts only, the code is
our own): a ResNet-18 context path (stride-2 7x7 stem, max pool, 4 stages of 2 basic blocks, 64-128-256-512
channels) whose 1/16 and 1/32 features go through attention-refinement modules (conv-BN-ReLU, then a sigmoid gate
from the global mean), the 1/32 branch plus its global mean (``conv_avg``), each upsampled (nearest) and refined by a
3x3 conv-BN-ReLU; a feature-fusion module over [1/8 ResNet features, the refined 1/8 context] (1x1 conv-BN-ReLU, a
squeeze gate, ``feat * gate + feat``); the head (3x3 conv-BN-ReLU 256, 1x1 conv to 19 classes) upsampled bilinearly
(``align_corners=True``) to the input size. The two auxiliary heads (``conv_out16``, ``conv_out32``) are held for
the weights' keys and not computed: PuLID reads the main output only.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from storycast.errors import ModelLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BISENET_FILE = "parsing_bisenet.pth"
PULID_BACKGROUND = (0, 16, 18, 7, 8, 9, 14, 15)
"""The classes PuLID whites out (``pipeline_flux.py`` line 165): background, cloth, hat, both ears, earring, neck,
necklace."""


class ConvBNReLU(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int = 3, padding: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.downsample = None
        if channels_in != channels_out or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for number, (channels_in, channels_out, stride) in enumerate(widths, start=1):
            blocks = nn.Sequential(
                BasicBlock(channels_in, channels_out, stride), BasicBlock(channels_out, channels_out)
            )
            self.add_module(f"layer{number}", blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinementModule(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = ConvBNReLU(channels_in, channels_out)
        self.conv_atten = nn.Conv2d(channels_out, channels_out, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1/8 ResNet features and the refined 1/8 context."""
        feat8, feat16, feat32 = self.resnet(x)
        context32 = self.arm32(feat32) + self.conv_avg(_global_mean(feat32))  # the mean broadcast over the grid
        up32 = self.conv_head32(F.interpolate(context32, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusionModule(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.convblk = ConvBNReLU(channels_in, channels_out, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(channels_out, channels_out // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(channels_out // 4, channels_out, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(feat)))))
        return feat * gate + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, channels_in: int, channels_mid: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(channels_in, channels_mid)
        self.conv_out = nn.Conv2d(channels_mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """``forward(pixels (B, 3, H, W), ImageNet-normalised)`` -> class scores (B, 19, H, W)."""

    def __init__(self, classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, classes)
        self.conv_out16 = BiSeNetOutput(128, 64, classes)
        self.conv_out32 = BiSeNetOutput(128, 64, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        spatial, context = self.cp(pixels)
        scores = self.conv_out(self.ffm(spatial, context))
        return F.interpolate(scores, pixels.shape[2:], mode="bilinear", align_corners=True)

    @torch.no_grad()
    def labels(self, faces: torch.Tensor) -> torch.Tensor:
        """Per-pixel class (B, H, W) of RGB faces (B, 3, H, W) in [0, 1] (ImageNet mean and std, as PuLID)."""
        mean = torch.tensor(IMAGENET_MEAN, device=faces.device, dtype=faces.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=faces.device, dtype=faces.dtype).view(1, 3, 1, 1)
        parameter = next(self.parameters())
        return self((faces - mean).div(std).to(parameter.device, parameter.dtype)).argmax(dim=1).to(faces.device)


def white_out(faces: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...] = PULID_BACKGROUND) -> torch.Tensor:
    """``faces`` (B, 3, H, W) with every pixel whose label (B, H, W) is one of ``classes`` set to white (1.0)."""
    background = torch.isin(labels, torch.tensor(classes, device=labels.device))[:, None]
    return torch.where(background, torch.ones_like(faces), faces)


def find_bisenet(path: str | Path) -> Path:
    """``path`` or ``path / parsing_bisenet.pth``.

    Raises:
        MissingWeightsError: Neither is a file.
    """
    from storycast.errors import MissingWeightsError

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / BISENET_FILE
    if not path.is_file():
        raise MissingWeightsError(
            f"facexlib's face parsing weights are not at '{path}'. Fix: download {BISENET_FILE} (facexlib release "
            "v0.2.0, https://github.com/xinntao/facexlib/releases) and pass its path or folder (--set face_parsing=)."
        )
    return path


def load_bisenet(path: str | Path) -> BiSeNet:
    """facexlib's ``parsing_bisenet.pth``, loaded strictly after a key and shape check.

    Raises:
        MissingWeightsError: The file is missing.
        ModelLoadError: It cannot be read or does not fit (the key and the fix named).
    """
    path = find_bisenet(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(
            f"could not read '{path}' ({type(err).__name__}). Fix: download {BISENET_FILE} again."
        ) from err
    model = BiSeNet()
    # BatchNorm's step counters: files saved before they existed lack them, and BatchNorm fills them in.
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    bad = [k for k, shape in expected.items() if k not in state or tuple(state[k].shape) != shape]
    if bad:
        raise ModelLoadError(
            f"'{path}' is not facexlib's BiSeNet face parser: '{bad[0]}' is missing or of another shape. Fix: pass "
            f"{BISENET_FILE} from facexlib's release v0.2.0."
        )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)

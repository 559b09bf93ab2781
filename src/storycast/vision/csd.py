"""CSD style embeddings (Somepalli et al., "Measuring Style Similarity in Diffusion Models", 2024), as
ViStoryBench scores style with them.

The network is OpenAI CLIP's vision transformer (ViT-L/14 at 224 px) without its final projection, followed by two
``(width, 768)`` projections: ``last_layer_style`` and ``last_layer_content``. ViStoryBench (``ViStoryBench/vistorybench``
@ 514cc31, ``vistorybench/bench/style/csd/{clip_model,csd_model}.py``) builds it as ``CSD_CLIP('vit_large',
only_global_token=True)``: the class token after ``ln_post``, times ``last_layer_style``, L2-normalised, is the style
embedding its CSD score uses (``csd_evaluator.py`` ``_encode``: ``self.csd_encoder(x)['style']``).

Parameter names are the checkpoint's (``backbone.conv1.weight``, ``backbone.transformer.resblocks.0.attn.in_proj_weight``,
``last_layer_style``, ...), so the benchmark's ``csd_vit-large.pth`` loads as it is; unlike their ``strict=False``
load, a file whose keys or shapes differ is refused with the keys named (a silent partial load leaves random weights).

Preprocessing (``csd_evaluator.py`` ``_preprocess``/``_encode``): RGB scaled to [0, 1], resized to 224 x 224 without
keeping the aspect ratio (bicubic, antialiased, as torchvision's ``Resize`` does on a float tensor), normalised with
OpenAI CLIP's mean and std. Everything runs in float32, as their ``load_csd`` casts the model to float32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from storycast.utils.torch_utils import seeded
from storycast.vision.checkpoints import load_module_file
from storycast.vision.features import ImageEncoder

if TYPE_CHECKING:
    from PIL import Image

CSD_CHECKPOINT_FILE = "csd_vit-large.pth"
"""The file ViStoryBench loads (``<pretrain>/csd/csd_vit-large.pth``, ``csd_evaluator.py`` line 35)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's normalisation, ``csd_evaluator.py`` lines 40-41."""


@dataclass(frozen=True)
class CsdConfig:
    """Shape of the CSD network.

    Attributes:
        image_size: Input side in pixels (images are resized to a square of this side).
        patch_size: ViT patch side.
        width: Transformer width.
        layers: Transformer blocks.
        heads: Attention heads.
        output_dim: Size of the style and content embeddings.
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    output_dim: int = 768

    @classmethod
    def vit_large(cls) -> CsdConfig:
        """``build_model('vit_large')``: 224 px, patch 14, width 1024, 24 layers, 1024 // 64 = 16 heads, 768 out."""
        return cls()

    @classmethod
    def tiny(cls, image_size: int = 32) -> CsdConfig:
        """2 layers of width 32, patch 8, 16-dim embeddings: for offline tests."""
        return cls(image_size=image_size, patch_size=8, width=32, layers=2, heads=4, output_dim=16)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """One pre-norm transformer block with OpenAI CLIP's parameter names (``attn``, ``ln_1``, ``mlp.c_fc``, ...)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class ClipVisionBackbone(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` with ``proj = None``: returns ``ln_post`` of the class token, (n, width)."""

    def __init__(self, config: CsdConfig):
        super().__init__()
        grid = config.image_size // config.patch_size
        self.conv1 = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(config.width) * config.width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, config.width) * config.width**-0.5)
        self.ln_pre = nn.LayerNorm(config.width)
        self.transformer = Transformer(config.width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(config.width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values).flatten(2).transpose(1, 2)  # (n, grid², width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0])


class CsdModel(nn.Module):
    """CSD: the CLIP vision backbone and its style and content projections (``CSD_CLIP`` of ``csd_model.py``)."""

    def __init__(self, config: CsdConfig):
        super().__init__()
        self.config = config
        self.backbone = ClipVisionBackbone(config)
        scale = config.width**-0.5
        self.last_layer_style = nn.Parameter(torch.randn(config.width, config.output_dim) * scale)
        self.last_layer_content = nn.Parameter(torch.randn(config.width, config.output_dim) * scale)

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'feature', 'style', 'content'}``: the backbone's (n, width) and the two L2-normalised (n, output_dim)."""
        feature = self.backbone(pixel_values)
        style = nn.functional.normalize(feature @ self.last_layer_style, dim=-1)
        content = nn.functional.normalize(feature @ self.last_layer_content, dim=-1)
        return {"feature": feature, "style": style, "content": content}


def csd_pixel_values(
    images: Sequence[Image.Image],
    *,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """ViStoryBench's CSD preprocessing: [0, 1] RGB, bicubic antialiased resize to ``size`` x ``size``, CLIP-normalised.

    The resize is torchvision's on a float tensor (``interpolate(..., 'bicubic', antialias=True)``, no clamping), so it
    is done image by image on the tensor, not with PIL. Returns (n, 3, size, size) float32.
    """
    import numpy as np

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for image in images:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
        resized = nn.functional.interpolate(
            tensor, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
        out.append((resized - mean_t) / std_t)
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


class CsdFeatures(ImageEncoder):
    """CSD style embeddings of images: (n, output_dim), L2-normalised, float32 on the CPU (``encode_images``)."""

    def __init__(self, model: CsdModel, **options: Any):
        super().__init__(model, None, **options)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        setting: str = "--csd-model",
        config: CsdConfig | None = None,
    ) -> CsdFeatures:
        """Load ``csd_vit-large.pth`` (a state dict with the official keys; a CSD training checkpoint that wraps it
        under ``model_state_dict`` with ``module.`` prefixes loads too) into the CSD network of ``config`` (default
        ViT-L/14, :meth:`CsdConfig.vit_large`)."""
        model = load_module_file(partial(CsdModel, config or CsdConfig.vit_large()), path, what="CSD", setting=setting)
        return cls(model, device=device, dtype=dtype, batch_size=batch_size, checkpoint=str(path))

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        image_size: int = 32,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> CsdFeatures:
        """A random-weight CSD (:meth:`CsdConfig.tiny`) for offline tests."""
        with seeded(seed):
            model = CsdModel(CsdConfig.tiny(image_size))
        return cls(model, device=device, dtype=dtype, batch_size=batch_size, checkpoint=f"tiny-csd:{seed}")

    @property
    def dim(self) -> int:
        return self.model.config.output_dim

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return csd_pixel_values(images, size=self.model.config.image_size)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)["style"]

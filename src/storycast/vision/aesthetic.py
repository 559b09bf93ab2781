"""Aesthetic Predictor V2.5 (discus0434/aesthetic-predictor-v2-5), as ViStoryBench scores image quality with it.

The predictor is SigLIP so400m-patch14-384's vision tower (``SiglipVisionModel``; its pooled output, the attention-pool
head) followed by an MLP head ``1152 -> 1024 -> 128 -> 64 -> 16 -> 1`` (dropout between the layers, no activation),
fed the L2-normalised pooled embedding; the one output is the score (about 1-10). Sources: ViStoryBench
(``ViStoryBench/vistorybench`` @ 514cc31) ``vistorybench/bench/quality/aesthetic/aesthetic-predictor-v2-5/model.py``
(the head, ``scoring_head.{0,2,4,6,8}`` in ``aesthetic_predictor_v2_5.pth``) and ``hubconf.py`` (the backbone
``google/siglip-so400m-patch14-384`` from a folder), and ``quality/aesthetic_evaluator.py`` (the preprocessing).

ViStoryBench's preprocessing is its own, not the predictor's: ``transforms.Resize((378, 378))`` (PIL, bilinear, the
aspect ratio not kept) then ``ToTensor()`` ([0, 1]), with no normalisation (the predictor's own SigLIP processor
would map pixels to [-1, 1] at 384 px). 378 = 27 x 14 gives SigLIP's 27 x 27 = 729 patches, the number its position
embeddings hold, so no interpolation happens. We reproduce that (docs/metrics-vistorybench.md, deviations: the
benchmark runs the model in float16; we default to float32 on the CPU, ``dtype`` chooses).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from storycast.utils.torch_utils import seeded
from storycast.vision.checkpoints import load_checkpoint, load_state_dict_checked, read_state_dict
from storycast.vision.features import ImageEncoder

if TYPE_CHECKING:
    from PIL import Image

SIGLIP_CHECKPOINT = "google/siglip-so400m-patch14-384"
"""The backbone (``hubconf.py`` ``encoder_model_name``)."""
HEAD_CHECKPOINT_FILE = "aesthetic_predictor_v2_5.pth"
"""The head's weights: https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/aesthetic_predictor_v2_5.pth"""
VISTORY_INPUT_SIZE = 378
"""``aesthetic_evaluator.py`` line 29: ``transforms.Resize((378, 378))``."""
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
HEAD_DROPOUTS = (0.5, 0.5, 0.5, 0.2)


class AestheticHead(nn.Module):
    """The V2.5 scoring head: linear layers with dropout between them (indices 0, 2, 4, 6, 8 hold the weights)."""

    def __init__(self, input_size: int, widths: Sequence[int] = HEAD_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [input_size, *widths]
        for i in range(len(widths)):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(widths) - 1:
                layers.append(nn.Dropout(HEAD_DROPOUTS[i]))
        self.scoring_head = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scoring_head(embeddings)


class AestheticPredictor(nn.Module):
    """SigLIP vision tower + :class:`AestheticHead` on its L2-normalised pooled output: one score per image, (n,)."""

    def __init__(self, vision_model: Any, head: AestheticHead):
        super().__init__()
        self.vision_model = vision_model
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
        return self.head(pooled).squeeze(-1)


def vistory_aesthetic_pixels(images: Sequence[Image.Image], size: int = VISTORY_INPUT_SIZE) -> torch.Tensor:
    """ViStoryBench's preprocessing: RGB, PIL bilinear resize to ``size`` x ``size``, [0, 1], not normalised."""
    import numpy as np
    from PIL import Image as PILImage

    arrays = [
        np.asarray(image.convert("RGB").resize((size, size), PILImage.Resampling.BILINEAR), dtype=np.float32) / 255.0
        for image in images
    ]
    if not arrays:
        return torch.zeros(0, 3, size, size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class AestheticScorer(ImageEncoder):
    """Aesthetic Predictor V2.5 scores of images (``score_images``: (n,) float32 on the CPU).

    ``input_size`` is the side images are resized to (378 as ViStoryBench; the tiny model uses a multiple of its patch).
    """

    def __init__(self, model: AestheticPredictor, *, input_size: int = VISTORY_INPUT_SIZE, **options: Any):
        super().__init__(model, None, **options)
        self.input_size = input_size

    @classmethod
    def from_pretrained(
        cls,
        head_path: str | Path,
        siglip_source: str | Path = SIGLIP_CHECKPOINT,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        local_files_only: bool = False,
        setting: str = "--aesthetic-model",
        siglip_setting: str = "--siglip-model",
    ) -> AestheticScorer:
        """Load the SigLIP backbone (Hub id or folder) and the head file ``aesthetic_predictor_v2_5.pth``."""
        from transformers import SiglipVisionModel

        state = read_state_dict(head_path, what="Aesthetic Predictor V2.5 head", setting=setting)
        vision = load_checkpoint(
            lambda src, local: SiglipVisionModel.from_pretrained(src, local_files_only=local),
            siglip_source,
            what="SigLIP",
            setting=siglip_setting,
            local_files_only=local_files_only,
        )
        head = AestheticHead(vision.config.hidden_size)
        load_state_dict_checked(head, state, what="Aesthetic Predictor V2.5 head", source=str(head_path))
        return cls(
            AestheticPredictor(vision, head),
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            checkpoint=f"{siglip_source} + {head_path}",
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        image_size: int = 28,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> AestheticScorer:
        """A random-weight SigLIP (2 layers, width 32, patch 14) and the V2.5 head on it, for offline tests."""
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=14,
        )
        with seeded(seed):
            model = AestheticPredictor(SiglipVisionModel(config), AestheticHead(config.hidden_size))
        return cls(
            model,
            input_size=image_size,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            checkpoint=f"tiny-aesthetic:{seed}",
        )

    @property
    def dim(self) -> int:
        return 1

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return vistory_aesthetic_pixels(images, self.input_size)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).unsqueeze(-1)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise TypeError("AestheticScorer gives scores, not features: call score_images(images).")

    def score_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One aesthetic score per image, (n,) float32 on the CPU (the head's raw output)."""
        return self.raw_outputs(images).squeeze(-1)

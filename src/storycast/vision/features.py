"""Image and text features through transformers: CLIP (the evaluation metrics) and DINO (the metrics, and grouping
images of one character when training sets are built).

Each extractor holds one model, loaded once, and encodes lists of PIL images (and, for CLIP, texts)
in batches into L2-normalised float32 features on the CPU, ready for ``evaluation/metrics.py``. ``tiny()``
builds a random-weight model from a config in code, for offline tests.

Checkpoints the papers used (docs/metrics.md §4):

- CLIP: the 1P1S-lineage script scores CLIP-T with OpenAI ViT-B/32 (``openai/clip-vit-base-patch32``)
  and CLIP-I with ``openai/clip-vit-base-patch16``; torchmetrics' CLIPScore and ViStoryBench use
  ``openai/clip-vit-large-patch14``. IdentityStory's checkpoint is unknown.
- DINO: DINOv2 (``facebook/dinov2-base``, CLS token); DINO v1 as DreamBooth's DINO score
  (``facebook/dino-vits16``) and Infinite-Story (``facebook/dino-vitb8``).

Preprocessing is the checkpoint's own image processor, pinned to transformers' PIL backend (CLIP's
reproduces OpenAI ``clip``'s resize-224 bicubic / center-crop / normalise for PIL inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from storycast.errors import SettingsError
from storycast.utils.torch_utils import seeded
from storycast.vision.checkpoints import load_checkpoint, load_pil_image_processor, pil_image_processor_class

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_CLIP_CHECKPOINT = "openai/clip-vit-large-patch14"
CLIP_CHECKPOINTS: dict[str, str] = {
    "openai/clip-vit-base-patch32": "OpenAI ViT-B/32: 1P1S-lineage CLIP-T (Hessel's CLIPScore backbone)",
    "openai/clip-vit-base-patch16": "OpenAI ViT-B/16: 1P1S-lineage CLIP-I",
    "openai/clip-vit-large-patch14": "OpenAI ViT-L/14: torchmetrics CLIPScore default, ViStoryBench CIDS (stylised)",
}
DEFAULT_DINO_CHECKPOINT = "facebook/dinov2-base"
DINO_CHECKPOINTS: dict[str, str] = {
    "facebook/dinov2-base": "DINOv2 ViT-B/14, CLS token",
    "facebook/dino-vits16": "DINO v1 ViT-S/16, CLS token: DreamBooth's DINO score",
    "facebook/dino-vitb8": "DINO v1 ViT-B/8, CLS token: Infinite-Story's DINO score",
}
DinoKind = Literal["dinov2", "dino"]
DINO_KIND_OF_MODEL_TYPE: dict[str, DinoKind] = {"dinov2": "dinov2", "vit": "dino"}


def _check_options(batch_size: int) -> None:
    if batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {batch_size}. Fix: pass a positive batch size.")


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ImageEncoder:
    """Shared part of the extractors: one model + its image processor, batched, no gradients.

    Args:
        model: The transformers model.
        image_processor: The matching image processor (PIL backend).
        device: Where the model runs ('cpu', 'cuda', 'cuda:1', ...).
        dtype: Model dtype (float32 by default; features are returned in float32 either way).
        batch_size: Images (or texts) per forward pass.
        checkpoint: Where the weights came from, recorded in results.
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        checkpoint: str = "<in memory>",
    ):
        _check_options(batch_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.image_processor = image_processor

    @property
    def info(self) -> dict[str, Any]:
        """What produced the features: to be recorded next to the numbers."""
        return {
            "extractor": type(self).__name__,
            "checkpoint": self.checkpoint,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess images with the checkpoint's image processor: (n, 3, H, W) float32."""
        rgb = [image.convert("RGB") for image in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def raw_outputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's outputs for every image, batched and not normalised: (n, d) float32 on the CPU."""
        chunks = []
        for batch in _batches(list(images), self.batch_size):
            pixels = self.pixel_values(batch).to(device=self.device, dtype=self.dtype)
            chunks.append(self._image_features(pixels).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image features, (n, d) float32 on the CPU."""
        return torch.nn.functional.normalize(self.raw_outputs(images), dim=-1)

    @property
    def dim(self) -> int:
        raise NotImplementedError


class ClipFeatures(ImageEncoder):
    """CLIP image and text embeddings (projected, as ``get_image_features`` / ``get_text_features``).

    Used for CLIP-T (image vs its prompt), CLIP-T-C (image vs its context phrase) and CLIP-I.
    Texts longer than the model's 77 positions are truncated, as OpenAI ``clip`` does.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, **options: Any):
        super().__init__(model, image_processor, **options)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_CLIP_CHECKPOINT,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        local_files_only: bool = False,
        setting: str = "--clip-model",
    ) -> ClipFeatures:
        """Load ``CLIPModel``, its tokenizer and its image processor from a Hub id or a folder.

        ``setting`` names the option that points at a local copy; it appears in the error raised
        when the checkpoint is missing (:class:`~storycast.errors.MissingWeightsError`).
        """
        from transformers import AutoTokenizer, CLIPModel

        def load(src: str, local_only: bool) -> tuple[Any, Any, Any]:
            model = CLIPModel.from_pretrained(src, local_files_only=local_only)
            return (
                model,
                load_pil_image_processor(src, local_only),
                AutoTokenizer.from_pretrained(src, local_files_only=local_only),
            )

        model, processor, tokenizer = load_checkpoint(
            load, source, what="CLIP", setting=setting, local_files_only=local_files_only
        )
        return cls(
            model, processor, tokenizer, device=device, dtype=dtype, batch_size=batch_size, checkpoint=str(source)
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        image_size: int = 32,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> ClipFeatures:
        """A random-weight CLIP (2 layers, width 32, projection 16) with the packaged tiny tokenizer."""
        from transformers import CLIPConfig, CLIPModel

        from storycast.models.tiny import tiny_tokenizer

        tokenizer = tiny_tokenizer()
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "max_position_embeddings": tokenizer.model_max_length,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": image_size,
                "patch_size": 8,
            },
            projection_dim=16,
        )
        with seeded(seed):
            model = CLIPModel(config)
        processor = pil_image_processor_class("CLIPImageProcessor")(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        return cls(
            model, processor, tokenizer, device=device, dtype=dtype, batch_size=batch_size, checkpoint=f"tiny:{seed}"
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_tokens(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features, (n, d) float32 on the CPU."""
        chunks = []
        for batch in _batches(list(texts), self.batch_size):
            tokens = self.tokenizer(
                list(batch), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
            ).to(self.device)
            text = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            chunks.append(self.model.text_projection(text.pooler_output).float().cpu())
        if not chunks:
            return torch.zeros(0, self.dim)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


class DinoFeatures(ImageEncoder):
    """DINO image embeddings: the final-layer-normed CLS token of DINOv2 (``Dinov2Model``) or DINO v1 (``ViTModel``)."""

    def __init__(self, model: Any, image_processor: Any, *, kind: DinoKind, **options: Any):
        if kind not in ("dinov2", "dino"):
            raise SettingsError(f"DINO kind '{kind}' is not known. Fix: use 'dinov2' or 'dino'.")
        super().__init__(model, image_processor, **options)
        self.kind = kind

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_DINO_CHECKPOINT,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
        local_files_only: bool = False,
        setting: str = "--dino-model",
    ) -> DinoFeatures:
        """Load a DINOv2 or DINO v1 checkpoint; the kind follows the checkpoint's ``model_type``."""
        from transformers import AutoConfig, Dinov2Model, ViTModel

        def load(src: str, local_only: bool) -> tuple[Any, Any, DinoKind]:
            config = AutoConfig.from_pretrained(src, local_files_only=local_only)
            kind = DINO_KIND_OF_MODEL_TYPE.get(config.model_type)
            if kind is None:
                raise ValueError(f"model_type '{config.model_type}' is not DINOv2 ('dinov2') or DINO v1 ('vit')")
            if kind == "dinov2":
                model = Dinov2Model.from_pretrained(src, config=config, local_files_only=local_only)
            else:
                model = ViTModel.from_pretrained(
                    src, config=config, add_pooling_layer=False, local_files_only=local_only
                )
            return model, load_pil_image_processor(src, local_only), kind

        model, processor, kind = load_checkpoint(
            load, source, what="DINO", setting=setting, local_files_only=local_files_only
        )
        return cls(
            model, processor, kind=kind, device=device, dtype=dtype, batch_size=batch_size, checkpoint=str(source)
        )

    @classmethod
    def tiny(
        cls,
        kind: DinoKind = "dinov2",
        seed: int = 0,
        *,
        image_size: int = 32,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> DinoFeatures:
        """A random-weight DINOv2 or DINO v1 ViT (2 layers, width 32, patch 8)."""
        from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

        common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size}
        with seeded(seed):
            if kind == "dinov2":
                model = Dinov2Model(Dinov2Config(mlp_ratio=2, patch_size=8, **common))
            elif kind == "dino":
                model = ViTModel(ViTConfig(intermediate_size=37, patch_size=8, **common), add_pooling_layer=False)
            else:
                raise SettingsError(f"DINO kind '{kind}' is not known. Fix: use 'dinov2' or 'dino'.")
        if kind == "dinov2":
            processor = pil_image_processor_class("BitImageProcessor")(
                size={"shortest_edge": image_size + image_size // 7},
                crop_size={"height": image_size, "width": image_size},
                do_center_crop=True,
                image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225],
            )
        else:
            processor = pil_image_processor_class("ViTImageProcessor")(
                size={"height": image_size, "width": image_size},
                image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225],
            )
        return cls(
            model,
            processor,
            kind=kind,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            checkpoint=f"tiny-{kind}:{seed}",
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "kind": self.kind}

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

"""Q-Align image quality and aesthetics scorers (IdentityStory's Q-Align-Gen / Q-Align-Aes).

- :class:`OneAlignScorer` runs OneAlign (``q-future/one-align``, mPLUG-Owl2, ~8 B parameters) through
  its Hub remote code and returns its ``score``: ``softmax(level logits) @ [5, 4, 3, 2, 1]``. GPU only.
  The remote code was written for transformers 4.36 (Q-Align#31: ``'MPLUGOwl2Config' object has no
  attribute 'mlp_bias'`` from 4.45 on); loading failures are reported with the fix, never hidden.
- :class:`TinyQualityScorer` is a fixed random map from pooled pixels to the five level logits, scored
  with ``metrics.qalign_score``: it runs the Q-Align path offline in tests, its numbers mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from storycast.errors import ModelLoadError, SettingsError
from storycast.evaluation.metrics import QALIGN_LEVELS, qalign_score
from storycast.vision.checkpoints import load_checkpoint

if TYPE_CHECKING:
    from PIL import Image

QALIGN_TASK_NAMES = ("quality", "aesthetics")
DEFAULT_QALIGN_CHECKPOINT = "q-future/one-align"


def _check_task(task: str) -> None:
    if task not in QALIGN_TASK_NAMES:
        raise SettingsError(f"Q-Align task '{task}' is not known. Fix: use 'quality' or 'aesthetics'.")


class OneAlignScorer:
    """OneAlign's own ``score(images, task_, input_='image')`` on the 1-5 scale, batched."""

    def __init__(self, model: Any, *, batch_size: int = 8, checkpoint: str = DEFAULT_QALIGN_CHECKPOINT):
        self.model = model
        self.batch_size = batch_size
        self.checkpoint = checkpoint

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_QALIGN_CHECKPOINT,
        *,
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        batch_size: int = 8,
        local_files_only: bool = False,
        setting: str = "--qalign-model",
    ) -> OneAlignScorer:
        """Load OneAlign from a Hub id or folder onto a CUDA device.

        Raises:
            SettingsError: ``device`` is not a CUDA device.
            MissingWeightsError: The checkpoint is not on this machine (names ``setting``).
            ModelLoadError: The remote code does not load with the installed transformers.
        """
        if not str(device).startswith("cuda"):
            raise SettingsError(
                f"Q-Align (OneAlign, ~8 B parameters) runs on a CUDA GPU, not on '{device}'. Fix: pass --device cuda "
                "(device='cuda' in Python), or leave it out with --skip qalign."
            )
        from transformers import AutoModelForCausalLM

        def load(src: str, local_only: bool) -> Any:
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    src, trust_remote_code=True, dtype=dtype, local_files_only=local_only
                )
                return model.to(device)
            except OSError:
                raise
            except Exception as err:  # remote code: any exception type, reported with the fix
                import transformers

                raise ModelLoadError(
                    f"OneAlign '{src}' did not load with transformers {transformers.__version__} "
                    f"({type(err).__name__}: {str(err).strip()[:160]}). Its remote code targets transformers 4.36 "
                    "(Q-Align issue #31). Fix: score Q-Align in an environment with transformers 4.36, or leave it out "
                    "with --skip qalign."
                ) from None

        model = load_checkpoint(
            load, source, what="Q-Align (OneAlign)", setting=setting, local_files_only=local_files_only
        )
        return cls(model.eval(), batch_size=batch_size, checkpoint=str(source))

    @property
    def info(self) -> dict[str, Any]:
        return {"extractor": type(self).__name__, "checkpoint": self.checkpoint}

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], task: str) -> torch.Tensor:
        """Scores (n,) float32 on the 1-5 scale for ``task`` 'quality' or 'aesthetics'."""
        _check_task(task)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            chunks.append(torch.as_tensor(self.model.score(batch, task_=task, input_="image")).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0)


class TinyQualityScorer:
    """A fixed random map from 8 x 8 pooled pixels to the five level logits, one map per task."""

    POOL = 8

    def __init__(self, seed: int = 0):
        self.seed = seed
        inputs = 3 * self.POOL * self.POOL
        self.maps = {}
        for offset, task in enumerate(QALIGN_TASK_NAMES):
            generator = torch.Generator().manual_seed(seed * 1000 + offset)
            self.maps[task] = torch.randn(len(QALIGN_LEVELS), inputs, generator=generator) / inputs**0.5

    @property
    def checkpoint(self) -> str:
        return f"tiny-qalign:{self.seed}"

    @property
    def info(self) -> dict[str, Any]:
        return {"extractor": type(self).__name__, "checkpoint": self.checkpoint}

    def level_logits(self, images: Sequence[Image.Image], task: str) -> torch.Tensor:
        """(n, 5) logits of (excellent, good, fair, poor, bad)."""
        _check_task(task)
        from PIL import Image as PILImage

        rows = []
        for image in images:
            small = image.convert("RGB").resize((self.POOL, self.POOL), PILImage.Resampling.BOX)
            pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).float() / 127.5 - 1.0
            rows.append(pixels)
        if not rows:
            return torch.zeros(0, len(QALIGN_LEVELS))
        return 4.0 * torch.stack(rows) @ self.maps[task].T

    def score(self, images: Sequence[Image.Image], task: str) -> torch.Tensor:
        """Scores (n,) on the 1-5 scale: ``metrics.qalign_score`` of the tiny logits."""
        return qalign_score(self.level_logits(images, task))

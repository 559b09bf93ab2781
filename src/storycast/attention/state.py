"""Per-call state of the attention processors: what one denoising call tells the layers it changes.

One object per pipeline call (a frame, or a group of frames drawn jointly), created by the method,
handed to the processors it installs, told the step by the denoising loop
(:func:`storycast.pipelines.denoise.denoise` calls :meth:`AttentionState.begin_step`), and dropped
with the call. Processors keep nothing between calls themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class AttentionState:
    """Shared by every processor of one call.

    Attributes:
        frames: Images per guidance half of the UNet batch.
        guidance: The batch holds [uncond x frames, cond x frames] (diffusers' classifier-free guidance
            layout); without guidance it holds [frames].
        num_steps: Steps of the call, when known (for step gating).
        step: Index of the current step, set by the loop before every UNet evaluation.
        timestep: The current timestep.
        generator: The only source of randomness inside attention (token sampling, gating).
        masks: Per-frame or per-character masks a processor reads (method-defined keys).
        banks: Token banks a processor writes or reads (method-defined keys).
        text_tokens: Text tokens ahead of the image tokens in a joint-attention sequence (FLUX's single-stream
            blocks); the batch sampler sets it from the conditioning. None where unknown (UNet families ignore it).
    """

    frames: int = 1
    guidance: bool = True
    num_steps: int | None = None
    step: int = 0
    timestep: torch.Tensor | None = None
    generator: torch.Generator | None = None
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)
    banks: dict[Any, Any] = field(default_factory=dict)
    text_tokens: int | None = None

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        self.step = index
        self.timestep = timestep

    @property
    def halves(self) -> int:
        """Guidance halves of the batch: 2 (uncond, cond) with guidance, else 1."""
        return 2 if self.guidance else 1

    def row(self, half: int, frame: int) -> int:
        """Batch row of ``frame`` in guidance ``half`` (0 = uncond, 1 = cond)."""
        return half * self.frames + frame

    def check_batch(self, batch_size: int) -> None:
        """The batch must be laid out as the state says; a mismatch means a processor would mix rows."""
        if batch_size != self.halves * self.frames:
            raise ValueError(
                f"attention state expects {self.halves} x {self.frames} rows (guidance halves x frames), the layer "
                f"got {batch_size}; the state was made for another call"
            )

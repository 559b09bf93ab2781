"""Settings of ``story2board``, with the authors' defaults.

Sources: DavidDinkevich/Story2Board at commit 92ef11077c3a596a32241e434b0c527ec54f2546 (``main.py``,
``attention_store.py``, ``story2board_attention_processor.py``, ``story2board_transformer.py``); line numbers are
that commit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from storycast.errors import SettingsError
from storycast.settings import MethodSettings, check_range, setting

FLUX_BLOCKS = 57
"""FLUX.1's transformer blocks, 19 double-stream then 38 single-stream, the count the authors' block indices run
over (``main.py`` line 66: ``num_layers + num_single_layers``)."""
AUTHORS_FIRST_BLOCK, AUTHORS_LAST_BLOCK = 30, 57
"""``--first_mixing_block`` and ``--last_mixing_block`` (``main.py`` lines 116-119)."""


@dataclass(frozen=True)
class Story2BoardSettings(MethodSettings):
    """Settings of Story2Board."""

    mixing_strength: float = setting(
        0.5,
        "RAVM's blend: a mixed token's values become (1 - s) x its own + s x those of the reference-panel token it "
        "attends to most (0 turns mixing off; 0 to 1; main.py line 114, --ravm_mixing_coef 0.5).",
    )
    first_mixing_block: int | None = setting(
        None,
        "First transformer block (0-based over the double- then single-stream blocks) whose joint attention mixes. "
        "None: the authors' 30 (main.py line 116) on FLUX.1's 57 blocks; on a transformer of another depth n (the "
        "tiny test models), the same share, round(30 n / 57).",
    )
    last_mixing_block: int | None = setting(
        None,
        "Last block that mixes (included). None: the authors' 57 (main.py line 118), past FLUX.1's last block "
        "(56), so every block from first_mixing_block on mixes; the last block on a transformer of another depth.",
    )
    first_mixing_step: int = setting(
        1,
        "First denoising step (0-based) that mixes (main.py line 120). At least 1: the mutual-attention average is "
        "empty before the first step has ended (the authors' check, main.py lines 141-142).",
    )
    last_mixing_step: int = setting(
        21,
        "Last denoising step that mixes, included (main.py line 122; absolute, not scaled with the step count).",
    )
    attention_decay: float = setting(
        0.8,
        "Decay of the running average of mutual attention over steps, avg <- d avg + (1 - d) (step mean - avg) / "
        "(step + 1) (attention_store.py lines 19 and 52-54; 0 to below 1).",
    )
    border_tokens: int = setting(
        3,
        "Rows and columns of tokens at the frame panel's edges never mixed (the authors' margin 3: FLUX draws "
        "decorative borders there; story2board_attention_processor.py lines 181-185). 0: no border.",
    )
    min_region_tokens: int = setting(
        9,
        "Connected regions (4-connected) of mutually attending frame-panel tokens smaller than this are not mixed "
        "(story2board_attention_processor.py line 167, min_size 9: 3 x 3 tokens).",
    )
    anchoring: bool = setting(
        True,
        "Latent panel anchoring: after every transformer block, the reference panel's tokens of a frame's canvas "
        "are replaced by those of the storyboard's reference row (story2board_transformer.py lines 181-183 and "
        "218-221). false: each canvas draws its own reference panel.",
    )
    anchor_device: Literal["model", "cpu"] = setting(
        "model",
        "Where the reference row's panel tokens (every block at every step) are kept for the frames that read them: "
        "the model's device, or CPU memory to spare accelerator memory at some speed.",
    )

    def validate(self) -> None:
        check_range("mixing_strength", self.mixing_strength, 0, 1)
        check_range("first_mixing_block", self.first_mixing_block, 0)
        check_range("last_mixing_block", self.last_mixing_block, 0)
        check_range("first_mixing_step", self.first_mixing_step, 1)
        check_range("last_mixing_step", self.last_mixing_step, 0)
        check_range("attention_decay", self.attention_decay, 0, 0.999)
        check_range("border_tokens", self.border_tokens, 0)
        check_range("min_region_tokens", self.min_region_tokens, 1)
        if self.last_mixing_step < self.first_mixing_step:
            raise SettingsError(
                f"last_mixing_step ({self.last_mixing_step}) is before first_mixing_step ({self.first_mixing_step}). "
                f"Fix: --set last_mixing_step={self.first_mixing_step} or later (or mixing_strength=0 to mix nowhere)."
            )
        first, last = self.first_mixing_block, self.last_mixing_block
        if first is not None and last is not None and last < first:
            raise SettingsError(
                f"last_mixing_block ({last}) is before first_mixing_block ({first}). Fix: --set "
                f"last_mixing_block={first} or later."
            )

    def mixing_blocks(self, blocks: int) -> range:
        """The blocks that mix on a transformer of ``blocks`` blocks (see the two fields)."""
        first = self.first_mixing_block
        if first is None:
            first = round(AUTHORS_FIRST_BLOCK * blocks / FLUX_BLOCKS)
        last = self.last_mixing_block if self.last_mixing_block is not None else max(blocks, AUTHORS_LAST_BLOCK)
        if first >= blocks:
            raise SettingsError(
                f"first_mixing_block is {first}, but the transformer has {blocks} blocks (0 to {blocks - 1}). Fix: "
                f"--set first_mixing_block={blocks - 1} or less."
            )
        return range(first, min(last, blocks - 1) + 1)

    def mixing_steps(self) -> range:
        return range(self.first_mixing_step, self.last_mixing_step + 1)

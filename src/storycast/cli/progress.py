"""Progress bars for the command line, fed by the library's progress events."""

from __future__ import annotations

import sys
from typing import Any

from storycast.methods.base import ProgressEvent

STAGE_LABELS = {"frames": "frames", "denoise": "denoising", "discovery": "identity discovery"}


class ProgressBars:
    """One tqdm bar per stage; a stage's bar restarts when a new round of it begins."""

    def __init__(self, enabled: bool | None = None):
        """``enabled=None`` shows bars only when stderr is a terminal."""
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: dict[str, Any] = {}
        self.order: list[str] = []

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(event.stage)
        if bar is None or event.completed == 0 or bar.total != event.total:
            if bar is not None:
                bar.close()
            if event.stage not in self.order:
                self.order.append(event.stage)
            bar = tqdm(
                total=event.total,
                desc=event.description or STAGE_LABELS.get(event.stage, event.stage),
                position=self.order.index(event.stage),
                leave=event.stage == "frames",
                dynamic_ncols=True,
            )
            self.bars[event.stage] = bar
        bar.n = event.completed
        bar.refresh()
        if event.completed >= event.total and event.stage != "frames":
            bar.close()
            del self.bars[event.stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

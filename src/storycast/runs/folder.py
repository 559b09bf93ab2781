"""A run folder's manifest as the planner reads it: which frames it holds, drawn from which inputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
STORY_NAME = "story.yaml"
STORYBOARD_NAME = "storyboard.png"
FRAMES_DIR = "frames"
MANIFEST_FORMAT = 1


def frame_file(index: int) -> str:
    return f"{FRAMES_DIR}/frame_{index:03d}.png"


class RunFolder:
    """The manifest of one run folder, read once."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.manifest_path = self.out_dir / MANIFEST_NAME
        self.previous: dict[str, Any] | None = None
        if self.manifest_path.is_file():
            try:
                data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("%s is unreadable; frames will be redrawn", self.manifest_path)
            else:
                self.previous = data if isinstance(data, dict) else None

    @property
    def status(self) -> str | None:
        return None if self.previous is None else self.previous.get("status")

    def conflict(self, run_key: str, summary: Mapping[str, Any]) -> list[str] | None:
        """The run-wide settings that differ from the folder's run, or None when it holds the same run (or none)."""
        if self.previous is None or self.previous.get("run_key") == run_key:
            return None
        old = self.previous.get("run_summary") or {}
        if not isinstance(old, Mapping):
            return ["settings"]
        return sorted(k for k in set(old) | set(summary) if old.get(k) != summary.get(k)) or ["settings"]

    def finished_record(self, index: int, key: str) -> dict[str, Any] | None:
        """The previous record of frame ``index`` if it was drawn from the same inputs and its file exists."""
        if self.previous is None:
            return None
        frames = self.previous.get("frames") or []
        record = frames[index] if isinstance(frames, list) and index < len(frames) else None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        if not (self.out_dir / str(record.get("file", ""))).is_file():
            return None
        return record

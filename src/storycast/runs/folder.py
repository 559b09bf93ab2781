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
WORKERS_DIR = ".workers"
"""Where the processes of one story split over processes keep the records of the frames each drew, until the
main process writes them into the manifest (a rerun after a crash reads them too)."""
MANIFEST_FORMAT = 1


def frame_file(index: int) -> str:
    return f"{FRAMES_DIR}/frame_{index:03d}.png"


class RunFolder:
    """The manifest of one run folder, read once."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.manifest_path = self.out_dir / MANIFEST_NAME
        self.previous: dict[str, Any] | None = None
        self.foreign_manifest: str | None = None
        """Why a ``manifest.json`` there is not a storycast run's (unreadable, not a run manifest), else None."""
        if self.manifest_path.exists():
            try:
                data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.foreign_manifest = "cannot be read as JSON"
            else:
                if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and "run_key" in data:
                    self.previous = data
                else:
                    self.foreign_manifest = "is not a storycast run manifest"
        self.worker_records = self._read_worker_records()

    def _read_worker_records(self) -> dict[int, list[dict[str, Any]]]:
        """Frame index -> the records the processes of a split run wrote (unreadable files are skipped: their
        frames are drawn again)."""
        found: dict[int, list[dict[str, Any]]] = {}
        folder = self.out_dir / WORKERS_DIR
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                records = json.loads(path.read_text(encoding="utf-8")).get("frames", [])
            except (OSError, ValueError, AttributeError):
                logger.warning("%s cannot be read; the frames it records will be drawn again", path)
                continue
            for record in records if isinstance(records, list) else ():
                if isinstance(record, dict) and isinstance(record.get("index"), int):
                    found.setdefault(record["index"], []).append(record)
        return found

    def unsafe(self, story_source: Path | None, overwrite: bool) -> str | None:
        """Why drawing into this folder could destroy something the run did not write (with the fix), or None.

        A run writes ``manifest.json``, ``story.yaml``, ``storyboard.png`` and ``frames/``: a folder holding such
        files of its own (the user's story file, another tool's manifest) is refused, as is an ``--out`` that is
        a file or lies below one.
        """
        where = self.out_dir
        if where.exists() and not where.is_dir():
            return f"'{where}' is a file, not a folder. Fix: choose another --out folder."
        for parent in where.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"'{where}' lies below '{parent}', which is a file. Fix: choose another --out folder."
                break
        copy = where / STORY_NAME
        if story_source is not None and copy.exists() and copy.resolve() == Path(story_source).resolve():
            return (
                f"--out '{where}' would replace your story file {story_source} with the run's copy. Fix: choose "
                f"another --out folder, e.g. {where / 'run'}."
            )
        if self.foreign_manifest and not overwrite:
            return (
                f"'{self.manifest_path}' {self.foreign_manifest}: the folder holds something else. Fix: choose another "
                f"--out folder, or pass --overwrite (overwrite=True in Python) to replace it."
            )
        if self.previous is None and copy.exists() and not overwrite:
            return (
                f"'{where}' holds a {STORY_NAME} that no storycast run wrote. Fix: choose another --out folder, or pass "
                f"--overwrite (overwrite=True in Python) to replace it."
            )
        return None

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
        """The previous record of frame ``index`` if it was drawn from the same inputs and its file exists: the
        manifest's, or one a process of a split run wrote."""
        frames = (self.previous or {}).get("frames") or []
        candidates = [frames[index] if isinstance(frames, list) and index < len(frames) else None]
        candidates += self.worker_records.get(index, [])
        for record in candidates:
            if (
                isinstance(record, dict)
                and record.get("key") == key
                and (self.out_dir / str(record.get("file", ""))).is_file()
            ):
                return record
        return None

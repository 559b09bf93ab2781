"""Reading run folders for evaluation: one run (``manifest.json``) or a tree of them.

A tree is what ``storycast benchmark`` writes (``DIR/<split>/<story>/``) or any folder holding run
folders at any depth. A run's *split* is the path of its parent folder relative to the tree's root
(``single``, ``multi-2``...), '' for a run given on its own or sitting directly in the root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from storycast.errors import RunFolderError
from storycast.runs.folder import MANIFEST_NAME, STORY_NAME
from storycast.story.model import Story
from storycast.utils.io import sha256_file

SCORES_NAME = "scores.json"
CONTACT_SHEET_NAME = "scores.png"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_CHART = "results.png"
BENCHMARK_RECORD = "benchmark.json"
"""Written by ``storycast benchmark`` at the root of its folder: what was asked (suites, method, model...)."""


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class EvalRun:
    """A finished run folder, ready to score.

    Attributes:
        path: The run folder.
        manifest: Its ``manifest.json``.
        story: The story as drawn (its ``story.yaml``).
        frame_files: The frame images, in story order.
        split: Where the run sits in the evaluated tree ('' for a lone run).
    """

    path: Path
    manifest: dict[str, Any]
    story: Story
    frame_files: tuple[Path, ...]
    split: str = ""

    @property
    def method(self) -> str:
        return str((self.manifest.get("method") or {}).get("name", "?"))

    @property
    def model(self) -> str:
        return str((self.manifest.get("model") or {}).get("source", "?"))

    @property
    def title(self) -> str:
        return str((self.manifest.get("story") or {}).get("title") or self.story.title)

    @cached_property
    def frame_hashes(self) -> list[str]:
        """sha256 of each frame file (the feature cache key)."""
        return [sha256_file(p) for p in self.frame_files]

    def identity_keys(self, character_id: str) -> list[str]:
        """Identity library keys recorded for a character in the frames' metadata (identitystory)."""
        keys: list[str] = []
        for record in self.manifest.get("frames") or []:
            metadata = (record or {}).get("metadata") or {}
            key = (metadata.get("characters") or {}).get(character_id) if isinstance(metadata, dict) else None
            if isinstance(key, str) and key not in keys:
                keys.append(key)
        return keys


def run_status(path: str | Path) -> str | None:
    """Why the folder is not a finished run ('no manifest', 'status interrupted', 'frame 3 missing'), or None."""
    path = Path(path)
    manifest = read_json(path / MANIFEST_NAME)
    if manifest is None:
        return "no readable manifest.json"
    if manifest.get("status") != "complete":
        return f"status '{manifest.get('status')}'"
    frames = manifest.get("frames") or []
    if not isinstance(frames, list):
        return "its manifest's 'frames' is not a list"
    inside = path.resolve()
    for index, record in enumerate(frames):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            return f"frame {index} has no record"
        file = (path / record["file"]).resolve()
        if not file.is_relative_to(inside):
            return f"frame {index} points outside the run ({record['file']})"
        if not file.is_file():
            return f"frame {index} is missing"
    if not frames:
        return "no frames"
    if not (path / STORY_NAME).is_file():
        return f"no {STORY_NAME}"
    return None


def load_run(path: str | Path, split: str = "") -> EvalRun:
    """Read a finished run folder.

    Raises:
        RunFolderError: The folder is not a run, or its run is not finished.
        StoryError: Its ``story.yaml`` does not parse.
    """
    from storycast.story.parse import load_story

    path = Path(path)
    problem = run_status(path)
    if problem is not None:
        raise RunFolderError(
            f"'{path}' is not a finished run ({problem}). Fix: finish it with `storycast generate` (the same command "
            "resumes), or point at a finished run folder."
        )
    manifest = read_json(path / MANIFEST_NAME) or {}
    story = load_story(path / STORY_NAME)
    frames = tuple(path / record["file"] for record in manifest["frames"])
    if len(frames) != len(story):
        raise RunFolderError(
            f"'{path}': the manifest lists {len(frames)} frames but {STORY_NAME} has {len(story)}. Fix: redraw the run."
        )
    return EvalRun(path, manifest, story, frames, split)


def find_runs(root: str | Path) -> list[tuple[Path, str]]:
    """Run folders under ``root`` with their split, sorted; ``root`` itself when it is a run.

    Hidden folders and the insides of run folders are not searched.

    Raises:
        RunFolderError: ``root`` does not exist or holds no run folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise RunFolderError(f"'{root}' is not a folder. Fix: pass a run folder or a folder of run folders.")
    if (root / MANIFEST_NAME).is_file():
        return [(root, "")]
    found: list[tuple[Path, str]] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(current)
        if MANIFEST_NAME in files and here != root:
            dirs[:] = []
            parent = here.parent.relative_to(root).as_posix()
            found.append((here, "" if parent == "." else parent))
    if not found:
        raise RunFolderError(
            f"no run folder (a folder with {MANIFEST_NAME}) under '{root}'. Fix: pass the --out folder of "
            "`storycast generate` or `storycast benchmark`."
        )
    return sorted(found, key=lambda item: (item[1], item[0].name))

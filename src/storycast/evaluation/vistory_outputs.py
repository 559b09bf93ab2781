"""A benchmark's images also laid out as ViStoryBench's scorer reads them, so that its ``bench_run.py`` scores them
unchanged.

The layout (``vistorybench/dataset_loader/read_outputs.py`` and the README's "Output Structure", commit 514cc31)::

    <outputs>/<method>/<mode>/<lang>/<timestamp>/<story>/shots/shot_<NN>.png

- ``<mode>``: the benchmark names a method's variants freely (``base`` by default); its Story-Adapter script names
  the two input modes ``img_ref`` (reference images given) and ``text_only`` (``inference_custom/storyadapter/
  run_custom.py``), which we use: :data:`IMG_REF` when the method draws characters from the story's reference
  images, :data:`TEXT_ONLY` otherwise;
- ``<timestamp>``: ``YYYYMMDD_HHMMSS`` (their ``TIMESTAMP_PATTERN``; their scripts' ``strftime("%Y%m%d_%H%M%S")``),
  one per benchmark folder, made once and kept in ``<out>/vistory_outputs.json`` so a rerun, a resumed run and
  every shard or process write into the same one;
- ``<story>``: the story's folder name (``01``), which their reader sorts as a number;
- ``shot_<NN>.png``: the reader keys a shot by the number after the last ``_`` and looks it up by the shot's
  ``index`` in ``story.json`` (1 for the first; their ``normalize_shot_filenames.py`` moves 0-based names to 1), two
  digits at least (``shot_01.png``).

Files are copied from the run folders atomically; a file already there with the same bytes is left alone, one this
benchmark wrote before (listed in the story folder's ``.storycast-shots.json``) is replaced by a redrawn frame, and
any other file is never overwritten: the run stops, naming it.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

from storycast.errors import RunFolderError
from storycast.evaluation.runfolders import read_json
from storycast.utils.io import atomic_write_bytes, atomic_write_json, sha256_file

IMG_REF = "img_ref"
TEXT_ONLY = "text_only"
RECORD = "vistory_outputs.json"
"""In the benchmark folder: the timestamp (and where the tree is), made once."""
SHOTS_DIR = "shots"
LEDGER = ".storycast-shots.json"
"""In each story folder of the tree: shot file -> sha256 of what this benchmark wrote there."""
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def mode_name(reads_references: bool) -> str:
    return IMG_REF if reads_references else TEXT_ONLY


def shot_name(number: int) -> str:
    return f"shot_{number:02d}.png"


def outputs_timestamp(out_dir: Path, facts: dict[str, Any]) -> str:
    """The benchmark folder's outputs timestamp: the one ``<out_dir>/vistory_outputs.json`` holds, else a new one
    written there (with ``facts``) by whichever process comes first (a hard link, which fails where the file
    exists, so two processes starting together agree on one)."""
    path = out_dir / RECORD
    found = read_json(path)
    if found and isinstance(found.get("timestamp"), str):
        return found["timestamp"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime(TIMESTAMP_FORMAT)
    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{RECORD}.", suffix=".part")
    os.close(handle)
    atomic_write_json(temporary, {"timestamp": stamp, **facts})
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    found = read_json(path)
    if not found or not isinstance(found.get("timestamp"), str):
        raise RunFolderError(f"'{path}' is not a storycast outputs record. Fix: move it away and run again.")
    return found["timestamp"]


def story_folder(root: Path, method: str, mode: str, language: str, timestamp: str, story: str) -> Path:
    return root / method / mode / language / timestamp / story


def write_shots(run_dir: Path, frame_files: list[str], numbers: list[int], target: Path) -> list[Path]:
    """Copy a run's frames (``frame_files``, relative to ``run_dir``, in story order) to ``target/shots/`` as
    ``shot_<number>.png``; returns the files written now (none when every one is there already).

    Raises:
        RunFolderError: A file there that this benchmark did not write differs from the frame (nothing replaced).
    """
    if len(frame_files) != len(numbers):
        raise ValueError(f"{len(frame_files)} frames for {len(numbers)} shot numbers in {run_dir}")
    ledger_path = target / LEDGER
    ledger = read_json(ledger_path) or {}
    known = dict(ledger)
    shots = target / SHOTS_DIR
    written = []
    for frame, number in zip(frame_files, numbers, strict=True):
        name = shot_name(number)
        source, destination = run_dir / frame, shots / name
        digest = sha256_file(source)
        if destination.exists():
            present = sha256_file(destination)
            if present == digest:
                ledger[name] = digest
                continue
            if ledger.get(name) != present:
                raise RunFolderError(
                    f"'{destination}' is not an image this benchmark wrote, and the run's frame {frame} differs from "
                    f"it; it was left as it is. Fix: move it away, or write the tree elsewhere (--outputs DIR)."
                )
        atomic_write_bytes(destination, source.read_bytes())
        ledger[name] = digest
        written.append(destination)
    if ledger != known:  # a rerun that finds every shot in place writes nothing
        atomic_write_json(ledger_path, ledger)
    return written

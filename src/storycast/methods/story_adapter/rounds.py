"""Every round's frames in the run folder, and resuming at round granularity.

Layout under a run folder::

    RUN/rounds/round_00/frame_000.png   round 0: the text alone
    RUN/rounds/round_01/frame_000.png   round 1: conditioned on all frames of round 0
    RUN/rounds/round_01/round.json      written last: the round's key, scale, frames and seeds

A round's key hashes what its frames are drawn from: the story's frame inputs, the model, the generation and
method settings (the number of rounds and the scale end points aside), the round's own index and scale, and the
key of the round before (whose frames it reads). A round is read back when its ``round.json`` holds that key and
every frame file is there, so a run stopped in round k draws again from round k; files are written atomically and
``round.json`` after the frames, so a round is either complete on disk or not there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storycast.utils.io import atomic_save_image, atomic_write_json, sha256_json

ROUNDS_DIR = "rounds"
ROUND_RECORD = "round.json"


def round_keys(base: Mapping[str, Any], scales: Sequence[float]) -> list[str]:
    """The key of rounds 0..len(scales): round 0 from ``base`` alone, round r from ``base``, r, its scale and the
    key of round r - 1."""
    keys = [sha256_json({"base": dict(base), "round": 0})]
    for number, scale in enumerate(scales, start=1):
        keys.append(sha256_json({"base": dict(base), "round": number, "scale": scale, "previous": keys[-1]}))
    return keys


@dataclass(frozen=True)
class RoundStore:
    """The rounds of one run folder (``run_dir`` None: an in-memory draw keeps nothing)."""

    run_dir: Path | None

    def folder(self, number: int) -> str:
        return f"{ROUNDS_DIR}/round_{number:02d}"

    def file(self, number: int, index: int) -> str:
        """A frame's file of round ``number``, relative to the run folder."""
        return f"{self.folder(number)}/frame_{index:03d}.png"

    def load(self, number: int, key: str, frames: Sequence[int]) -> list[Any] | None:
        """The frames of round ``number`` when the folder holds that round drawn with ``key``, else None."""
        if self.run_dir is None:
            return None
        record_path = self.run_dir / self.folder(number) / ROUND_RECORD
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or record.get("frames") != list(frames):
            return None
        paths = [self.run_dir / self.file(number, i) for i in frames]
        if not all(path.is_file() for path in paths):
            return None
        from PIL import Image

        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        return images

    def save(
        self, number: int, key: str, frames: Sequence[int], images: Sequence[Any], record: Mapping[str, Any]
    ) -> None:
        """Write the frames of round ``number``, then its ``round.json`` (``key``, ``frames`` and ``record``)."""
        if self.run_dir is None:
            return
        for index, image in zip(frames, images, strict=True):
            atomic_save_image(self.run_dir / self.file(number, index), image)
        atomic_write_json(
            self.run_dir / self.folder(number) / ROUND_RECORD,
            {"round": number, "key": key, "frames": list(frames), **record},
        )

    def last_kept(self, keys: Sequence[str], frames: Sequence[int]) -> tuple[int, list[Any]] | None:
        """The latest round on disk whose key matches, with its frames (earlier rounds are then not needed)."""
        for number in range(len(keys) - 1, -1, -1):
            images = self.load(number, keys[number], frames)
            if images is not None:
                return number, images
        return None

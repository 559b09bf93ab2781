"""Run folders made by hand, with faces the tiny face detector finds, for evaluation tests.

A fake run has what ``storycast generate`` writes and evaluation reads (``manifest.json``, ``story.yaml``,
``frames/``), so the scoring path is tested on images whose scores are known, without drawing them.
Faces follow ``tiny_faces.paint_tiny_face``: on a 320 x 320 frame a face is a 16 px square at a
multiple of 16 (one stride-32 cell once the detector has scaled the frame to 640).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from storycast.vision.tiny_faces import paint_tiny_face

FRAME_SIZE = 320
FACE = 16
BACKGROUND = 60


def pattern(seed: int) -> np.ndarray:
    """A face texture: 4 x 4 values in [0, 1]."""
    return np.random.default_rng(seed).random((4, 4))


def frame(faces: Sequence[tuple[int, int, int]] = (), *, shade: int = BACKGROUND) -> Image.Image:
    """A frame with faces at (column, row) of the 16 px grid, each textured by ``pattern(seed)``."""
    canvas = np.full((FRAME_SIZE, FRAME_SIZE, 3), shade, dtype=np.uint8)
    canvas[:, :, 2] = BACKGROUND
    for column, row, seed in faces:
        paint_tiny_face(canvas, column * FACE, row * FACE, FACE, pattern(seed))
    return Image.fromarray(canvas)


def story_data(frames: int, characters: Sequence[str] = ("mara",), **frame_extra: Any) -> dict[str, Any]:
    """A story in our format: every character in every frame, each frame with a context phrase."""
    words = {"mara": "woman", "leo": "man", "ana": "girl"}
    return {
        "title": "fake story",
        "style": "A photo of",
        "characters": [
            {
                "id": c,
                "description": f"a young {words.get(c, 'person')} called {c}",
                "class_word": words.get(c, "person"),
            }
            for c in characters
        ],
        "frames": [
            {
                "text": " and ".join("{" + c + "}" for c in characters) + f" in place number {i}",
                "context": f"in place number {i}",
                **frame_extra,
            }
            for i in range(frames)
        ],
    }


def write_run(
    folder: Path,
    images: Sequence[Image.Image],
    story: dict[str, Any] | None = None,
    *,
    method: str = "vanilla",
    model: str = "tiny",
    metadata: Sequence[dict[str, Any]] | None = None,
    status: str = "complete",
) -> Path:
    """Write a run folder holding ``images`` as the frames of ``story``."""
    folder = Path(folder)
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    story = story or story_data(len(images))
    (folder / "story.yaml").write_text(yaml.safe_dump(story, sort_keys=False), encoding="utf-8")
    records = []
    for index, image in enumerate(images):
        name = f"frames/frame_{index:03d}.png"
        image.save(folder / name)
        records.append(
            {"index": index, "file": name, "seed": index, "metadata": (metadata or [{}] * len(images))[index]}
        )
    manifest = {
        "format": 1,
        "status": status,
        "story": {"title": story["title"], "source": None, "source_sha256": None, "frames": len(images)},
        "method": {"name": method, "settings": {}},
        "model": {"source": model},
        "generation": {},
        "frames": records,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def write_suite(folder: Path, stories: int = 2, frames: int = 2) -> Path:
    """A folder of short ConsiStory-Human stories."""
    folder.mkdir(parents=True)
    characters = ["young woman with short red hair", "old man with a grey beard", "young boy with curly hair"]
    tokens = ["woman", "man", "boy"]
    for s in range(stories):
        settings = [f"standing in place number {i}" for i in range(frames)]
        document = {
            "prompts": [f"A close-up photo of a {characters[s]}, {setting}" for setting in settings],
            "token": tokens[s],
            "character": characters[s],
            "settings_types": ["background"] * frames,
            "settings": settings,
            "style": "A close-up photo of",
        }
        (folder / f"story_{s:03d}.json").write_text(json.dumps(document), encoding="utf-8")
    return folder

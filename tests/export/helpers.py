"""Helpers of the export tests: a tiny run drawn by `storycast generate`, its frames painted in solid colours so
that each can be found on the exported pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from storycast.cli.main import main

STORY = {
    "title": "The Map in the Attic",
    "characters": [{"id": "mia", "name": "Mia", "description": "a girl with a green scarf", "class_word": "girl"}],
    "frames": [
        {"text": "{mia} climbing into a dusty attic", "caption": 'Mia climbs into the attic. "Is anyone up here?"'},
        {"text": "{mia} finding an old map", "caption": 'Mia: "A map!" Grandpa: “Careful, it is older than me.”'},
        {"text": "{mia} reading the map by a candle"},
        {"text": "a dark forest on the map", "caption": "The map shows a forest that is not there any more."},
        {"text": "{mia} packing a bag", "caption": '"Tomorrow," she whispers.'},
        {"text": "{mia} walking out at dawn"},
        {"text": "{mia} at the edge of the forest", "caption": "The end & a new beginning <3"},
    ],
    "settings": {"seed": 1},
}
FRAMES = len(STORY["frames"])
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]
"""One solid colour per frame, far from each other, from the paper, the ink and the lettering boxes."""
TOLERANCE = 24
"""How far (per channel) a page pixel may be from a frame's colour: JPEG in PDFs, resampling at panel edges."""


def generate_run(folder: Path) -> Path:
    """Draw :data:`STORY` with the tiny random model (2 steps, CPU) into ``folder/run``, as a user would."""
    folder.mkdir(parents=True, exist_ok=True)
    story = folder / "story.yaml"
    story.write_text(yaml.safe_dump(STORY, sort_keys=False, allow_unicode=True), encoding="utf-8")
    run = folder / "run"
    assert (
        main(["generate", str(story), "--preset", "tiny", "--steps", "2", "--device", "cpu", "--out", str(run)]) == 0
    )
    return run


def paint_frames(run: Path) -> None:
    """Replace each frame's pixels by its :data:`COLOURS` entry (same size and file, so the run stays a run)."""
    for index, path in enumerate(sorted((run / "frames").glob("frame_*.png"))):
        with Image.open(path) as frame:
            size = frame.size
        Image.new("RGB", size, COLOURS[index]).save(path)


def frames_on(page: Image.Image, min_share: float = 0.003) -> dict[int, tuple[int, int, int, int]]:
    """The frames whose colour covers at least ``min_share`` of ``page``, each with the bounding box
    (left, top, right, bottom) of its pixels."""
    pixels = np.asarray(page.convert("RGB")).astype(np.int16)
    found = {}
    for index, colour in enumerate(COLOURS[:FRAMES]):
        mask = (np.abs(pixels - np.array(colour)) <= TOLERANCE).all(axis=-1)
        if mask.sum() >= min_share * mask.size:
            ys, xs = np.nonzero(mask)
            found[index] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return found

"""Helpers of the method tests: a two-character story, planning it for a method, pixels to compare."""

from __future__ import annotations

import copy

import numpy as np

from storycast.models.spec import ModelSpec
from storycast.runs.plan import plan_run
from storycast.story.parse import parse_story

GEN = {"steps": 3, "width": 64, "height": 64}
TWO_FRIENDS_FRAMES = [
    {"text": "{mara} reading on a bench"},
    {"text": "{tom} fishing at a lake"},
    {"text": "{mara} and {tom} having tea"},
    {"text": "an empty street at night"},
    {"text": "{mara} riding a bike"},
]


def two_friends(frames=None, **extra):
    """mara (a woman) and tom (a man); by default five frames: each alone, together, nobody, mara again."""
    return {
        "title": "Two friends",
        "style": "A watercolor illustration of",
        "characters": [
            {"id": "mara", "description": "a young woman with short red hair", "class_word": "woman"},
            {"id": "tom", "description": "an old man with a grey beard", "class_word": "man"},
        ],
        "frames": copy.deepcopy(frames or TWO_FRIENDS_FRAMES),  # a test may edit its copy
        **extra,
    }


def plan_for(method, data, *, preset, model=None, settings=None, generation=GEN, out_dir=None):
    """``plan_run`` of a story document for ``method`` on loaded ``model`` or the ``preset``."""
    return plan_run(
        parse_story(data),
        method,
        model=model or ModelSpec(source=preset, device="cpu"),
        method_settings=settings,
        generation=generation,
        out_dir=out_dir,
    )


def face_photo(path, seed):
    """A photo whose face the tiny face pack's detector finds."""
    from storycast.vision.tiny_faces import write_tiny_face_photo

    return write_tiny_face_photo(path, seed)


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def tiny_flux_benchmark(method, folder):
    """``storycast benchmark`` of a one-story, two-frame ConsiStory-Human suite with ``method`` on tiny FLUX (2 steps,
    64 px, the small discovery budget of the tests: 12 candidates, 1 preview): (benchmark.json, the story's
    manifest)."""
    import json

    from storycast.cli.main import main
    from tests.evaluation.fakes import write_suite

    suite = write_suite(folder / "suite", stories=1, frames=2)
    out = folder / "bench"
    assert main(["benchmark", str(suite), "--method", method, "--preset", "tiny-flux", "--steps", "2",
                 "--width", "64", "--height", "64", "--out", str(out), "--no-progress", "--cache-dir",
                 str(folder / "cache"), "--set", "discovery_candidates=12", "--set", "preview_images=1"]) == 0  # fmt: skip
    assert (out / "results.json").is_file()
    recorded = json.loads((out / "benchmark.json").read_text())
    return recorded, json.loads((out / "suite" / "story_000" / "manifest.json").read_text())

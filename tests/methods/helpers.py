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
    """A photo whose face the tiny face pack's detector finds (one textured 32 px cell at its 640 px input), with a
    gradient elsewhere for the image encoders to see."""
    from PIL import Image

    from storycast.vision.tiny_faces import paint_tiny_face

    canvas = np.full((640, 640, 3), 60, dtype=np.uint8)
    canvas[:, :, 0] = np.linspace(0, 120, 640, dtype=np.uint8)
    paint_tiny_face(canvas, 96 + 32 * seed, 64, 32, np.random.default_rng(seed).random((4, 4)))
    Image.fromarray(canvas).save(path)
    return str(path)


def pixels(image):
    return np.asarray(image, dtype=np.int16)

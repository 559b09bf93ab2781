"""Test helpers shared across test modules (paths, small story documents)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
BENCH = REPO_ROOT.parent / "shared" / "bench" / "ConsiStory-Human"


def small_story_data(frames: int = 4) -> dict:
    """A valid story document with one character and ``frames`` frames."""
    return {
        "title": "Test story",
        "style": "A photo of",
        "characters": [{"id": "mara", "description": "a young woman with red hair", "class_word": "woman"}],
        "frames": [{"text": f"{{mara}} in scene number {i}"} for i in range(frames)],
        "settings": {"steps": 2, "seed": 3},
    }

"""What a frame's image depends on in the story: its prompt, seed, characters and the files it names (by their
hashes). The run planner hashes it into each group's key; methods that key their own work (Story-Adapter's rounds)
read the same record."""

from __future__ import annotations

from typing import Any

from storycast.story.model import Story
from storycast.utils.io import sha256_file


def character_record(story: Story, character_id: str) -> dict[str, Any]:
    """Everything about a character that the images it appears in depend on (its photos by their hashes)."""
    character = story.character(character_id)
    return {
        "id": character.id,
        "description": character.description,
        "class_word": character.class_word,
        "references": [sha256_file(p) for p in character.references],
    }


def frame_inputs(story: Story, index: int) -> dict[str, Any]:
    """Everything about frame ``index`` that its image depends on, besides run-wide settings."""
    frame = story.frames[index]
    return {
        "prompt": story.prompt(index),
        # Methods may build their own prompts from the context (IdentityStory's multi-character prompt).
        "context": frame.context,
        "negative_prompt": story.negative_prompt(index),
        "seed": story.frame_seed(index),
        "characters": [character_record(story, cid) for cid in frame.characters],
        "masks": {cid: sha256_file(path) for cid, path in frame.masks.items()},
        "control_image": sha256_file(frame.control_image) if frame.control_image else None,
    }

from __future__ import annotations

import json

import pytest

from storycast.errors import StoryError
from storycast.story.benchmark import from_consistory_human, is_consistory_human, to_consistory_human
from storycast.story.parse import load_story
from tests.helpers import BENCH

BENCH_FILES = sorted(BENCH.glob("*/*.json"))


def test_benchmark_is_present():
    assert len(list(BENCH.glob("single/*.json"))) == 70
    assert len(list(BENCH.glob("multi-2/*.json"))) == 10


@pytest.mark.parametrize("path", BENCH_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_benchmark_file_loads_and_round_trips(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    story = load_story(path)
    assert story.source_format == "consistory-human"
    assert [story.prompt(i) for i in range(len(story))] == data["prompts"]
    assert [f.context for f in story.frames] == data["settings"]
    tokens = data["token"] if isinstance(data["token"], list) else [data["token"]]
    assert [c.class_word for c in story.characters] == tokens
    assert all(f.characters == tuple(c.id for c in story.characters) for f in story.frames)
    assert to_consistory_human(story) == data


def test_multi_character_ids_are_unique():
    data = {"prompts": ["a man and a man"], "character": ["a tall man", "a short man"], "token": ["man", "man"]}
    story = from_consistory_human(data)
    assert [c.id for c in story.characters] == ["man", "man_2"]


def test_detection_is_by_content():
    assert is_consistory_human({"prompts": [], "character": "x", "token": "x"})
    assert not is_consistory_human({"frames": [], "characters": []})


def test_bad_benchmark_file_names_the_field(tmp_path):
    path = tmp_path / "story_x.json"
    path.write_text(json.dumps({"prompts": ["a photo of a dog"], "character": "a young woman", "token": "woman"}))
    with pytest.raises(StoryError) as info:
        load_story(path)
    assert info.value.problems[0].field == "prompts[0]"

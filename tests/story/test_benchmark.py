from __future__ import annotations

import json
import re

import pytest

from storycast.errors import StoryError
from storycast.story.benchmark import (
    consistory_human_losses,
    from_consistory_human,
    is_consistory_human,
    to_consistory_human,
)
from storycast.story.model import Character, Frame, Story
from storycast.story.parse import load_story, parse_story
from tests.helpers import BENCH, EXAMPLES, needs_shared_bench

BENCH_FILES = sorted(BENCH.glob("*/*.json"))


@needs_shared_bench
def test_benchmark_is_present():
    assert len(list(BENCH.glob("single/*.json"))) == 70
    assert len(list(BENCH.glob("multi-2/*.json"))) == 10


@needs_shared_bench
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
    assert consistory_human_losses(story) == []


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


def test_a_benchmark_document_written_back_is_the_same_and_loses_nothing(tmp_path):
    data = {
        "prompts": ["A photo of a tall man with a grey beard, a small girl with red braids, baking bread"],
        "token": ["man", "girl"],
        "character": ["a tall man with a grey beard", "a small girl with red braids"],
        "settings_types": ["action"],
        "settings": ["baking bread"],
        "style": "A photo of",
    }
    story = from_consistory_human(data, source=tmp_path / "story_000.json")
    assert to_consistory_human(story) == data
    assert consistory_human_losses(story) == []


def _read_back(document, tmp_path):
    """Write a benchmark document and load it as `storycast validate` does."""
    path = tmp_path / "story_out.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_story(path)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_written_so_it_loads_or_refused_by_frame(example, tmp_path):
    story = load_story(example)
    try:
        _read_back(to_consistory_human(story), tmp_path)
        refused = set()
    except StoryError as err:
        assert err.source == str(example)
        assert all(re.fullmatch(r"frames\[\d+\]\.characters", p.field) for p in err.problems)
        assert all("--drop-frames" in p.fix for p in err.problems)
        refused = {p.field for p in err.problems}
    back = _read_back(to_consistory_human(story, drop_frames=True), tmp_path)
    kept = [i for i in range(len(story)) if f"frames[{i}].characters" not in refused]
    assert [back.prompt(i) for i in range(len(back))] == [story.prompt(i) for i in kept]
    assert [(c.description, c.class_word) for c in back.characters] == [
        (c.description, c.class_word) for c in story.characters
    ]
    assert refused <= {p.field for p in consistory_human_losses(story, drop_frames=True)}


def test_the_examples_name_the_frames_they_cannot_write_and_what_they_lose():
    lighthouse = load_story(EXAMPLES / "lighthouse.yaml")
    with pytest.raises(StoryError) as info:
        to_consistory_human(lighthouse)
    assert [p.field for p in info.value.problems] == ["frames[5].characters"]
    assert "shows no character" in str(info.value) and "lighthouse.yaml" in str(info.value)
    assert {p.field for p in consistory_human_losses(lighthouse, drop_frames=True)} == {
        "title",
        "settings.negative_prompt",
        "characters[0].id",
        "characters[0].name",
        "frames[4].seed",
        "frames[5].characters",
    }

    friends = load_story(EXAMPLES / "two_friends.yaml")
    with pytest.raises(StoryError) as info:
        to_consistory_human(friends)
    assert [p.field for p in info.value.problems] == [
        "frames[0].characters",
        "frames[1].characters",
        "frames[3].characters",
    ]
    lost = {p.field for p in consistory_human_losses(friends, drop_frames=True)}
    assert {"style.suffix", "settings.seed", "frames[4].characters"} <= lost
    assert len(to_consistory_human(friends, drop_frames=True)["prompts"]) == 2


ROUND_TRIP = {
    "title": "Round trip",
    "style": {"prefix": "A photo of", "suffix": ", soft light"},
    "characters": [
        {"id": "kai", "name": "Kai", "description": "a tall man with a grey beard", "class_word": "man"},
        {"id": "ivy", "description": "a small girl with red braids", "class_word": "girl"},
    ],
    "frames": [
        {"text": "{kai} and {ivy} baking bread", "context": "baking bread", "context_type": "action"},
        {"text": "{kai} reading alone", "context": "reading alone"},
        {"text": "{kai} and {ivy} on a beach", "context": "on a beach", "context_type": "background", "seed": 5},
        {"text": "{kai} and {ivy} in raincoats", "context": "in raincoats", "caption": "Rain again."},
        {"text": "{kai} and {ivy} at a fair"},
    ],
    "settings": {"seed": 9, "steps": 30},
    "methods": {"vanilla": {}},
}


def test_round_trip_keeps_what_the_format_holds_and_names_the_rest(tmp_path):
    story = parse_story(ROUND_TRIP)
    with pytest.raises(StoryError) as info:
        to_consistory_human(story)
    assert [p.field for p in info.value.problems] == ["frames[1].characters"]

    document = to_consistory_human(story, drop_frames=True)
    assert set(document) == {"prompts", "token", "character", "settings_types", "settings", "style"}
    assert document["token"] == ["man", "girl"]
    back = _read_back(document, tmp_path)
    kept = [0, 2, 3, 4]
    assert [back.prompt(i) for i in range(len(back))] == [story.prompt(i) for i in kept]
    assert [(c.description, c.class_word) for c in back.characters] == [
        ("a tall man with a grey beard", "man"),
        ("a small girl with red braids", "girl"),
    ]
    assert back.style == "A photo of"
    assert [f.context for f in back.frames] == ["baking bread", "on a beach", "in raincoats", story.scene_text(4)]
    assert [f.context_type for f in back.frames] == ["action", "background", "", ""]
    assert all(f.characters == ("man", "girl") for f in back.frames)

    assert {p.field for p in consistory_human_losses(story, drop_frames=True)} == {
        "title",
        "style.suffix",
        "settings.seed",
        "settings.steps",
        "methods.vanilla",
        "characters[0].id",
        "characters[0].name",
        "characters[1].id",
        "frames[1].characters",
        "frames[2].seed",
        "frames[3].caption",
        "frames[4].context",
    }


def test_every_frame_field_the_format_cannot_hold_is_named(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "kai.png")
    data = {
        "characters": [
            {"id": "man", "description": "a tall man", "class_word": "man", "references": ["kai.png"]},
        ],
        "frames": [
            {
                "text": "{man} in a boat",
                "negative_prompt": "blurry",
                "masks": {"man": "kai.png"},
                "control_image": "kai.png",
            },
        ],
    }
    story = parse_story(data, source=tmp_path / "boat.yaml", base_dir=tmp_path)
    assert {p.field for p in consistory_human_losses(story)} == {
        "characters[0].references",
        "frames[0].negative_prompt",
        "frames[0].masks",
        "frames[0].control_image",
        "frames[0].context",
    }


def test_a_story_that_cannot_be_written_is_refused_with_the_reason():
    nobody = Story(title="t", frames=(Frame("a quiet lighthouse"),))
    with pytest.raises(StoryError) as info:
        to_consistory_human(nobody)
    assert info.value.problems[0].field == "characters"

    friends = parse_story(
        {
            "characters": ROUND_TRIP["characters"],
            "frames": [{"text": "{kai} alone"}, {"text": "{ivy} alone"}],
        }
    )
    for drop_frames in (False, True):
        with pytest.raises(StoryError) as info:
            consistory_human_losses(friends, drop_frames=drop_frames)
        fields = [p.field for p in info.value.problems]
        assert fields == (["frames"] if drop_frames else ["frames[0].characters", "frames[1].characters"])


def test_a_document_that_would_not_read_back_is_refused_naming_the_frame():
    mara = Character("mara", "an old woman", "woman")
    story = Story(
        title="t",
        frames=(Frame("{mara} reading"), Frame("a quiet lighthouse", characters=("mara",))),
        characters=(mara,),
    )
    with pytest.raises(StoryError) as info:
        to_consistory_human(story, drop_frames=True)
    assert [p.field for p in info.value.problems] == ["frames[1]"]
    assert "would not read back" in str(info.value)

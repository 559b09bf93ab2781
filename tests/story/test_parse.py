from __future__ import annotations

import dataclasses

import pytest

from storycast.errors import StoryError
from storycast.story.model import Story
from storycast.story.parse import load_story, parse_story, story_to_dict, validate_story_file
from tests.helpers import EXAMPLES, small_story_data


def problems_of(path):
    return {p.field: p for p in validate_story_file(path)}


@pytest.mark.parametrize("name", ["lighthouse.yaml", "two_friends.yaml"])
def test_examples_parse(name):
    story = load_story(EXAMPLES / name)
    assert isinstance(story, Story)
    assert len(story) >= 5
    for i in range(len(story)):
        assert "{" not in story.prompt(i)
        for character in story.frame_characters(i):
            assert character.class_word in story.prompt(i)


def test_prompt_expansion_style_and_seeds(write_story):
    data = small_story_data(3)
    data["style"] = {"prefix": "A watercolor of", "suffix": ", soft light"}
    data["frames"][1]["seed"] = 99
    data["frames"][2]["negative_prompt"] = "dark"
    data["settings"]["negative_prompt"] = "blurry"
    story = load_story(write_story(data))
    assert story.prompt(0) == "A watercolor of a young woman with red hair in scene number 0, soft light"
    assert [story.frame_seed(i) for i in range(3)] == [3, 99, 5]
    assert [story.negative_prompt(i) for i in range(3)] == ["blurry", "blurry", "dark"]
    assert story.frames[0].characters == ("mara",)


def test_characters_inferred_from_placeholders_and_caption_uses_names(write_story):
    data = small_story_data(1)
    data["characters"][0]["name"] = "Mara"
    data["characters"].append({"id": "leo", "description": "a tall man", "class_word": "man"})
    data["frames"] = [{"text": "{leo} talks to {mara}"}, {"text": "an empty street"}]
    story = load_story(write_story(data))
    assert story.frames[0].characters == ("leo", "mara")
    assert story.frames[1].characters == ()
    assert story.caption(0) == "a tall man talks to Mara"


def test_plain_string_frames(write_story):
    data = small_story_data(1)
    data["frames"] = ["a lighthouse at night"]
    story = load_story(write_story(data))
    assert story.frames[0].text == "a lighthouse at night"


def test_missing_field(write_story):
    data = small_story_data()
    del data["characters"][0]["class_word"]
    problems = problems_of(write_story(data))
    assert "characters[0].class_word" in problems
    assert "missing required field" in problems["characters[0].class_word"].message


def test_missing_frames_and_empty_story(write_story):
    data = small_story_data()
    del data["frames"]
    assert "frames" in problems_of(write_story(data, "a.yaml"))
    data["frames"] = []
    problem = problems_of(write_story(data, "b.yaml"))["frames"]
    assert "empty" in problem.message and "add at least one frame" in problem.fix


def test_empty_file(write_story):
    problems = validate_story_file(write_story(""))
    assert len(problems) == 1 and "empty" in problems[0].message


def test_wrong_types(write_story):
    data = small_story_data()
    data["frames"][1]["seed"] = "seven"
    data["settings"]["steps"] = "many"
    data["characters"][0]["description"] = 12
    problems = problems_of(write_story(data))
    assert "whole number" in problems["frames[1].seed"].message
    assert "whole number" in problems["settings.steps"].message
    assert "text" in problems["characters[0].description"].message


def test_bool_is_not_a_number(write_story):
    data = small_story_data()
    data["settings"]["seed"] = True
    assert "settings.seed" in problems_of(write_story(data))


def test_unknown_character_in_frame(write_story):
    data = small_story_data()
    data["frames"][3] = {"text": "{mara} meets a woman", "characters": ["mara", "marra"]}
    problems = problems_of(write_story(data))
    problem = problems["frames[3].characters[1]"]
    assert "'marra' is not a character" in problem.message
    assert "did you mean 'mara'" in problem.fix


def test_unknown_placeholder(write_story):
    data = small_story_data()
    data["frames"][0]["text"] = "{bob} walks"
    problem = problems_of(write_story(data))["frames[0].text"]
    assert "'{bob}'" in problem.message


def test_class_word_absent_from_description(write_story):
    data = small_story_data()
    data["characters"][0]["class_word"] = "man"  # 'man' is not a whole word of 'woman'
    problem = problems_of(write_story(data))["characters[0].class_word"]
    assert "does not occur in the description" in problem.message


def test_class_word_absent_from_frame_text(write_story):
    data = small_story_data()
    data["frames"][2] = {"text": "Mara walks by the sea", "characters": ["mara"]}
    problem = problems_of(write_story(data))["frames[2].characters[0]"]
    assert "class word 'woman'" in problem.message
    assert "{mara}" in problem.fix


def test_listed_characters_must_include_placeholders(write_story):
    data = small_story_data()
    data["characters"].append({"id": "leo", "description": "a tall man", "class_word": "man"})
    data["frames"][0] = {"text": "{mara} and {leo}", "characters": ["mara"]}
    assert "frames[0].characters" in problems_of(write_story(data))


def test_unknown_field_suggests_the_right_name(write_story):
    data = small_story_data()
    data["frames"][0]["negative_promt"] = "x"
    problem = problems_of(write_story(data))["frames[0].negative_promt"]
    assert "negative_prompt" in problem.fix


def test_duplicate_ids_and_bad_sizes(write_story):
    data = small_story_data()
    data["characters"].append(dict(data["characters"][0]))
    data["settings"]["width"] = 500
    problems = problems_of(write_story(data))
    assert "used twice" in problems["characters[1].id"].message
    assert "multiple of 8" in problems["settings.width"].message


def test_missing_reference_photo(write_story):
    data = small_story_data()
    data["characters"][0]["references"] = ["photos/mara.jpg"]
    problem = problems_of(write_story(data))["characters[0].references[0]"]
    assert "not found" in problem.message


def test_reference_photo_resolved_relative_to_story(write_story, tmp_path):
    (tmp_path / "photos").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "mara.jpg")
    data = small_story_data()
    data["characters"][0]["references"] = "photos/mara.jpg"
    story = load_story(write_story(data))
    assert story.characters[0].references == ((tmp_path / "photos" / "mara.jpg").resolve(),)


def test_a_character_may_name_a_library_identity(write_story):
    data = small_story_data()
    data["characters"][0]["identity"] = "3f2a9c0d1e"
    story = load_story(write_story(data))
    assert story.characters[0].identity == "3f2a9c0d1e"
    assert story_to_dict(story)["characters"][0]["identity"] == "3f2a9c0d1e"
    assert parse_story(story_to_dict(story)).characters[0].identity == "3f2a9c0d1e"
    data["characters"][0]["identity"] = "../../etc/passwd"
    problem = problems_of(write_story(data))["characters[0].identity"]
    assert "not a key of the identity library" in problem.message and "storycast identities list" in problem.fix


def test_every_problem_is_reported_with_line_numbers(write_story):
    text = """title: x
characters:
  - id: mara
    description: a young woman
    class_word: woman
frames:
  - text: "{mara} runs"
  - text: "{mara} sits"
    characters: [mara, nobody]
  - seed: 3
"""
    path = write_story(text)
    with pytest.raises(StoryError) as info:
        load_story(path)
    fields = [p.field for p in info.value.problems]
    assert fields == ["frames[1].characters[1]", "frames[2].text"]
    assert "(line 9)" in info.value.problems[0].message
    assert str(path) in str(info.value)


def test_yaml_syntax_error_names_the_line(write_story):
    path = write_story("title: x\nframes:\n  - text: [unclosed\n")
    problems = validate_story_file(path)
    assert len(problems) == 1 and problems[0].message.startswith("(line 3) the '[' opened here is not closed")


@pytest.mark.parametrize(
    ("text", "message", "fix"),
    [
        # PyYAML notices an unclosed quote at the end of the file: the line to edit is where it was opened.
        ('title: "abc\nframes:\n  - x\n', "(line 1) a quote opened here is not closed", "close the quote"),
        ("title: a: b\nframes:\n  - x\n", "(line 1) a value holds ': '", "put the value in quotes"),
        ("frames:\n\t- x\n", "(line 2) a tab indents this line", "indent with spaces"),
        ("frames:\n  - text: a\n   seed: 3\n", "(line 3) this line is indented differently", "line up the items"),
        ("title: {a: b\nframes: [x]\n", "(line 1) the '{' opened here is not closed", "close it with '}'"),
    ],
)
def test_yaml_syntax_errors_point_at_the_line_to_edit_and_say_what_to_do(write_story, text, message, fix):
    (problem,) = validate_story_file(write_story(text))
    assert problem.message.startswith(message) and problem.fix.startswith(fix)


def test_a_key_written_twice_is_reported_with_every_other_problem(write_story):
    problems = validate_story_file(write_story("title: x\ntitle: y\nframes: 5\nsettings: {stesp: 3}\n"))
    assert [p.field for p in problems] == ["title", "settings.stesp", "frames"]
    assert "written twice" in problems[0].message and "did you mean 'steps'" in problems[1].fix


def test_json_story(tmp_path):
    import json

    path = tmp_path / "story.json"
    path.write_text(json.dumps(small_story_data()), encoding="utf-8")
    assert len(load_story(path)) == 4


def test_missing_file(tmp_path):
    with pytest.raises(StoryError, match="file not found"):
        load_story(tmp_path / "nope.yaml")


def test_round_trip_through_our_format(write_story):
    story = load_story(EXAMPLES / "two_friends.yaml")
    again = parse_story(story_to_dict(story), source=story.source, base_dir=story.source.parent)
    assert dataclasses.replace(again, source=None) == dataclasses.replace(story, source=None)


def test_parsing_loads_nothing_above_the_story():
    """The story layer stands alone: reading a story file loads no run planner, method or model code."""
    import subprocess
    import sys

    code = (
        "import sys, storycast.story.parse\n"
        "print('\\n'.join(m for m in sys.modules if m == 'storycast' or m.startswith('storycast.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    front = {"storycast", "storycast.version"}  # the package front and its version, loaded by any storycast import
    allowed = ("storycast.story", "storycast.errors", "storycast.utils")
    outside = [m for m in loaded if m not in front and not m.startswith(allowed)]
    assert "storycast.story.parse" in loaded and outside == []

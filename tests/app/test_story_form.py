"""The story form: fields -> our story document -> parse_story, and a frame redrawn through the planner."""

from __future__ import annotations

import pytest
from PIL import Image

from storycast.app.folders import AppFolders, AppRequestError
from storycast.app.story_form import (
    MAX_CHARACTERS,
    CharacterFields,
    StoryFields,
    build_document,
    check_document,
    document_to_fields,
    load_document,
    merge_frames,
    path_problems,
    problem_lines,
    sanitize_document,
    seed_value,
    set_frame,
    used_slots,
)
from storycast.errors import StoryError
from storycast.models.spec import ModelSpec
from storycast.runs.plan import plan_run


@pytest.fixture
def folders(tmp_path):
    return AppFolders.create(tmp_path / "app")


def _fields(**changes) -> StoryFields:
    values = dict(
        title="Two frames",
        style="A watercolor of",
        characters=[
            CharacterFields(id="mara", name="Mara", description="a young woman with red hair", class_word="woman"),
            CharacterFields(),
            CharacterFields(id="rex", description="a small brown dog", class_word="dog"),
        ],
        frames="{mara} reading a book\n\n  {mara} walking {rex} on the beach  \n",
        settings={"width": "64", "height": 64.0, "steps": "2", "guidance_scale": "", "seed": None},
    )
    values.update(changes)
    return StoryFields(**values)


def test_the_form_makes_the_story_a_file_would_hold(folders):
    doc = build_document(_fields())
    assert doc["characters"] == [
        {"id": "mara", "description": "a young woman with red hair", "class_word": "woman", "name": "Mara"},
        {"id": "rex", "description": "a small brown dog", "class_word": "dog"},
    ]
    assert doc["frames"] == [{"text": "{mara} reading a book"}, {"text": "{mara} walking {rex} on the beach"}]
    assert doc["settings"] == {"width": 64, "height": 64, "steps": 2}
    story = check_document(doc, folders)
    assert [f.characters for f in story.frames] == [("mara",), ("mara", "rex")]
    assert story.prompt(0) == "A watercolor of a young woman with red hair reading a book"
    assert story.settings.width == 64 and story.settings.guidance_scale is None


def test_the_parser_s_problems_name_the_form_s_slots_and_frames(folders):
    fields = _fields(frames="{mara} reading\n{bob} swimming")
    fields.characters[2].class_word = "cat"
    with pytest.raises(StoryError) as caught:
        check_document(build_document(fields), folders)
    lines = problem_lines(caught.value, used_slots(fields))
    assert [line.split(":")[0] for line in lines] == ["character 3.class_word", "frame 2.text"]
    assert "'cat'" in lines[0] and "{bob}" in lines[1]


def test_bad_settings_are_the_parser_s_errors(folders):
    with pytest.raises(StoryError, match="multiple of 8"):
        check_document(build_document(_fields(settings={"width": "65"})), folders)
    with pytest.raises(StoryError, match="whole number"):
        check_document(build_document(_fields(settings={"steps": "many"})), folders)


def test_editing_lines_keeps_the_other_frames_seeds():
    previous = [{"text": "a", "seed": 1}, {"text": "b", "seed": 2, "caption": "B"}, {"text": "c", "seed": 3}]
    merged = merge_frames(["new", "a", "b", "c changed"], previous)
    assert merged == [
        {"text": "new"},
        {"text": "a", "seed": 1},
        {"text": "b", "seed": 2, "caption": "B"},
        {"text": "c changed"},
    ]


def test_a_loaded_document_keeps_what_the_form_does_not_show(folders, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text(
        "title: T\ncharacters:\n  - {id: leo, description: a young man, class_word: man}\n"
        "frames:\n  - {text: '{leo} at the market', seed: 7, context: at the market}\n  - a market at night\n"
        "settings: {seed: 3, batch_size: 2}\nmethods: {storydiffusion: {id_length: 1}}\n",
        encoding="utf-8",
    )
    doc, notes = load_document(story, folders)
    assert notes == []
    fields = document_to_fields(doc)
    assert len(fields.characters) == MAX_CHARACTERS and fields.characters[0].id == "leo"
    assert fields.frames == "{leo} at the market\na market at night"
    rebuilt = build_document(fields, doc)
    assert rebuilt["frames"][0] == {"text": "{leo} at the market", "seed": 7, "context": "at the market"}
    assert rebuilt["settings"] == {"seed": 3, "batch_size": 2}
    assert rebuilt["methods"] == {"storydiffusion": {"id_length": 1}}
    assert check_document(rebuilt, folders) == check_document(doc, folders)


def test_too_many_characters_for_the_form_is_an_error():
    doc = {"characters": [{"id": f"c{i}", "description": "a man", "class_word": "man"} for i in range(5)]}
    with pytest.raises(AppRequestError, match="up to 4"):
        document_to_fields(doc)


def test_files_a_story_names_must_be_uploads(folders, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    uploaded = folders.uploads / "0123.png"
    Image.new("RGB", (8, 8)).save(uploaded)
    doc = {
        "title": "t",
        "characters": [
            {
                "id": "a",
                "description": "a man",
                "class_word": "man",
                "references": [str(secret), "0123.png", "../x.png"],
            }
        ],
        "frames": [{"text": "{a} waves", "masks": {"a": "/etc/passwd"}, "control_image": str(uploaded)}],
    }
    assert [p.field for p in path_problems(doc, folders)] == [
        "characters[0].references[0]",
        "characters[0].references[2]",
        "frames[0].masks.a",
    ]
    with pytest.raises(StoryError, match="not uploaded"):
        check_document(doc, folders)
    clean, notes = sanitize_document(doc, folders)
    assert len(notes) == 3 and all("left out" in n for n in notes)
    assert clean["characters"][0]["references"] == [str(uploaded.resolve())]
    assert "masks" not in clean["frames"][0] and clean["frames"][0]["control_image"] == str(uploaded)
    assert path_problems(clean, folders) == []
    assert check_document(clean, folders).characters[0].references == (uploaded.resolve(),)


def test_a_story_upload_is_read_with_the_cli_s_limits(folders):
    bad = folders.uploads / "bad.yaml"
    bad.write_text("title: [unclosed\n", encoding="utf-8")
    with pytest.raises(StoryError, match=r"\(line 1\) the .\[. opened here is not closed"):
        load_document(bad, folders)
    bomb = folders.uploads / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
            for i in range(8)
        ),
        encoding="utf-8",
    )
    with pytest.raises(StoryError, match="more than"):
        load_document(bomb, folders)


def test_seeds_typed_in_the_form():
    assert seed_value(" 42 ") == 42
    assert seed_value(str(2**64 - 1)) == 2**64 - 1
    for bad in ("-1", "1.5", "x", str(2**64)):
        with pytest.raises(AppRequestError, match="not a whole number"):
            seed_value(bad)


def test_set_frame_changes_only_that_frame():
    doc = build_document(_fields())
    changed = set_frame(doc, 2, seed=123)
    assert changed["frames"][1] == {"text": "{mara} walking {rex} on the beach", "seed": 123}
    assert changed["frames"][0] == doc["frames"][0] and "seed" not in doc["frames"][1]
    retold = set_frame({"frames": [{"text": "a", "characters": ["x"], "caption": "c", "seed": 1}]}, 1, text="b  c")
    assert retold["frames"] == [{"text": "b c", "seed": 1}]
    for number in (0, 3):
        with pytest.raises(AppRequestError, match="no frame"):
            set_frame(doc, number, seed=1)
    with pytest.raises(AppRequestError, match="empty"):
        set_frame(doc, 1, text="  ")


def _to_draw(folders, before: dict, after: dict, method: str, settings=None) -> list[int]:
    """The frames the planner would redraw after the edit: those of the groups whose keys changed (a frame is
    kept exactly when the folder holds it under the same key, storycast.runs.folder.RunFolder.finished_record)."""
    spec = ModelSpec(source="tiny", device="cpu")
    plans = [
        plan_run(check_document(doc, folders), method, model=spec, method_settings=settings) for doc in (before, after)
    ]
    old = {g.frames: g.key for g in plans[0].groups}
    return sorted(i for g in plans[1].groups if old.get(g.frames) != g.key for i in g.frames)


def test_redrawing_one_frame_redraws_only_that_frame(folders):
    doc = build_document(_fields(frames="{mara} reading\n{mara} swimming\n{mara} sleeping"))
    assert _to_draw(folders, doc, set_frame(doc, 2, seed=99), "vanilla") == [1]
    assert _to_draw(folders, doc, set_frame(doc, 3, text="{mara} dancing"), "vanilla") == [2]
    assert _to_draw(folders, doc, doc, "vanilla") == []


def test_redrawing_an_identity_frame_redraws_the_frames_that_read_it(folders):
    doc = build_document(_fields(frames="{mara} reading\n{mara} swimming\na beach at night\n{mara} sleeping"))
    settings = {"id_length": 1}
    assert _to_draw(folders, doc, set_frame(doc, 1, seed=99), "storydiffusion", settings) == [0, 1, 3]
    assert _to_draw(folders, doc, set_frame(doc, 4, seed=99), "storydiffusion", settings) == [3]


def test_a_character_s_library_identity_goes_into_the_story_and_back():
    from storycast.app.story_form import CharacterFields, StoryFields, build_document, document_to_fields

    fields = StoryFields(
        title="t",
        characters=[CharacterFields(id="zoe", description="a tall man", class_word="man", identity="abc123")],
        frames="{zoe} swimming",
    )
    doc = build_document(fields)
    assert doc["characters"][0]["identity"] == "abc123"
    assert document_to_fields(doc).characters[0].identity == "abc123"
    assert CharacterFields(identity="abc123").blank is False

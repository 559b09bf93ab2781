"""ViStory's story.json read as the benchmark's loader reads it: characters with their reference images, shots
with zero, one or several characters, prompts composed as its story_prompt_merge composes them; damaged files
refused by story and field; validate and convert take the folder."""

from __future__ import annotations

import json

import pytest
import yaml

from storycast.cli.main import main
from storycast.errors import StoryError
from storycast.story.parse import load_story, parse_story
from storycast.story.vistory import PROMPT_ORDER, from_vistory
from tests.story.vistory_fixture import STORIES, write_vistory


def naive_prompts(story: dict, language: str) -> list[str]:
    """The benchmark's story_prompt_merge, written from its code (dataset_load.py at 514cc31)."""
    out = []
    for shot in story["Shots"]:
        keys, names = shot["Characters Appearing"]["en"], shot["Characters Appearing"][language]
        lines = [f"{n} is {story['Characters'][k][f'prompt_{language}']}" for k, n in zip(keys, names, strict=False)]
        out.append(
            f"{shot['Shot Perspective Design'][language]};{shot['Plot Correspondence'][language]};"
            f"{shot['Static Shot Description'][language]};{';'.join(lines)};{shot['Setting Description'][language]};"
        )
    return out


@pytest.mark.parametrize("language", ["en", "ch"])
def test_a_story_reads_as_the_benchmark_composes_it(tmp_path, language):
    root = write_vistory(tmp_path / "ViStory")
    path = root / "01" / "story.json"
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    story = from_vistory(data, source=path, language=language)
    assert [frame.text for frame in story.frames] == naive_prompts(STORIES["01"], language)
    assert PROMPT_ORDER == ("camera", "plot", "script", "characters", "scene")
    assert [frame.characters for frame in story.frames] == [("mara",), ("mara", "pip"), (), ("old_tom", "pip")]
    mara, pip, tom = story.characters
    assert [p.name for p in mara.references] == ["00.png", "01.png"]  # sorted, as their loader walks them
    # The class word the description names, else the character's name (Chinese descriptions name no English word).
    words = ("woman", "dragon", "Old Tom") if language == "en" else ("玛拉", "皮普", "老汤姆")
    assert (mara.class_word, pip.class_word, tom.class_word) == words
    assert tom.description.startswith(f"{tom.class_word}, ") and story.source_format == "vistory"
    assert all(c.references[0].is_absolute() for c in story.characters)
    # The tag is kept: what the character is, for the methods that read a face from its images.
    assert [(c.kind, c.has_face) for c in story.characters] == [
        ("realistic_human", True), ("non_human", False), ("unrealistic_human", True)
    ]  # fmt: skip
    # A frame's text is the benchmark's prompt verbatim: no style, no placeholder expansion.
    assert [story.prompt(i) for i in range(len(story))] == naive_prompts(STORIES["01"], language)


def test_load_story_detects_the_format_and_the_story_reads_back_from_ours(tmp_path):
    root = write_vistory(tmp_path / "ViStory")
    story = load_story(root / "02" / "story.json")
    assert len(story) == 2 and story.title == "02"
    from storycast.story.parse import story_to_dict

    again = parse_story(story_to_dict(story), source=tmp_path / "x.yaml", base_dir=tmp_path)
    assert [again.prompt(i) for i in range(2)] == [story.prompt(i) for i in range(2)]
    assert again.characters == story.characters and again.character("fox").kind == "non_human"


def test_a_tag_the_benchmark_does_not_have_is_unknown_and_our_format_refuses_an_unknown_kind(tmp_path):
    root = write_vistory(tmp_path / "ViStory")
    path = root / "02" / "story.json"
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    data["Characters"]["Fox"]["tag"] = "animal"
    assert from_vistory(data, source=path).character("fox").kind is None
    del data["Characters"]["Fox"]["tag"]
    assert from_vistory(data, source=path).character("fox").has_face is None
    story = {"title": "t", "characters": [{"id": "f", "description": "a fox", "class_word": "fox", "kind": "animal"}],
             "frames": [{"text": "{f} runs"}]}  # fmt: skip
    with pytest.raises(StoryError) as caught:
        parse_story(story)
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("characters[0].kind", "'animal' is not a kind of character")
    ]


def test_validate_and_convert_take_the_benchmark_folder(tmp_path, capsys):
    root = write_vistory(tmp_path / "ViStory")
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("vistory format") == 2 and "(4 frames, 3 characters" in out
    target = tmp_path / "01.yaml"
    assert main(["convert", str(root / "01" / "story.json"), "-o", str(target)]) == 0
    converted = yaml.safe_load(target.read_text(encoding="utf-8"))
    assert converted["frames"][0]["text"].startswith("medium shot;plot 1;script 1;Mara is a young woman")
    assert [c["kind"] for c in converted["characters"]] == ["realistic_human", "non_human", "unrealistic_human"]


@pytest.mark.parametrize(
    ("damage", "field", "says"),
    [
        (lambda d, f: d["Shots"][1].pop("Setting Description"), "Shots[1]", "misses Setting Description"),
        (lambda d, f: d["Shots"][0]["Characters Appearing"]["en"].append("Nina"), "Shots[0].Characters Appearing",
         "not in Characters"),
        (lambda d, f: [p.unlink() for p in (f / "image" / "Pip").iterdir()], "Characters.Pip", "no reference images"),
        (lambda d, f: d["Characters"]["Mara"].pop("prompt_en"), "Characters.Mara", "needs name_en and prompt_en"),
    ],
)  # fmt: skip
def test_a_damaged_story_is_refused_by_field_and_the_others_still_read(tmp_path, capsys, damage, field, says):
    root = write_vistory(tmp_path / "ViStory")
    path = root / "01" / "story.json"
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    damage(data, root / "01")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(StoryError) as caught:
        load_story(path)
    assert any(p.field == field and says in p.message for p in caught.value.problems), caught.value.problems
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "ok: " in out and "02" in out.split("ok: ", 1)[1]  # one broken story does not stop the other


def test_the_command_line_reads_a_story_in_the_language_asked(tmp_path):
    root = write_vistory(tmp_path / "ViStory")
    for language in ("en", "ch"):
        target = tmp_path / f"01-{language}.yaml"
        assert main(["convert", str(root / "01" / "story.json"), "--lang", language, "-o", str(target)]) == 0
        frames = yaml.safe_load(target.read_text(encoding="utf-8"))["frames"]
        assert [frame["text"] for frame in frames] == naive_prompts(STORIES["01"], language)
    assert main(["validate", str(root), "--lang", "ch"]) == 0

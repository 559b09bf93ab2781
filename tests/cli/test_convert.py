"""`storycast convert --to consistory-human`: a file that validates, or a refusal that names the frame."""

from __future__ import annotations

import json

import pytest
import yaml

from storycast.cli.main import build_parser, main
from tests.helpers import EXAMPLES, small_story_data


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_converts_to_a_valid_file_or_is_refused_cleanly(example, tmp_path, capsys):
    out = tmp_path / "story.json"
    code = main(["convert", str(example), "--to", "consistory-human", "-o", str(out)])
    err = capsys.readouterr().err
    if code == 0:
        assert main(["validate", str(out)]) == 0
    else:
        assert code == 2 and not out.exists()
        assert err.startswith("error: ") and "Traceback" not in err
        assert str(example) in err and ".characters:" in err and "--drop-frames" in err

    assert main(["convert", str(example), "--to", "consistory-human", "--drop-frames", "-o", str(out)]) == 0
    assert "not carried over" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_lighthouse_names_what_it_leaves_out(tmp_path, capsys):
    source = EXAMPLES / "lighthouse.yaml"
    assert main(["convert", str(source), "--to", "consistory-human", "-o", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frames[5].characters: the frame shows no character" in err

    assert (
        main(["convert", str(source), "--to", "consistory-human", "--drop-frames", "-o", str(tmp_path / "s.json")])
        == 0
    )
    warnings = capsys.readouterr().err.splitlines()
    assert all(line.startswith(f"warning: {source}: ") for line in warnings)
    for field in ("title", "settings.negative_prompt", "characters[0].name", "frames[4].seed", "frames[5].characters"):
        assert any(f": {field}: " in line for line in warnings), field
    assert len(json.loads((tmp_path / "s.json").read_text())["prompts"]) == 5


def test_printed_output_is_only_the_document(capsys):
    assert main(["convert", str(EXAMPLES / "two_friends.yaml"), "--to", "consistory-human", "--drop-frames"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["token"] == ["man", "woman"] and len(document["prompts"]) == 2
    assert "style.suffix" in captured.err and "frames[4].characters" in captured.err


def test_round_trip_through_both_formats(tmp_path, capsys):
    data = small_story_data(5)
    data["characters"][0]["name"] = "Mara"
    for index, frame in enumerate(data["frames"]):
        frame["context"] = f"in scene number {index}"
        frame["context_type"] = "background"
    data["frames"][1] = {"text": "an empty room"}
    data["frames"][2]["seed"] = 11
    data["frames"][3]["caption"] = "The end."
    ours = tmp_path / "story.yaml"
    ours.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    bench = tmp_path / "story.json"
    assert main(["convert", str(ours), "--to", "consistory-human", "--drop-frames", "-o", str(bench)]) == 0
    err = capsys.readouterr().err
    for field in ("frames[1].characters", "frames[2].seed", "frames[3].caption", "settings.steps", "settings.seed"):
        assert f": {field}: " in err, field

    back = tmp_path / "back.yaml"
    assert main(["convert", str(bench), "-o", str(back)]) == 0
    document = yaml.safe_load(back.read_text())
    assert [c["description"] for c in document["characters"]] == ["a young woman with red hair"]
    assert [c["class_word"] for c in document["characters"]] == ["woman"]
    assert [f["context"] for f in document["frames"]] == [f"in scene number {i}" for i in (0, 2, 3, 4)]
    assert [f["context_type"] for f in document["frames"]] == ["background"] * 4
    assert [f["text"] for f in document["frames"]] == [f"{{woman}} in scene number {i}" for i in (0, 2, 3, 4)]
    assert document["style"] == "A photo of"


def test_help_epilog_says_what_is_refused_and_what_is_left_out():
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["convert"].format_help()
    for phrase in (
        "--drop-frames",
        "to consistory-human:",
        "Every prompt shows every character",
        "warning on stderr",
        "seeds",
    ):
        assert phrase in " ".join(text.split()), phrase

"""A folder in ViStoryBench's layout is a `storycast benchmark` suite: each numbered story drawn into a run named
by its folder, scored, and left alone by a rerun."""

from __future__ import annotations

import json

import pytest

from storycast.cli.main import main
from tests.story.vistory_fixture import STORIES, write_vistory


def test_a_vistory_folder_is_a_benchmark_suite_and_a_rerun_redraws_nothing(tmp_path, capsys):
    root = write_vistory(tmp_path / "ViStory")
    out = tmp_path / "bench"
    command = ["benchmark", str(root), "--preset", "tiny", "--steps", "1", "--width", "64", "--height", "64",
               "--out", str(out), "--outputs", str(tmp_path / "tree"), "--no-progress"]  # fmt: skip
    assert main(command) == 0
    record = json.loads((out / "benchmark.json").read_text())
    assert record["language"] == "en" and record["vistory"]["mode"] == "text_only"  # vanilla reads no images
    stamp = tmp_path / "tree" / "vanilla" / "text_only" / "en" / record["vistory"]["timestamp"]
    assert sorted(p.name for p in (stamp / "01" / "shots").iterdir()) == [f"shot_0{i}.png" for i in range(1, 5)]
    runs = sorted(p.name for p in (out / "ViStory").iterdir() if p.is_dir())
    assert runs == ["01", "02"]
    manifest = json.loads((out / "ViStory" / "01" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 4
    assert manifest["frames"][0]["prompt"].startswith("medium shot;plot 1;script 1;Mara is a young woman")
    scores = json.loads((out / "ViStory" / "01" / "scores.json").read_text())
    assert (
        "story '01': character 'mara': no reference image gives features"
        in scores["details"]["skipped_metrics"]["cids_cross"]
    )  # the fixture's photos show no face: no CIDS for this story, its other metrics and the other story go on
    assert (
        scores["values"]["cross_csd"] is not None
        and json.loads((out / "ViStory" / "02" / "scores.json").read_text())["values"]["cids_cross"] is not None
    )
    capsys.readouterr()
    assert main(command) == 0
    assert "0 stor(ies) drawn" in capsys.readouterr().err
    # `storycast evaluate` on the benchmark's folder keeps its protocol (vistorybench, not the identitystory default):
    # the scores are up to date, nothing is rescored.
    assert main(["evaluate", str(out), "--preset", "tiny", "--no-progress"]) == 0
    assert "0 scored, 2 up to date" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["preset"] == "vistorybench"


def test_the_lite_split_keeps_the_benchmark_s_lite_stories_and_only_for_vistory_folders(tmp_path):
    from storycast.errors import SettingsError
    from storycast.evaluation.benchmark import resolve_suite, select_split
    from storycast.story.vistory import LITE_STORIES, split_stories
    from tests.evaluation.fakes import write_suite

    assert len(LITE_STORIES) == 20 and split_stories(["01", "02", "8", "79"], "lite") == ["01", "8", "79"]
    suite = resolve_suite(write_vistory(tmp_path / "ViStory"))
    assert select_split(suite, "full") == suite
    lite = select_split(suite, "lite")
    assert lite.name == "ViStory-lite" and [f.parent.name for f in lite.files] == ["01"]  # 02 is not a lite story
    other = resolve_suite(write_suite(tmp_path / "mine"))
    with pytest.raises(SettingsError, match="not a ViStoryBench folder"):
        select_split(other, "lite")


def _tiny_benchmark(root, out, *extra):
    return ["benchmark", str(root), "--preset", "tiny", "--steps", "1", "--width", "64", "--height", "64",
            "--out", str(out), "--no-progress", "--no-storyboard", "--no-pictures", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda folder: (folder / "story.json").write_text('{"Characters": {', encoding="utf-8"), "story.json"),
        (lambda folder: (folder / "image" / "Fox" / "00.png").unlink() or (folder / "image" / "Fox" / "01.png").unlink(),
         "Characters.Fox"),
    ],
)  # fmt: skip
def test_a_broken_story_is_reported_by_story_and_field_and_the_others_are_drawn_and_scored(
    tmp_path, capsys, damage, field
):
    root = write_vistory(tmp_path / "ViStory")
    damage(root / "02")
    out = tmp_path / "bench"
    assert main(_tiny_benchmark(root, out, "--skip", "cids", "--skip", "occm", "--skip", "copy_paste")) == 1
    err = capsys.readouterr().err
    assert "not drawn: ViStory/02" in err and field in err
    record = json.loads((out / "benchmark.json").read_text())
    assert record["eval_preset"] == "vistorybench"  # a ViStory folder's default protocol
    assert [f["story"] for f in record["failed"]] == ["ViStory/02"] and field in record["failed"][0]["reason"]
    results = json.loads((out / "results.json").read_text())
    assert [s["run"] for s in results["stories"]] == ["ViStory/01"]  # the other story was drawn and scored
    assert results["published"] and results["groups"][0]["metrics"]["inception_score"]["n"] == 4
    markdown = (out / "results.md").read_text()
    assert "Stories not drawn" in markdown and "`ViStory/02`" in markdown


def test_only_broken_stories_stop_the_benchmark_with_their_error(tmp_path, capsys):
    root = write_vistory(tmp_path / "ViStory", {"01": STORIES["01"]})
    for path in (root / "01" / "image" / "Pip").iterdir():
        path.unlink()
    assert main(_tiny_benchmark(root, tmp_path / "bench")) == 2
    err = capsys.readouterr().err
    assert "01/story.json" in err and "Characters.Pip" in err and "no reference images" in err

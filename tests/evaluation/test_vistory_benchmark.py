"""A folder in ViStoryBench's layout is a `storycast benchmark` suite: each numbered story drawn into a run named
by its folder, scored, and left alone by a rerun."""

from __future__ import annotations

import json

import pytest

from storycast.cli.main import main
from tests.story.vistory_fixture import write_vistory


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
    capsys.readouterr()
    assert main(command) == 0
    assert "0 stor(ies) drawn" in capsys.readouterr().err


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

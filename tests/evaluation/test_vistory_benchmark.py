"""A folder in ViStoryBench's layout is a `storycast benchmark` suite: each numbered story drawn into a run named
by its folder, scored, and left alone by a rerun."""

from __future__ import annotations

import json

from storycast.cli.main import main
from tests.story.vistory_fixture import write_vistory


def test_a_vistory_folder_is_a_benchmark_suite_and_a_rerun_redraws_nothing(tmp_path, capsys):
    root = write_vistory(tmp_path / "ViStory")
    out = tmp_path / "bench"
    command = ["benchmark", str(root), "--preset", "tiny", "--steps", "1", "--width", "64", "--height", "64",
               "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(command) == 0
    assert json.loads((out / "benchmark.json").read_text())["language"] == "en"
    runs = sorted(p.name for p in (out / "ViStory").iterdir() if p.is_dir())
    assert runs == ["01", "02"]
    manifest = json.loads((out / "ViStory" / "01" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 4
    assert manifest["frames"][0]["prompt"].startswith("medium shot;plot 1;script 1;Mara is a young woman")
    capsys.readouterr()
    assert main(command) == 0
    assert "0 stor(ies) drawn" in capsys.readouterr().err

"""`storycast generate FOLDER`: every story into OUT/<story>/, dealt over job-array shards and over the
processes torchrun starts, with the frames of one plain run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from storycast.cli.main import main
from tests.helpers import small_story_data

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--method", "vanilla", "--preset", "tiny-sd15", "--device", "cpu", "--steps", "1", "--width", "64",
        "--height", "64", "--no-storyboard"]  # fmt: skip


def stories(folder, count=3):
    folder.mkdir(parents=True)
    for number in range(count):
        data = small_story_data(2)
        data["title"] = f"story {number}"
        data["settings"]["seed"] = number
        (folder / f"s{number}.yaml").write_text(yaml.safe_dump(data))
    return folder


def frames(out):
    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.glob("*/frames/*.png"))}


def test_a_folder_of_stories_is_drawn_story_by_story_and_shards_split_it(tmp_path):
    folder = stories(tmp_path / "stories")
    whole = tmp_path / "whole"
    assert main(["generate", str(folder), "--out", str(whole), *ARGS]) == 0
    assert sorted(p.name for p in whole.iterdir()) == ["s0", "s1", "s2"]
    assert all(json.loads((whole / s / "manifest.json").read_text())["status"] == "complete" for s in ("s0", "s1"))
    sharded = tmp_path / "sharded"
    assert main(["generate", str(folder), "--out", str(sharded), "--shard", "1/2", *ARGS]) == 0
    assert sorted(p.name for p in sharded.iterdir()) == ["s1"]
    assert main(["generate", str(folder), "--out", str(sharded), "--shard", "0/2", *ARGS]) == 0
    a, b = frames(whole), frames(sharded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    one_story = folder / "s0.yaml"
    assert main(["generate", str(one_story), "--out", str(tmp_path / "x"), "--shard", "0/2", *ARGS]) == 2
    assert main(["generate", str(folder), "--out", str(tmp_path / "y"), "--shard", "2/2", *ARGS]) == 2


def test_two_gloo_processes_draw_a_folder_as_one_does(tmp_path):
    folder = stories(tmp_path / "stories")
    one = tmp_path / "one"
    assert main(["generate", str(folder), "--out", str(one), *ARGS]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
               "-m", "storycast", "generate", str(folder), "--out", str(two), *ARGS]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn_by_main = [line for line in done.stderr.splitlines() if ": drew " in line]
    assert [line.split(":")[0] for line in drawn_by_main] == ["s0.yaml", "s2.yaml"]  # rank 1 drew s1, quietly
    a, b = frames(one), frames(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

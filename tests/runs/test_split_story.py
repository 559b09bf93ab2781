"""One story split over processes: two gloo processes draw the frames of one and one manifest, a process lost
midway leaves records that a rerun keeps (drawing only what is missing, nothing twice), and methods whose
groups read each other's output are not split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from storycast.runs.folder import WORKERS_DIR
from storycast.runs.plan import plan_run
from storycast.runs.runner import RunOptions, execute_plan, generate_story, independent_groups
from storycast.runs.shards import Share
from storycast.story.parse import parse_story
from tests.methods.helpers import two_friends

GENERATION = {"steps": 1, "width": 64, "height": 64}
REPO = Path(__file__).resolve().parents[2]


def frames_of(out):
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("frame_*.png"))}


def test_two_gloo_processes_draw_the_frames_and_manifest_of_one(tiny_sd15, tmp_path):
    story_file = tmp_path / "story.yaml"
    story_file.write_text(yaml.safe_dump(two_friends()))
    one = tmp_path / "one"
    generate_story(parse_story(two_friends()), "vanilla", tiny_sd15, RunOptions(one), generation=GENERATION)
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
        "-m", "storycast", "generate", str(story_file), "--method", "vanilla", "--preset", "tiny-sd15",
        "--device", "cpu", "--steps", "1", "--width", "64", "--height", "64", "--out", str(two),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "complete" and [r["index"] for r in manifest["frames"]] == [0, 1, 2, 3, 4]
    assert not (two / WORKERS_DIR).exists() and (two / "storyboard.png").is_file()
    a, b = frames_of(one), frames_of(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert done.stderr.count("over 2 processes") == 1  # the summary comes from the main process alone


def test_a_process_lost_midway_leaves_frames_a_rerun_keeps(tiny_sd15, tmp_path):
    story = parse_story(two_friends())
    out = tmp_path / "run"
    plan = plan_run(story, "vanilla", model=tiny_sd15, generation=GENERATION, out_dir=out)
    # Process 1 of 2 drew its share (frames 1 and 3) and the main process never finished.
    second = execute_plan(plan, None, tiny_sd15, RunOptions(out), share=Share(1, 2, process=1, processes=2))
    assert second.drawn == [1, 3] and (out / WORKERS_DIR / "process-1.json").is_file()
    assert not (out / "manifest.json").exists()  # only the main process writes the manifest
    rerun = generate_story(story, "vanilla", tiny_sd15, RunOptions(out), generation=GENERATION)
    assert rerun.drawn == [0, 2, 4] and rerun.kept == [1, 3]  # nothing drawn twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and all(manifest["frames"])
    assert not (out / WORKERS_DIR).exists()


def test_only_methods_whose_groups_are_independent_are_split(tiny_sd15):
    story = parse_story(two_friends())
    assert independent_groups(plan_run(story, "vanilla", model=tiny_sd15, generation=GENERATION))
    assert not independent_groups(plan_run(story, "storynizor", model=tiny_sd15, generation=GENERATION))

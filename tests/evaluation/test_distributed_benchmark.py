"""A benchmark spread over processes or job-array shards: two gloo processes give the frames and tables of one,
shards merged equal the unsharded run, a rerun after a lost shard draws only what is missing, and two processes
needing one new identity make it once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storycast.errors import SettingsError
from storycast.evaluation import benchmark as B
from storycast.evaluation.evaluator import Evaluator, ExtractorOptions
from storycast.evaluation.presets import resolve_preset
from storycast.runs.shards import Share, parse_shard
from tests.evaluation.fakes import write_suite

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

GENERATION = {"steps": 1, "width": 64, "height": 64}
REPO = Path(__file__).resolve().parents[2]


def evaluator(cache):
    return Evaluator(resolve_preset("identitystory", tiny=True), ExtractorOptions(tiny=True), cache_dir=cache)


def frames_of(out):
    return {
        path.relative_to(out).as_posix(): np.asarray(Image.open(path)) for path in sorted(out.glob("*/*/frames/*.png"))
    }


def tables(out):
    results = json.loads((out / "results.json").read_text())
    return [(g["split"], g["stories"], g["metrics"]) for g in results["groups"]], {
        s["run"]: s["values"] for s in results["stories"]
    }


@pytest.fixture
def suite(tmp_path):
    return B.resolve_suite(write_suite(tmp_path / "suite", stories=3))


def test_shards_are_dealt_round_robin_and_bad_shards_refused():
    assert Share(1, 3).mine(8) == [1, 4, 7]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    for bad in ("3/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(SettingsError, match=r"is not a shard.*I/N"):
            parse_shard(bad)


def test_shards_merged_equal_the_unsharded_run_and_a_lost_shard_is_finished_by_a_rerun(tiny_sd15, suite, tmp_path):
    whole = tmp_path / "whole"
    B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c"), B.BenchmarkOptions(out_dir=whole),
                    generation=GENERATION)  # fmt: skip
    sharded = tmp_path / "sharded"
    for index in range(2):
        shard = B.run_benchmark(
            [suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c"),
            B.BenchmarkOptions(out_dir=sharded, shard=(index, 2)), generation=GENERATION,
        )  # fmt: skip
        assert len(shard.drawn) == [2, 1][index] and not (sharded / "results.json").exists()
    B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c"),
                    B.BenchmarkOptions(out_dir=sharded, merge=True), generation=GENERATION)  # fmt: skip
    assert tables(sharded) == tables(whole)
    merged = json.loads((sharded / "results.json").read_text())["benchmark"]
    assert merged["method"] == "vanilla" and merged["generation"] == GENERATION  # the shards' record
    a, b = frames_of(whole), frames_of(sharded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    lost = tmp_path / "lost"  # shard 1 of 2 never ran: the plain command finishes only its story
    B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c"),
                    B.BenchmarkOptions(out_dir=lost, shard=(0, 2)), generation=GENERATION)  # fmt: skip
    rerun = B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c"), B.BenchmarkOptions(out_dir=lost),
                            generation=GENERATION)  # fmt: skip
    assert [p.name for p in rerun.drawn] == ["story_001"] and len(rerun.finished) == 2
    assert tables(lost) == tables(whole)


def test_two_gloo_processes_give_the_frames_and_tables_of_one(tiny_sd15, tmp_path):
    # A ViStoryBench folder: the two processes also write its scorer's tree, into one timestamp folder.
    from tests.story.vistory_fixture import write_vistory

    suite = B.resolve_suite(write_vistory(tmp_path / "ViStory"))
    one = tmp_path / "one"
    B.run_benchmark([suite], "vanilla", tiny_sd15, evaluator(tmp_path / "c1"), B.BenchmarkOptions(out_dir=one),
                    generation=GENERATION)  # fmt: skip
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
        "-m", "storycast", "benchmark", str(suite.folder), "--method", "vanilla", "--preset", "tiny-sd15",
        "--device", "cpu", "--steps", "1", "--width", "64", "--height", "64", "--out", str(two),
        "--cache-dir", str(tmp_path / "c2"), "--eval-preset", "identitystory",  # the protocol of `evaluator`
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| Method") == 1  # one table, from the main process
    assert tables(two) == tables(one)
    a, b = frames_of(one), frames_of(two)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    trees = [sorted((out / "outputs" / "vanilla" / "text_only" / "en").glob("*")) for out in (one, two)]
    assert [len(tree) for tree in trees] == [1, 1]  # one timestamp folder, however many processes wrote
    shots = [
        {p.relative_to(tree[0]).as_posix(): p.read_bytes() for p in tree[0].glob("*/shots/*.png")} for tree in trees
    ]
    assert sorted(shots[1]) == [f"01/shots/shot_0{i}.png" for i in range(1, 5)] + [
        "02/shots/shot_01.png",
        "02/shots/shot_02.png",
    ]
    assert shots[0] == shots[1]


def _discover_once(root: str, counter: str, barrier) -> None:
    import time

    import torch

    from storycast.identity.library import IdentityLibrary

    library = IdentityLibrary(root)
    barrier.wait()  # both processes ask at the same moment
    with library.claim("mara-key"):
        if library.get("mara-key") is None:
            with open(counter, "a") as handle:
                handle.write("discovered\n")
            time.sleep(0.3)  # discovery takes a while
            library.put("mara-key", torch.ones(4), {"character": "mara"})


def test_two_processes_needing_one_new_identity_make_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    counter = tmp_path / "discoveries.txt"
    workers = [
        context.Process(target=_discover_once, args=(str(tmp_path / "identities"), str(counter), barrier))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(1800)  # the event is the worker's exit; the ceiling only keeps a hung worker from hanging CI
    assert [w.exitcode for w in workers] == [0, 0]
    assert counter.read_text().count("discovered") == 1

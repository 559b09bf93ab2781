"""The FLUX methods on a ConsiStory-Human suite through `storycast benchmark`, each with its authors' protocol
(seeds, steps, guidance) recorded in the benchmark's record and applied to every frame."""

from __future__ import annotations

import json

import pytest

from storycast.cli.main import main
from storycast.methods.registry import get_method
from tests.evaluation.fakes import write_suite


@pytest.mark.parametrize("method", ["characonsist", "story2board"])
def test_a_flux_method_runs_the_benchmark_with_its_protocol_recorded(tmp_path, method):
    suite = write_suite(tmp_path / "suite", stories=1, frames=3)
    out = tmp_path / "bench"
    # The command line's steps and size win over the protocol's (a tiny run); its seeds and guidance stay.
    assert main(["benchmark", str(suite), "--method", method, "--preset", "tiny-flux", "--steps", "2",
                 "--width", "64", "--height", "64", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    protocol = get_method(method).benchmark_protocol()
    recorded = json.loads((out / "benchmark.json").read_text())["protocol"]
    assert recorded == protocol and protocol["seed_policy"] == "same"
    manifest = json.loads((out / "suite" / "story_000" / "manifest.json").read_text())
    assert {frame["seed"] for frame in manifest["frames"]} == {protocol["seed"]}
    assert manifest["generation"]["guidance_scale"] == 3.5 and manifest["generation"]["steps"] == 2
    assert (out / "results.json").is_file()

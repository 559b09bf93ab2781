"""The GPU suite's CPU smoke run: the same script a GPU runs, on tiny models, writes its JSON and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


def test_the_gpu_suite_runs_on_the_cpu_with_tiny_models(tmp_path):
    """Its FLUX rows included: a method that does not run on FLUX (storynizor) is left out of them."""
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--device", "cpu", "--tiny", "--steps", "2",
               "--story-frames", "2", "--families", "sd15", "flux", "--methods", "vanilla", "storynizor",
               "storydiffusion"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "suite.json").read_text())["rows"]
    assert [(r["family"], r["method"]) for r in rows] == [
        ("sd15", "vanilla"), ("sd15", "storynizor"), ("sd15", "storydiffusion"),
        ("flux", "vanilla"), ("flux", "storydiffusion"),
    ]  # fmt: skip
    for row in rows:
        assert row["gflops_per_evaluation"] > 0 and 0 < row["compute_floor_share"] < 1
        assert row["evaluations_per_frame"] > 0 and row["peak_memory_mb"] > 0
    # FLUX.1-dev's guidance is an input: one transformer evaluation per step; the UNets' CFG takes two.
    evaluations = {(r["family"], r["method"]): r["evaluations_per_frame"] for r in rows}
    assert evaluations["flux", "vanilla"] == evaluations["flux", "storydiffusion"] == 2
    assert evaluations["sd15", "storydiffusion"] == 4
    table = (tmp_path / "suite.md").read_text()
    assert "| sd15 | storynizor |" in table and "| flux | storydiffusion |" in table

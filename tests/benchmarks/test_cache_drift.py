"""The step-cache drift benchmark's CPU smoke run on the tiny FLUX: a row per cache with its ratios to the uncached
draw (drawn first and again last), and a stated stop without the held-out stories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cache_drift.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--steps", "3", "--size", "64", "--frames", "1", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)


def test_the_drift_benchmark_compares_each_cache_with_the_uncached_draw():
    done = run("--builtin", "--caches", "first-block:1", "mag")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("preset=tiny-flux method=vanilla device=cpu dtype=fp32 steps=3 size=64 frames=1")
    rows = {line[:18].strip(): line[18:].split() for line in lines[3:]}
    assert list(rows) == ["none", "first-block:1", "mag:0.06", "none (again)"]
    none = rows["none"]
    assert none[1:6] == ["1.00", "1.00", none[3], "0.00", "100.00"] and none[-1] == "inf"
    skipped = rows["first-block:1"]
    assert float(skipped[2]) < 1  # fewer FLOPs: blocks were skipped
    assert skipped[-1] != "inf"  # and the frame moved


def test_without_the_held_out_stories_it_stops_saying_why(tmp_path):
    done = run("--bench", str(tmp_path / "absent"))
    assert done.returncode == 1
    assert "is not there" in done.stderr and "Skipped" in done.stderr

"""The FLUX memory benchmark's CPU smoke run: the script a GPU runs, on the tiny FLUX, prints its table with every
row's ratios to the plain row of its method."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storycast.utils.imports import is_available

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flux_memory.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)


def test_the_flux_memory_benchmark_runs_on_the_cpu_with_the_tiny_flux():
    configs = ["plain", "t5-cpu", *(["int8"] if is_available("torchao") else [])]
    done = run("--preset", "tiny-flux", "--steps", "1", "--frames", "2", "--size", "64", "--configs", *configs)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "preset=tiny-flux device=cpu dtype=fp32 steps=1 size=64 frames=2 full depth"
    assert "offload is dropped" in lines[1]
    rows = {tuple(line.split()[:2]): line for line in lines[4:]}
    assert list(rows) == [(method, config) for method in ("vanilla", "storydiffusion") for config in configs]
    for method in ("vanilla", "storydiffusion"):
        assert rows[method, "plain"].split()[-3:] == ["1.00", "1.00", "1.00"]
        assert "encoders on cpu" in rows[method, "t5-cpu"]
        if "int8" in configs:
            assert "int8 (62/62 linears)" in rows[method, "int8"]


def test_depth_is_for_flux_random_only():
    done = run("--preset", "tiny-flux", "--depth", "1,1,1")
    assert done.returncode == 2 and "--depth shrinks flux-random" in done.stderr
    done = run("--preset", "flux-random", "--depth", "1,1")
    assert done.returncode == 2 and "expected D,S,T" in done.stderr

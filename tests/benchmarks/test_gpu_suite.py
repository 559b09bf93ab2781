"""The GPU suite's CPU smoke run: the same script a GPU runs, on tiny models, writes its JSON and table; and what it
draws by default: every registered method on each family it runs on, and FLUX's speed-option rows."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from storycast.methods.registry import get_method, list_methods

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


def run(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=SCRIPT.parent)


def test_the_gpu_suite_runs_on_the_cpu_with_tiny_models(tmp_path):
    """Its FLUX rows included: a method that does not run on FLUX (storynizor) is left out of them, and one that
    reads reference photos (pulid) gets a synthetic photo and the tiny face pack."""
    done = run("--out", str(tmp_path), "--device", "cpu", "--tiny", "--steps", "2", "--story-frames", "2",
               "--families", "sd15", "flux", "--methods", "vanilla", "storynizor", "storydiffusion", "pulid")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "suite.json").read_text())["rows"]
    assert [(r["family"], r["method"], r["option"]) for r in rows] == [
        ("sd15", "vanilla", "-"), ("sd15", "storynizor", "-"), ("sd15", "storydiffusion", "-"),
        ("flux", "vanilla", "-"), ("flux", "storydiffusion", "-"), ("flux", "pulid", "-"),
        ("flux", "vanilla", "compile"), ("flux", "vanilla", "cache first-block"),
        ("flux", "vanilla", "cache taylorseer"), ("flux", "storydiffusion", "cache first-block"),
    ]  # fmt: skip
    for row in rows:
        assert row["gflops_per_evaluation"] > 0 and 0 < row["compute_floor_share"] < 1
        assert row["evaluations_per_frame"] > 0 and row["peak_memory_mb"] > 0
    applied = {(r["method"], r["option"]): r["applied"] for r in rows if r["family"] == "flux"}
    assert applied["vanilla", "compile"] == {"compile": "repeated blocks"}
    assert applied["vanilla", "cache first-block"] == {"cache": "first-block:0.05"}
    assert applied["storydiffusion", "cache first-block"] == {"cache": "first-block:0.05"}
    # FLUX.1-dev's guidance is an input: one transformer evaluation per step; the UNets' CFG takes two.
    evaluations = {(r["family"], r["method"], r["option"]): r["evaluations_per_frame"] for r in rows}
    assert evaluations["flux", "vanilla", "-"] == evaluations["flux", "storydiffusion", "-"] == 2
    assert evaluations["flux", "pulid", "-"] == 2  # its ID branch adds no evaluation (true_cfg 1, their default)
    # SD 1.5's own PNDM scheduler (StoryDiffusion's default since it draws with the model's scheduler, as the
    # authors' default run) evaluates T + 1 steps, each with CFG's two halves: 6 at T = 2.
    assert evaluations["sd15", "storydiffusion", "-"] == evaluations["sd15", "vanilla", "-"] == 6
    table = (tmp_path / "suite.md").read_text()
    assert "| sd15 | storynizor | - |" in table and "| flux | storydiffusion | - |" in table
    assert "| flux | vanilla | compile |" in table


def installed() -> list[str]:
    """The methods the suite's own process sees: built-ins and entry points, not the ones other tests register in
    this process (the contract suite's worked example)."""
    from storycast.methods.registry import builtin_methods

    names = set(builtin_methods()) | {entry.name for entry in metadata.entry_points(group="storycast.methods")}
    return sorted(name for name in names if name in list_methods())


def test_by_default_every_registered_method_is_timed_against_vanilla_on_its_families(tmp_path):
    done = run("--out", str(tmp_path), "--dry-run")
    assert done.returncode == 0, done.stderr[-3000:]
    planned = [tuple(row) for row in json.loads(done.stdout)]
    for family in ("sdxl", "sd15", "flux"):
        plain = [method for f, method, option in planned if f == family and option is None]
        assert plain[0] == "vanilla"
        assert set(plain) == {m for m in installed() if family in get_method(m).families}
    flux_options = {(method, option) for f, method, option in planned if f == "flux" and option}
    assert {("vanilla", "compile"), ("vanilla", "cache first-block"), ("vanilla", "cache taylorseer")} <= flux_options
    cached = {m for m in installed() if "flux" in get_method(m).families and get_method(m).step_cache_safe}
    assert {method for method, option in flux_options if option == "cache first-block"} == cached

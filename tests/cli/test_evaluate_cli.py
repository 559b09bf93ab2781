"""``storycast benchmark`` and ``storycast evaluate`` end to end, offline with tiny models."""

from __future__ import annotations

import json

import pytest

from storycast.cli.main import build_parser, main
from tests.evaluation.fakes import write_suite

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TINY_RUN = ["--method", "vanilla", "--preset", "tiny-sd15", "--steps", "1", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    """A benchmark of one short story, drawn and scored once for the module."""
    root = tmp_path_factory.mktemp("cli")
    suite = write_suite(root / "suite", stories=1, frames=2)
    out = root / "bench"
    assert main(["benchmark", str(suite), *TINY_RUN, "--out", str(out)]) == 0
    return out


def test_benchmark_writes_tables_chart_and_resumes(benchmark_dir, capsys):
    for name in ("results.json", "results.md", "results.png", "benchmark.json"):
        assert (benchmark_dir / name).is_file()
    assert (benchmark_dir / "suite" / "story_000" / "scores.png").is_file()
    suite = benchmark_dir.parent / "suite"
    capsys.readouterr()
    assert main(["benchmark", str(suite), *TINY_RUN, "--out", str(benchmark_dir)]) == 0
    captured = capsys.readouterr()
    assert "| vanilla | suite | 1 |" in captured.out and "*IdentityStory* (AAAI'26)" in captured.out
    assert "0 stor(ies) drawn, 0 scored, 1 already finished" in captured.err


def test_evaluate_with_another_protocol_and_compare(benchmark_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["evaluate", str(benchmark_dir), "--preset", "tiny", "--eval-preset", "1prompt1story", "--force"]) == 0
    out = capsys.readouterr().out
    assert "CLIP-T ↑ |" in out and "*1Prompt1Story* (SDXL)" in out  # 2.5 * cos: no % in the header
    results = json.loads((benchmark_dir / "results.json").read_text())
    assert results["preset"] == "1prompt1story" and results["evaluation"]["tiny"] is True
    # Back to the default protocol, then compare the folder with itself under another name.
    assert main(["evaluate", str(benchmark_dir), "--preset", "tiny", "--skip", "faces", "--with", "DINO-I"]) == 0
    other.symlink_to(benchmark_dir, target_is_directory=True)
    report = tmp_path / "report"
    assert main(["evaluate", "--compare", str(benchmark_dir), str(other), "--out", str(report)]) == 0
    assert "DINO-I ↑ (%)" in capsys.readouterr().out
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (report / name).is_file()


def test_missing_model_files_are_one_clean_message(benchmark_dir, tmp_path, capsys):
    missing = tmp_path / "no-faces"
    assert main(["evaluate", str(benchmark_dir), "--preset", "tiny", "--face-models", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "scrfd_10g_bnkps.onnx" in err and "--face-models" in err and "Traceback" not in err
    assert main(["evaluate", str(benchmark_dir), "--preset", "tiny", "--clip-model", str(tmp_path / "clip")]) == 2
    assert "--clip-model" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert main(["evaluate"]) == 2
    assert "no run folder given" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--skip", "fid"]) == 2
    assert "metric 'fid' is not known" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--eval-set", "face_missing=never"]) == 2
    assert "'never' is not allowed" in capsys.readouterr().err
    assert main(["evaluate", "--compare", str(tmp_path)]) == 2
    assert "storycast evaluate" in capsys.readouterr().err
    assert main(["benchmark", "multi-9", "--out", str(tmp_path), "--bench-root", str(tmp_path)]) == 2
    assert "--bench-root" in capsys.readouterr().err


def test_help_and_presets(capsys):
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    evaluate_help, benchmark_help = choices["evaluate"].format_help(), choices["benchmark"].format_help()
    for flag in ("--eval-preset", "--clip-model", "--dino-model", "--face-models", "--compare", "--preset", "--with"):
        assert flag in evaluate_help
    for flag in ("--method", "--limit", "--bench-root", "--eval-preset", "--face-models", "--eval-device", "--steps"):
        assert flag in benchmark_help
    assert "examples:" in evaluate_help and "examples:" in benchmark_help
    assert main(["evaluate", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "identitystory:" in out and "1prompt1story:" in out and "consistory:" in out and "caveat:" in out

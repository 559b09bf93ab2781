"""--judge-url / --judge-model on evaluate and benchmark become a JudgeOptions (the judge itself: evaluation tests)."""

from __future__ import annotations

import pytest

from storycast.cli.evaluate import judge_options_from_args
from storycast.cli.main import build_parser
from storycast.errors import SettingsError


@pytest.mark.parametrize("command", [["evaluate", "runs"], ["benchmark", "suite", "-o", "out"]])
def test_judge_flags_reach_the_judge_options(command, tmp_path):
    parser = build_parser()
    args = parser.parse_args([*command, "--judge-url", "http://localhost:8000/v1", "--judge-model", "qwen-vl"])
    args.cache_dir = tmp_path
    options = judge_options_from_args(args)
    assert (options.url, options.model, options.cache_dir) == (
        "http://localhost:8000/v1",
        "qwen-vl",
        str(tmp_path / "judge"),
    )
    assert options.skip_reason() is None

    args = parser.parse_args([*command, "--no-feature-cache"])
    options = judge_options_from_args(args)
    assert options.url is None and options.cache_dir is None
    assert "--judge-url" in options.skip_reason()

    args = parser.parse_args([*command, "--judge-url", "localhost:8000"])
    with pytest.raises(SettingsError, match="--judge-url"):
        judge_options_from_args(args)

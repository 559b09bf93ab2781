"""The FLUX speed flags (--compile, --cache) reach ModelSpec; a bad cache, a cache on a UNet and a cache for a
method not safe under one are one-line errors before anything loads; a cached run names its cache in the
manifest."""

from __future__ import annotations

import json

from storycast.cli.common import model_spec_from_args
from storycast.cli.main import build_parser, main


def test_speed_flags_become_model_spec_fields():
    args = build_parser().parse_args(["generate", "story.yaml", "--compile", "--cache", "first-block:0.1"])
    spec = model_spec_from_args(args)
    assert (spec.compile, spec.cache) == (True, "first-block:0.1")
    assert model_spec_from_args(build_parser().parse_args(["generate", "story.yaml"])).cache == "none"


def test_bad_caches_are_one_line_with_the_fix(write_story, tmp_path, capsys):
    story = write_story({"characters": [], "frames": [{"text": "a lighthouse"}]})
    command = ["generate", str(story), "--out", str(tmp_path / "run")]
    assert main([*command, "--preset", "tiny-flux", "--cache", "first-block:zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Fix: e.g. --cache first-block:0.05" in err
    assert main([*command, "--preset", "tiny-sd15", "--cache", "pab"]) == 2
    assert "Fix: drop --cache" in capsys.readouterr().err


def test_a_cached_run_names_its_cache_in_the_manifest(write_story, tmp_path):
    story = write_story({"characters": [], "frames": [{"text": "a lighthouse"}], "settings": {"steps": 2}})
    out = tmp_path / "run"
    flags = ["--preset", "tiny-flux", "--width", "64", "--height", "64", "--cache", "taylorseer"]
    assert main(["generate", str(story), "--out", str(out), "--no-progress", *flags]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["cache"] == "taylorseer:5"
    assert manifest["run_summary"]["model"]["cache"] == "taylorseer:5"

"""The memory flags reach ModelSpec, and a bad one is a one-line error before anything loads."""

from __future__ import annotations

from storycast.cli.common import model_spec_from_args
from storycast.cli.main import build_parser, main


def test_memory_flags_become_model_spec_fields():
    flags = ["--preset", "tiny-flux", "--offload", "group", "--text-encoder-device", "cpu", "--quantize", "int8"]
    args = build_parser().parse_args(["generate", "story.yaml", *flags])
    spec = model_spec_from_args(args)
    assert (spec.offload, spec.text_encoder_device, spec.quantize) == ("group", "cpu", "int8")
    plain = model_spec_from_args(build_parser().parse_args(["generate", "story.yaml"]))
    assert (plain.offload, plain.text_encoder_device, plain.quantize) == ("none", None, "none")


def test_clashing_memory_flags_are_one_line_with_the_fix(write_story, tmp_path, capsys):
    story = write_story({"characters": [], "frames": [{"text": "a lighthouse"}]})
    command = ["generate", str(story), "--preset", "tiny-flux", "--out", str(tmp_path / "run")]
    assert main([*command, "--text-encoder-device", "cpu", "--offload", "model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Fix: drop --text-encoder-device, or use --offload none or group" in err
    assert main([*command, "--quantize", "int4", "--device", "cpu"]) == 2
    assert "Fix: use --quantize int8 (or fp8) on a CPU" in capsys.readouterr().err

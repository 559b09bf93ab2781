from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from storycast.cli.main import build_parser, main
from tests.helpers import BENCH, EXAMPLES, needs_shared_bench, small_story_data, write_benchmark_file


def test_generate_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["generate", str(EXAMPLES / "lighthouse.yaml"), "--preset", "tiny", "--out", str(out), "--steps", "2"])
    assert code == 0
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 6
    assert (out / "storyboard.png").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"]
    assert manifest["frames"][4]["seed"] == 7  # the frame's own seed
    # Again: everything is kept.
    assert (
        main(["generate", str(EXAMPLES / "lighthouse.yaml"), "--preset", "tiny", "--out", str(out), "--steps", "2"])
        == 0
    )
    assert json.loads((out / "manifest.json").read_text())["frames"][0]["drawn"] == manifest["frames"][0]["drawn"]


def test_generate_benchmark_file_and_method_setting_errors(tmp_path, capsys):
    story = write_benchmark_file(tmp_path / "story_000.json", "single", frames=10)
    args = ["generate", str(story), "--preset", "tiny-sd15", "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main([*args, "--batch-size", "5"]) == 0
    assert len(list((tmp_path / "r" / "frames").glob("*.png"))) == 10
    assert main([*args, "--set", "nonsense=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert main([*args, "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_generate_bad_story_is_one_clean_message(write_story, tmp_path, capsys):
    data = small_story_data()
    data["frames"][0]["characters"] = ["ghost"]
    path = write_story(data)
    assert main(["generate", str(path), "--preset", "tiny", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "frames[0].characters[0]" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_unknown_method(tmp_path, capsys):
    assert (
        main(["generate", str(EXAMPLES / "lighthouse.yaml"), "--preset", "tiny", "-m", "nope", "-o", str(tmp_path)])
        == 2
    )
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_validate_reports_every_problem(write_story, capsys):
    data = small_story_data()
    data["frames"][0]["characters"] = ["ghost"]
    data["settings"]["width"] = 7
    bad = write_story(data, "bad.yaml")
    good = write_story(small_story_data(), "good.yaml")
    assert main(["validate", str(good)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "frames[0].characters[0]" in out and "settings.width" in out and "1 file(s) with problems" in out


@needs_shared_bench
def test_validate_the_whole_benchmark(capsys):
    assert main(["validate", str(BENCH)]) == 0
    assert capsys.readouterr().out.count("ok:") == 80


def test_convert_both_ways(tmp_path):
    source = write_benchmark_file(tmp_path / "story_004.json", "multi-2")
    ours = tmp_path / "story.yaml"
    assert main(["convert", str(source), "-o", str(ours)]) == 0
    document = yaml.safe_load(ours.read_text())
    assert "{" in document["frames"][0]["text"] and len(document["characters"]) == 2
    back = tmp_path / "back.json"
    assert main(["convert", str(ours), "--to", "consistory-human", "-o", str(back)]) == 0
    assert json.loads(back.read_text()) == json.loads(source.read_text())


def test_convert_a_folder(tmp_path):
    for number in range(3):
        write_benchmark_file(tmp_path / "multi-2" / f"story_{number:03d}.json", "multi-2")
    assert main(["convert", str(tmp_path / "multi-2"), "-o", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.yaml"))) == 3


def test_env_and_methods(capsys):
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["torch"] and report["devices"][0]["device"] == "cpu"
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "tiny" in out and "TencentARC/PhotoMaker" in out
    assert main(["methods", "identitystory"]) == 0
    out = capsys.readouterr().out
    # Each setting with its --set name, dotted path and help text.
    assert "sweet_spot_step = None" in out and "(injection.sweet_spot_step)" in out
    assert "Candidate images per discovery loop" in out


def test_help_texts_read_well():
    parser = build_parser()
    text = parser.format_help()
    for command in ("generate", "validate", "convert", "env", "methods"):
        assert command in text
    sub = parser._subparsers._group_actions[0].choices["generate"].format_help()
    for flag in ("--method", "--preset", "--model", "--out", "--overwrite", "--set", "--dtype", "--offload"):
        assert flag in sub
    assert "examples:" in sub


def test_console_script_runs_and_a_killed_run_resumes(tmp_path):
    """The installed entry point; a run stopped by SIGTERM midway resumes without redrawing."""
    data = small_story_data(12)
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "storycast.cli.main",
        "generate",
        str(story),
        "--preset",
        "tiny",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*command, "--steps", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Stop it once two frames exist (the event), never after a guess of how fast this machine is; the ceiling only
    # keeps a broken run from hanging the suite.
    ceiling = time.monotonic() + 1800
    while not (out / "frames" / "frame_001.png").exists() and process.poll() is None:
        assert time.monotonic() < ceiling, "no second frame after 30 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=1800)[0].decode()
    manifest = json.loads((out / "manifest.json").read_text())
    done = [f for f in manifest["frames"] if f]
    if process.returncode == 0:
        pytest.skip("the run finished before it could be stopped")
    assert process.returncode == 130, output
    assert manifest["status"] == "interrupted" and 2 <= len(done) < 12
    finished = subprocess.run([*command, "--steps", "3"], env=env, capture_output=True, text=True, timeout=1800)
    assert finished.returncode == 0, finished.stderr
    assert f"{len(done)} kept from before" in finished.stderr
    assert len(list((out / "frames").glob("frame_*.png"))) == 12


def test_identities_list_show_remove(tmp_path, capsys):
    import torch

    from storycast.identity.library import IdentityLibrary

    library = IdentityLibrary(tmp_path / "identities")
    library.put("abc123def", torch.ones(4), {"character": "mara", "source": "discovered", "prompt": "a woman img"})
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["identities", *cache]) == 0
    assert "abc123def  mara" in capsys.readouterr().out
    assert main(["identities", "show", "abc", *cache]) == 0
    assert "norm 2.000" in capsys.readouterr().out
    assert main(["identities", "show", "zzz", *cache]) == 2
    assert "no identity" in capsys.readouterr().err
    assert main(["identities", "remove", "abc", *cache]) == 0
    assert library.keys() == []


def test_a_misspelt_flag_gets_the_subcommand_s_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["generate", "story.yaml", "--stesp", "3"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: storycast generate") and "(did you mean --steps?)" in err
    with pytest.raises(SystemExit):
        main(["data", "build", "photos", "--out", "x", "--overwrte"])  # a nested subcommand's own usage
    err = capsys.readouterr().err
    assert err.startswith("usage: storycast data build") and "did you mean --overwrite?" in err


def test_generate_help_says_vanilla_is_the_default_method(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "default: vanilla" in capsys.readouterr().out

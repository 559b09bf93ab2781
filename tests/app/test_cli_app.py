"""`storycast app`: its flags, what it says about where it listens, and a clear error without gradio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storycast.app.config import AppConfig, bind_notice
from storycast.cli.main import main
from storycast.errors import SettingsError


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["app", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--preset",
        "--host",
        "--port",
        "--share",
        "--root",
        "--queue-size",
        "--max-upload-mb",
        "--max-frames",
    ):
        assert flag in out
    assert "127.0.0.1" in out
    assert "longest story the app draws" in out and "(default 64)" in out


def test_max_frames_reaches_the_app_s_settings():
    import argparse

    from storycast.cli.app import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(), "app")
    assert config_from_args(parser.parse_args(["app"])).max_frames == 64
    assert config_from_args(parser.parse_args(["app", "--max-frames", "500"])).max_frames == 500


def test_without_gradio_the_error_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    monkeypatch.delitem(sys.modules, "storycast.app.ui", raising=False)
    assert main(["app", "--preset", "tiny", "--root", str(tmp_path / "app")]) == 2
    assert "pip install 'storycast[ui]'" in capsys.readouterr().err
    assert not (tmp_path / "app").exists()


def test_the_app_says_who_can_reach_it():
    local = bind_notice(AppConfig(root=Path("a")), "http://127.0.0.1:7860/")
    assert "this machine only" in local and "--host 0.0.0.0" in local
    assert AppConfig().host == "127.0.0.1" and AppConfig().local_only
    network = bind_notice(AppConfig(host="0.0.0.0"))
    assert "anyone who can reach this address" in network
    shared = AppConfig(share=True)
    assert not shared.local_only and "public link" in bind_notice(shared)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"queue_size": 0}, "queue size"),
        ({"max_upload_mb": 0}, "upload limit"),
        ({"port": 70000}, "port"),
        ({"max_frames": 0}, "max_frames 0 is out of range"),
        ({"max_frames": 2.5}, "max_frames 2.5 is not a whole number"),
    ],
)
def test_bad_app_settings_are_errors(changes, message):
    with pytest.raises(SettingsError, match=message):
        AppConfig(**changes)


def test_the_app_s_plain_modules_and_the_cli_do_not_import_gradio():
    code = (
        "import sys, storycast, storycast.cli.main\n"
        "from storycast.app import config, drawing, folders, identities, method_form, story_form\n"
        "print('gradio' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

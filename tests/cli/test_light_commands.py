"""Light commands start fast: `validate`, `convert`, `identities` and `--help` import neither torch, diffusers nor
transformers (each a second or more and hundreds of MB before the command can answer)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import EXAMPLES

HEAVY = ("torch", "diffusers", "transformers", "datasets", "accelerate")
PROBE = """
import json, sys
from storycast.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(%r))))
"""


METHODS_STORY = """\
title: t
characters: [{id: mara, description: a woman, class_word: woman}]
frames: ["{mara} at sea", "{mara} at home"]
methods:
  storydifusion: {}
  identitystory: {sweet_spot_stp: 3}
  storydiffusion: {sa32: 2.0}
  consistory: {}
  1prompt1story: {}
  story-adapter: {}
  storynizor: {}
  photomaker: {}
  characonsist: {}
  story2board: {}
  vanilla: {}
"""
"""Every built-in method named, and three mistakes the planner refuses: a misspelt method, a misspelt setting, a
value out of range."""


def test_validate_reports_what_generate_refuses_in_the_methods_section(tmp_path, capsys):
    from storycast.cli.main import main

    story = tmp_path / "methods.yaml"
    story.write_text(METHODS_STORY, encoding="utf-8")
    assert main(["validate", str(story)]) == 1
    out = capsys.readouterr().out
    assert "methods.storydifusion: unknown method. Fix: rename it (did you mean 'storydiffusion'?)" in out
    assert "methods.identitystory.sweet_spot_stp: unknown setting. Fix: did you mean 'sweet_spot_step'?" in out
    assert "sa32" in out and out.count("error:") == 3
    assert main(["generate", str(story), "--preset", "tiny", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "storydifusion" in err and "sweet_spot_stp" in err and "sa32" in err  # generate: the same, all at once


def test_validate_with_a_method_runs_the_planner_s_checks_without_loading(tmp_path, capsys):
    from storycast.cli.main import main

    story = tmp_path / "nobody.yaml"
    story.write_text('title: t\nframes: ["a beach", "a hill"]\n', encoding="utf-8")
    assert main(["validate", str(story)]) == 0
    capsys.readouterr()
    assert main(["validate", str(story), "--method", "story2board"]) == 1
    assert "no character (or group of characters) is named by two frames" in capsys.readouterr().out


def test_every_builtin_method_is_described_without_importing_it_as_its_class_says():
    from storycast.methods.card import MethodAbout
    from storycast.methods.registry import builtin_methods, get_about, get_method, get_settings_class

    for name in builtin_methods():
        assert get_about(name) == MethodAbout.of(get_method(name)), name
        assert get_settings_class(name) is get_method(name).settings_class, name


@pytest.mark.parametrize(
    "command",
    [
        ["validate", str(EXAMPLES / "lighthouse.yaml")],
        ["validate", "{tmp}/methods.yaml"],  # every method's settings checked, still no torch
        ["methods"],
        ["methods", "storydiffusion"],  # its card and every setting
        ["methods", "--table"],
        ["convert", str(EXAMPLES / "lighthouse.yaml"), "--to", "storycast", "-o", "{tmp}/out.yaml"],
        ["identities", "--cache-dir", "{tmp}"],
        ["--help"],
        ["data", "--help"],
        ["train", "--help"],
    ],
    ids=lambda c: " ".join(c[:2]) if c[0] != "--help" else "help",
)
def test_a_light_command_imports_no_heavy_library(command, tmp_path):
    (tmp_path / "methods.yaml").write_text(METHODS_STORY, encoding="utf-8")
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []

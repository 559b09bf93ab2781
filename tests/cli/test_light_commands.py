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


@pytest.mark.parametrize(
    "command",
    [
        ["validate", str(EXAMPLES / "lighthouse.yaml")],
        ["convert", str(EXAMPLES / "lighthouse.yaml"), "--to", "storycast", "-o", "{tmp}/out.yaml"],
        ["identities", "--cache-dir", "{tmp}"],
        ["--help"],
        ["data", "--help"],
        ["train", "--help"],
    ],
    ids=lambda c: " ".join(c[:1]) if c[0] != "--help" else "help",
)
def test_a_light_command_imports_no_heavy_library(command, tmp_path):
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []

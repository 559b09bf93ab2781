"""storycast's packages are layered (pyproject.toml's import-linter contract): checked here too, so that the README's
test command catches an upward import or a cycle between packages as CI's ``lint-imports`` does.

Every package is named in the contract, on one line of a strict order, and packages on one line may not import each
other; so a cycle between packages (each imports the next, the last the first) always has an import that goes up or
sideways, which the contract refuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "storycast"
FRONT = {"__init__", "__main__"}
"""The package front may import anything; nothing inside storycast imports it."""


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    if found is None:
        pytest.skip(
            "import-linter is not installed (it comes with `pip install -e '.[dev]'`), so lint-imports cannot run"
        )
    return found


def _run(source: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with this checkout's contract over the storycast package in ``source`` (nothing cached)."""
    paths = [str(source), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [_lint_imports(), "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=900)


def _layers() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert config["root_package"] == "storycast" and contract["containers"] == ["storycast"]
    return contract["layers"]


def test_the_packages_are_layered():
    result = _run(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contract_names_every_package_once():
    named = [name.strip() for line in _layers() for name in line.split("|")]
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - FRONT
    assert sorted(named) == sorted(packages | modules)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("methods", "storycast.runs.plan"),  # runs imports methods: this closes a cycle
        ("errors", "storycast.utils.io"),  # utils imports errors: a cycle at the bottom
        ("identity", "storycast.masks.base"),  # sideways, between packages on one line
    ],
)
def test_an_import_up_or_sideways_breaks_the_contract(tmp_path, importer, imported):
    """One import added to a copy of the package (lazily, inside a function: those count too) breaks it."""
    _lint_imports()
    copy = tmp_path / "src" / "storycast"
    shutil.copytree(
        PACKAGE,
        copy,
        ignore=lambda folder, names: [n for n in names if Path(folder, n).is_file() and not n.endswith(".py")],
    )
    module = copy / importer / "__init__.py" if (copy / importer).is_dir() else copy / f"{importer}.py"
    module.write_text(
        module.read_text(encoding="utf-8") + f"\n\ndef _cycle():\n    import {imported}\n", encoding="utf-8"
    )
    result = _run(tmp_path / "src")
    assert result.returncode != 0 and f"storycast.{importer} is not allowed to import" in result.stdout, result.stdout

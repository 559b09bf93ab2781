"""``storycast train storynizor`` refuses, before any model loads, what it cannot run: out-of-range settings, a
config holding a 5,000-digit number, an init that is no checkpoint, fp16 on a CPU, a tracker that is not
installed, an --out that is a file; a damaged run folder is named with its fix. Each is one ``error:`` line with
exit status 2. A link to a folder as --out, and a garbage latest.json, are accepted."""

from __future__ import annotations

import json

import pytest

from storycast.cli.main import main
from storycast.training import loop
from tests.training.test_train_storynizor import data  # noqa: F401 - the module's data set fixture

BASE = ["train", "storynizor", "--preset", "tiny-sd15", "--no-progress", "--set", "resolution=64"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a model would load: every refusal here must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(loop, "_load_parts", refuse)


def one_error_line(capsys, *says):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in says:
        assert text in err, err


@pytest.mark.parametrize(
    ("assignment", "says"),
    [
        ("seed=-1", "seed must be between 0 and 18446744073709551615, got -1"),
        ("seed=" + "9" * 40, "seed must be between 0 and 18446744073709551615"),
        ("batch_size=1000000", "batch_size must be between 1 and 1024"),
        ("mixed_precision=fp16", "mixed_precision=fp16 needs a CUDA GPU"),
    ],
)
def test_settings_this_machine_cannot_run_are_refused_first(data, tmp_path, capsys, no_model_loads, assignment, says):  # noqa: F811
    args = [*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--set", assignment]
    assert main(args) == 2
    one_error_line(capsys, says)
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_data_set_is_refused(data, tmp_path, capsys, no_model_loads):  # noqa: F811
    args = [*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--set", "stage=1", "--set", "batch_size=100"]
    assert main(args) == 2
    one_error_line(capsys, "batch_size 100 is more than the 14 images", "Fix: --set batch_size=14")


def test_a_tracker_that_is_not_installed_is_refused(data, tmp_path, capsys, monkeypatch, no_model_loads):  # noqa: F811
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else found(name, *a))
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--set", "log_with=wandb"]) == 2
    one_error_line(capsys, "log_with=wandb needs the wandb package", "pip install wandb")


def test_a_config_with_a_5000_digit_number_is_refused(data, tmp_path, capsys, no_model_loads):  # noqa: F811
    config = tmp_path / "train.yaml"
    config.write_text("seed: " + "7" * 5000 + "\n")
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    one_error_line(capsys, f"--config {config} cannot be read", "4300 digits")
    config.write_text("seed: " + "7" * 200 + "\n")  # read, then refused: out of range, shown short
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    one_error_line(capsys, "seed must be between", "got a number of 200 digits.")
    config.write_text("learning_rate: " + "9" * 400 + "\n")  # a whole number too large for a float
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    one_error_line(capsys, "learning_rate: expected a finite number, got a number of 400 digits.")


@pytest.mark.parametrize(
    ("init", "says"),
    [
        ("passwd", "is not a checkpoint (neither safetensors nor a torch file)"),
        ("folder", "is a folder without storynizor.safetensors"),
        ("./nowhere/ckpt", "does not exist"),
        ("damaged.safetensors", "is a damaged safetensors file"),
    ],
)
def test_an_init_that_is_no_checkpoint_is_refused_naming_it(data, tmp_path, capsys, no_model_loads, init, says):  # noqa: F811
    if init == "passwd":
        init = str(tmp_path / "passwd")
        (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")  # what /etc/passwd holds
    elif init == "folder":
        init = str(tmp_path / "folder")
        (tmp_path / "folder").mkdir()
    elif init == "damaged.safetensors":
        init = str(tmp_path / init)
        (tmp_path / "damaged.safetensors").write_bytes((40).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "sha')
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "run"), "--set", f"init={init}"]) == 2
    one_error_line(capsys, f"init '{init}", says, "Fix: --set init=")


def test_an_out_that_is_a_file_or_a_dangling_link_is_refused(data, tmp_path, capsys, no_model_loads):  # noqa: F811
    (tmp_path / "file").write_text("mine")
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "file")]) == 2
    one_error_line(capsys, "is a file, not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert main([*BASE, "--data", str(data), "--out", str(tmp_path / "dangling")]) == 2
    one_error_line(capsys, "is a link to nothing")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_linked_out_trains_and_a_damaged_run_folder_is_named(data, tmp_path, capsys):  # noqa: F811
    """A link to a folder is where the run goes; a garbage latest.json (a pointer for people, never read) and a
    stray checkpoints/step-abc do not stop a resume; a garbage train_settings.json does, naming it."""
    real = tmp_path / "disk" / "run"
    real.mkdir(parents=True)
    link = tmp_path / "run"
    link.symlink_to(real, target_is_directory=True)
    args = [*BASE, "--data", str(data), "--out", str(link), "--set", "checkpoint_every=1"]
    assert main([*args, "--max-steps", "1"]) == 0
    assert (real / "storynizor.safetensors").is_file() and link.is_symlink()
    (real / "latest.json").write_text("{garbage")
    (real / "checkpoints" / "step-abc").mkdir()
    assert main([*args, "--max-steps", "2", "--resume"]) == 0
    assert json.loads((real / "latest.json").read_text())["step"] == 2
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (real / "checkpoints" / "step-000003").symlink_to(keep, target_is_directory=True)  # once rmtree's OSError
    assert main([*args, "--max-steps", "3", "--resume", str(real / "checkpoints" / "step-000002")]) == 0
    assert not (real / "checkpoints" / "step-000003").is_symlink() and (keep / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    for garbage in ("{not json", "[1, 2]", "1" * 5000):
        (real / "train_settings.json").write_text(garbage)
        assert main([*args, "--max-steps", "4", "--resume"]) == 2
        one_error_line(capsys, "train_settings.json is unusable", "Fix: start a new run elsewhere")

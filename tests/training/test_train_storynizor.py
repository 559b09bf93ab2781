"""Storynizor training on tiny models: a fixed batch is overfitted, a resumed run equals an uninterrupted one, two
gloo processes train in sync and write one checkpoint, the checkpoint drives `storycast generate`, and bad input
is refused with the file and the fix, losing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from storycast.models.spec import ModelSpec
from storycast.training.loop import TrainingError, checkpoint_dirs, train_storynizor
from storycast.training.settings import StorynizorTrainSettings

TINY = ModelSpec(source="tiny-sd15", device="cpu")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from storycast.data.build import build_dataset
    from tests.data.test_build import source

    folder = tmp_path_factory.mktemp("train")
    build_dataset(source.__wrapped__(folder), folder / "data", tiny=True)
    return folder / "data"


def settings(**values):
    base = {"resolution": "64", "checkpoint_every": "100", "perceptual_max_timestep": "1000"}
    return StorynizorTrainSettings.from_mapping({**base, **values}, where="test")


def test_a_stage_two_run_overfits_a_fixed_batch(data, tmp_path, monkeypatch):
    """The same group, noise, timestep and references every step: the loss must fall clearly."""
    from storycast.training import loop, storynizor

    fixed = storynizor.step_generator
    monkeypatch.setattr(storynizor, "step_generator", lambda seed, step, micro, process: fixed(seed, 0, 0, 0))
    monkeypatch.setattr(loop, "_pick", lambda items, count, *args: [items[0]] * count)
    run = settings(max_steps="20", learning_rate="0.01", drop_image="0", drop_text="0", drop_both="0")
    result = train_storynizor(data, tmp_path / "run", run, TINY)
    first, last = result.losses[0]["loss"], result.losses[-1]["loss"]
    assert set(result.losses[0]) == {"diffusion", "mask_alignment", "perceptual", "loss"}
    assert last < 0.6 * first, [round(r["loss"], 3) for r in result.losses]  # 1.45 -> ~0.8 in 20 steps


def trained_state(out):
    from safetensors.torch import load_file

    return load_file(str(checkpoint_dirs(out)[-1] / "trainable.safetensors"))


def test_a_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    whole = train_storynizor(data, tmp_path / "whole", settings(max_steps="6", checkpoint_every="3"), TINY)
    train_storynizor(data, tmp_path / "parts", settings(max_steps="3", checkpoint_every="3"), TINY)
    resumed = train_storynizor(
        data, tmp_path / "parts", settings(max_steps="6", checkpoint_every="3"), TINY, resume="latest"
    )
    assert [r["loss"] for r in resumed.losses] == pytest.approx([r["loss"] for r in whole.losses[3:]], rel=1e-5)
    a, b = trained_state(tmp_path / "whole"), trained_state(tmp_path / "parts")
    assert set(a) == set(b) and any("lora_" in k for k in a) and any(k.startswith("injector.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["ip-adapter-plus-face", "scratch"])
def test_stage_one_trains_the_injector_alone(data, tmp_path, init):
    run = settings(stage="1", batch_size="3", max_steps="2", init=init)
    result = train_storynizor(data, tmp_path / "s1", run, TINY)
    state = trained_state(tmp_path / "s1")
    assert result.steps == 2 and set(result.losses[0]) == {"diffusion", "loss"}
    assert all(key.startswith("injector.") for key in state)  # no LoRA in stage 1


def test_validation_frames_ema_and_the_tracker(data, tmp_path):
    from safetensors.torch import load_file

    run = settings(max_steps="2", validation_every="2", ema_decay="0.5", checkpoint_every="2", log_with="tensorboard")
    train_storynizor(data, tmp_path / "run", run, TINY)
    assert (tmp_path / "run" / "validation" / "step-000002.png").is_file()
    assert list((tmp_path / "run" / "storynizor").glob("events.out.tfevents.*"))  # the tracker's log
    checkpoint = checkpoint_dirs(tmp_path / "run")[-1]
    ema, live = load_file(str(checkpoint / "ema.safetensors")), load_file(str(checkpoint / "trainable.safetensors"))
    exported = load_file(str(tmp_path / "run" / "storynizor.safetensors"))
    key = next(k for k in ema if k.startswith("injector.resampler.latents"))
    assert not torch.equal(ema[key], live[key])  # the average lags the live weights
    torch.testing.assert_close(exported["resampler.latents"], ema[key])  # the export is the average


@pytest.mark.parametrize(("preset", "family"), [("tiny-sd15", "sd15"), ("tiny", "sdxl")])
def test_the_trained_checkpoint_drives_generate(data, tmp_path, preset, family):
    # SDXL trains with its added conditioning (pooled embedding and size ids), as it samples.
    import yaml

    from storycast.cli.main import main

    out = tmp_path / "ckpt"
    assert main(["train", "storynizor", "--data", str(data), "--out", str(out), "--preset", preset,
                 "--max-steps", "2", "--set", "resolution=64", "--no-progress"]) == 0  # fmt: skip
    config = json.loads((out / "storynizor.json").read_text())
    assert config["extra"]["lora"] == {"rank": 64, "alpha": 64.0} and config["family"] == family
    photo = tmp_path / "mara.png"
    from PIL import Image

    Image.new("RGB", (48, 48), (200, 40, 40)).save(photo)
    story = tmp_path / "story.yaml"
    story.write_text(
        yaml.safe_dump(
            {
                "title": "t",
                "characters": [
                    {"id": "mara", "description": "a woman", "class_word": "woman", "references": [str(photo)]}
                ],
                "frames": [{"text": "{mara} at sea"}, {"text": "{mara} at home"}],
            }
        )
    )
    run = tmp_path / "run"
    args = ["generate", str(story), "--method", "storynizor", "--preset", preset, "--out", str(run)]
    assert main([*args, "--set", f"weights={out}"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 2


def test_bad_input_is_refused_and_nothing_is_lost(data, tmp_path, capsys):
    from storycast.cli.main import main

    base = ["train", "storynizor", "--preset", "tiny-sd15", "--no-progress"]
    assert main([*base, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a storycast data set" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--out", str(tmp_path / "o"), "--set", "frames=9"]) == 2
    assert "no set of 9 images" in capsys.readouterr().err
    config = tmp_path / "train.yaml"
    config.write_text("learning_rat: 0.1\n")
    assert main([*base, "--data", str(data), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    out = tmp_path / "run"
    train_storynizor(data, out, settings(max_steps="1"), TINY)
    before = (out / "storynizor.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=r"already holds a training run.*--resume"):
        train_storynizor(data, out, settings(max_steps="1"), TINY)
    with pytest.raises(TrainingError, match=r"other settings \(lora_rank\)"):
        train_storynizor(data, out, settings(max_steps="2", lora_rank="4"), TINY, resume="latest")
    assert (out / "storynizor.safetensors").read_bytes() == before


class _RunsCode:
    """A pickled object whose loading would run code (what a crafted optimizer.pt can hold)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("crafted", "objects other than tensors"),
        ("truncated", "trainable.safetensors is unusable"),
        ("no-optimizer", "optimizer.pt is unusable (it is missing)"),
        ("garbage-state", "trainer_state.json is unusable"),
    ],
)
def test_a_crafted_or_damaged_checkpoint_is_refused_without_running_it(data, tmp_path, monkeypatch, damage, says):
    out = tmp_path / "run"
    train_storynizor(data, out, settings(max_steps="1", checkpoint_every="1"), TINY)
    checkpoint = checkpoint_dirs(out)[-1]
    if damage == "crafted":
        torch.save({"state": {}, "param_groups": [], "evil": _RunsCode()}, checkpoint / "optimizer.pt")
    elif damage == "truncated":
        weights = checkpoint / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no-optimizer":
        (checkpoint / "optimizer.pt").unlink()
    else:
        (checkpoint / "trainer_state.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingError, match="cannot resume from") as caught:
        train_storynizor(data, out, settings(max_steps="2", checkpoint_every="1"), TINY, resume="latest")
    assert says in str(caught.value) and "Fix:" in str(caught.value)
    assert not (tmp_path / "PWNED").exists()


def test_two_gloo_processes_train_in_sync_and_write_one_checkpoint(data, tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(worker), str(data), str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert digests[0]["state"] == digests[1]["state"]  # the trained weights are the same on both processes
    assert digests[0]["losses"] != digests[1]["losses"]  # each process trained on its own share of the data
    assert len(checkpoint_dirs(out)) == 1 and (out / "storynizor.safetensors").is_file()

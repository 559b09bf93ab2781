from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from storycast.errors import RunFolderError, StoryError
from storycast.methods.base import ProgressEvent
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import load_story
from tests.helpers import small_story_data

GEN = {"width": 64, "height": 64, "steps": 2}


def run(story, models, out, **kwargs):
    generation = {**GEN, **kwargs.pop("generation", {})}
    return generate_story(story, "vanilla", models, RunOptions(out_dir=out, **kwargs), generation=generation)


def load_pixels(path):
    return np.asarray(Image.open(path))


def test_run_writes_frames_storyboard_and_manifest(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(3)))
    result = run(story, tiny_sdxl, tmp_path / "run")
    assert result.drawn == [0, 1, 2] and result.kept == []
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["status"] == "complete"
    assert manifest["method"] == {"name": "vanilla", "settings": {}}
    assert manifest["generation"]["steps"] == 2 and manifest["model"]["family"] == "sdxl"
    assert manifest["environment"]["packages"]["diffusers"]
    assert [f["seed"] for f in manifest["frames"]] == [3, 4, 5]
    assert manifest["frames"][0]["prompt"] == story.prompt(0)
    for path in result.frame_paths:
        assert Image.open(path).size == (64, 64)
    assert Image.open(result.storyboard_path).width > 3 * 64
    assert (tmp_path / "run" / "story.yaml").is_file()
    assert not list((tmp_path / "run").rglob("*.part"))


def test_rerun_skips_finished_frames_and_overwrite_redraws(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(2)))
    run(story, tiny_sdxl, tmp_path / "run")
    again = run(story, tiny_sdxl, tmp_path / "run")
    assert again.drawn == [] and again.kept == [0, 1]
    redrawn = run(story, tiny_sdxl, tmp_path / "run", overwrite=True)
    assert redrawn.drawn == [0, 1]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(4)))
    reference = run(story, tiny_sdxl, tmp_path / "reference")

    def stop_after_two_frames(event: ProgressEvent) -> None:
        if event.stage == "frames" and event.completed == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        generate_story(
            story, "vanilla", tiny_sdxl, RunOptions(out_dir=out), generation=GEN, progress=stop_after_two_frames
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [f is not None for f in manifest["frames"]] == [True, True, False, False]
    first_frame_mtime = (out / "frames/frame_000.png").stat().st_mtime_ns

    resumed = run(story, tiny_sdxl, out)
    assert resumed.drawn == [2, 3] and resumed.kept == [0, 1]
    assert (out / "frames/frame_000.png").stat().st_mtime_ns == first_frame_mtime
    for mine, theirs in zip(resumed.frame_paths, reference.frame_paths, strict=True):
        assert np.array_equal(load_pixels(mine), load_pixels(theirs))


def test_deleted_frame_is_redrawn(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(3)))
    run(story, tiny_sdxl, tmp_path / "run")
    (tmp_path / "run/frames/frame_001.png").unlink()
    assert run(story, tiny_sdxl, tmp_path / "run").drawn == [1]


def test_edited_frame_is_redrawn_alone(tiny_sdxl, write_story, tmp_path):
    data = small_story_data(3)
    run(load_story(write_story(data)), tiny_sdxl, tmp_path / "run")
    data["frames"][2]["text"] = "{mara} on a boat"
    edited = run(load_story(write_story(data)), tiny_sdxl, tmp_path / "run")
    assert edited.drawn == [2]


def test_batches_are_resumed_as_groups(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(4)))
    run(story, tiny_sdxl, tmp_path / "run", generation={"batch_size": 2})
    (tmp_path / "run/frames/frame_003.png").unlink()
    assert run(story, tiny_sdxl, tmp_path / "run", generation={"batch_size": 2}).drawn == [2, 3]


def test_a_run_of_other_settings_is_never_overwritten_silently(tiny_sdxl, write_story, tmp_path):
    story = load_story(write_story(small_story_data(2)))
    run(story, tiny_sdxl, tmp_path / "run")
    before = load_pixels(tmp_path / "run/frames/frame_000.png")
    with pytest.raises(RunFolderError, match="generation settings") as info:
        run(story, tiny_sdxl, tmp_path / "run", generation={"steps": 3})
    assert "--overwrite" in str(info.value)
    assert np.array_equal(load_pixels(tmp_path / "run/frames/frame_000.png"), before)
    assert run(story, tiny_sdxl, tmp_path / "run", generation={"steps": 3}, overwrite=True).drawn == [0, 1]


def test_method_settings_from_the_story_file_are_validated(tiny_sdxl, write_story, tmp_path):
    data = small_story_data(1)
    data["methods"] = {"vanilla": {"strength": 2}}
    story = load_story(write_story(data))
    # A problem of the story file (with its others, before anything loads), so a StoryError naming the field.
    with pytest.raises(StoryError, match=r"methods\.vanilla\.strength: unknown setting"):
        run(story, tiny_sdxl, tmp_path / "run")


def test_benchmark_story_runs(tiny_sdxl, tmp_path):
    from tests.helpers import write_benchmark_file

    story = load_story(write_benchmark_file(tmp_path / "story_000.json", "multi-2", frames=10))
    result = run(story, tiny_sdxl, tmp_path / "run", generation={"batch_size": 5, "steps": 1})
    assert len(result.frame_paths) == 10


def test_a_lora_makes_another_run(tiny_sdxl, write_story, tmp_path):
    import dataclasses

    story = load_story(write_story(small_story_data(1)))
    run(story, tiny_sdxl, tmp_path / "run")
    styled = dataclasses.replace(
        tiny_sdxl, info={**tiny_sdxl.info, "loras": [{"name": "lora_0", "source": "s", "scale": 1.0}]}
    )
    with pytest.raises(RunFolderError, match="model"):
        run(story, styled, tmp_path / "run")

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from storycast.errors import SettingsError
from storycast.methods.base import ProgressEvent
from storycast.models.loading import models_from_pipeline
from storycast.models.spec import ModelSpec
from storycast.models.tiny import tiny_pipeline
from storycast.runs.draw import draw
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import load_story, parse_story
from tests.helpers import REPO_ROOT, raised_by_storycast, small_story_data
from tests.models.test_loading_pipeline import library_warnings

GEN = {"width": 64, "height": 64, "steps": 2}


def pixels(image):
    return np.asarray(image.convert("RGB"))


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_draw_gives_the_frames_a_run_folder_holds_and_writes_nothing(tiny_sdxl, write_story, tmp_path, monkeypatch):
    path = write_story({**small_story_data(3), "settings": {"steps": 2, "seed": 3, "batch_size": 2}})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = files_under(tmp_path)
    drawn = draw(path, "vanilla", tiny_sdxl, generation=GEN)
    assert files_under(tmp_path) == before

    run = generate_story(load_story(path), "vanilla", tiny_sdxl, RunOptions(out_dir=tmp_path / "run"), generation=GEN)
    manifest = json.loads(run.manifest_path.read_text())
    assert [f.index for f in drawn.frames] == [0, 1, 2] and [f.seed for f in drawn.frames] == [3, 4, 5]
    for frame, frame_path in zip(drawn.frames, run.frame_paths, strict=True):
        assert np.array_equal(pixels(frame.image), pixels(Image.open(frame_path)))
    for mine, theirs in zip(drawn.records, manifest["frames"], strict=True):
        ignored = ("file", "extras", "drawn", "seconds")
        assert {k: v for k, v in mine.items() if k not in ignored} == {
            k: v for k, v in theirs.items() if k not in ignored
        }
    assert drawn.records[2]["group"] == [2] and drawn.plan.run_key == manifest["run_key"]
    assert np.array_equal(pixels(drawn.storyboard()), pixels(Image.open(run.storyboard_path)))
    assert drawn.loaded_models is tiny_sdxl and set(drawn.timings) == {"prepare_s", "generate_s"}


def test_draw_takes_a_story_dict_a_spec_overrides_and_a_progress_callback(tiny_sdxl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events: list[ProgressEvent] = []
    drawn = draw(
        small_story_data(2), "vanilla", ModelSpec(source="tiny", device="cpu"), generation=GEN, progress=events.append
    )
    assert [(e.completed, e.total) for e in events if e.stage == "frames"] == [(0, 2), (1, 2), (2, 2)]
    assert [e.completed for e in events if e.stage == "denoise"] == [0, 1, 2] * 2
    assert drawn.loaded_models is not tiny_sdxl and "load_s" in drawn.timings
    again = draw(parse_story(small_story_data(2)), "vanilla", tiny_sdxl, generation={**GEN, "seed": 3})
    assert [pixels(i).tolist() for i in again.images] == [pixels(i).tolist() for i in drawn.images]
    assert drawn.images[0].size == (64, 64)
    other = draw(parse_story(small_story_data(1)), "vanilla", tiny_sdxl, generation={**GEN, "seed": 4})
    assert not np.array_equal(pixels(other.images[0]), pixels(drawn.images[0]))
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_fail_before_drawing(tiny_sdxl):
    story = small_story_data(1)
    with pytest.raises(SettingsError, match=r"method_settings\.nope: unknown setting"):
        draw(story, "vanilla", tiny_sdxl, method_settings={"nope": 1})
    with pytest.raises(SettingsError, match="unknown generation setting"):
        draw(story, "vanilla", tiny_sdxl, generation={"sizes": 3})
    with pytest.raises(TypeError, match=r"models_from_pipeline\(pipe\)"):
        draw(story, "vanilla", tiny_sdxl.pipeline)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_a_user_pipeline_drives_draw_like_the_tiny_preset(family, request):
    preset = request.getfixturevalue("tiny_sdxl" if family == "sdxl" else "tiny_sd15")
    # A user pipeline is not a preset, so its defaults are the family's: pin what the tiny preset's fix.
    generation = {**GEN, "guidance_scale": 5.0}
    story = small_story_data(2)
    mine = draw(story, "vanilla", models_from_pipeline(tiny_pipeline(family)), generation=generation)
    theirs = draw(story, "vanilla", preset, generation=generation)
    assert mine.plan.model.identity["source"] == "pipeline"
    for a, b in zip(mine.images, theirs.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))


def readme_blocks(section: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_a_warning_is_ours_by_the_package_folder_not_by_a_name_in_its_path(tmp_path):
    import storycast

    # The README's layout: a clone named "storycast" with its virtual environment inside.
    library = tmp_path / "storycast" / ".venv" / "lib" / "python3.11" / "site-packages" / "diffusers" / "utils.py"
    assert not raised_by_storycast(str(library))
    assert raised_by_storycast(str(Path(storycast.__file__).parent / "runs" / "draw.py"))


def test_readme_python_snippets_run_without_warnings(tmp_path, monkeypatch, capsys):
    # Import-time messages of the libraries (a missing optional package, such as torchvision) are not ours.
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    offline = [block for block in readme_blocks("From Python") if 'ModelSpec(source="tiny")' in block]
    assert len(offline) >= 2
    monkeypatch.chdir(tmp_path)
    # The README's story path, holding a short story so the snippets run in seconds.
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples/lighthouse.yaml").write_text(yaml.safe_dump(small_story_data(2)), encoding="utf-8")
    with library_warnings("storycast", "transformers") as logged, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for block in offline:
            exec(compile(block, "README.md", "exec"), {})
    assert [r.getMessage() for r in logged] == []
    ours = [w for w in caught if raised_by_storycast(w.filename)]
    assert [str(w.message) for w in caught if "float32" in str(w.message)] + [str(w.message) for w in ours] == []
    assert (tmp_path / "runs/demo/storyboard.png").is_file()
    assert "storyboard.png" in capsys.readouterr().out

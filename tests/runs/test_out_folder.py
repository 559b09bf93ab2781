"""The --out folder: a run never overwrites a file it did not write (the user's story file, another tool's
manifest), an --out that is a file or below one is a clear error, and temporary files a killed run left behind
are cleaned by the next run."""

from __future__ import annotations

import json

import pytest
import yaml

from storycast.cli.main import main
from tests.helpers import small_story_data


@pytest.fixture
def story_in(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    path = folder / "story.yaml"
    path.write_text("# my notes, which a run must not erase\n" + yaml.safe_dump(small_story_data(2)))
    return path


def generate(story, out, *extra):
    return main(["generate", str(story), "--preset", "tiny", "--steps", "1", "--out", str(out), *extra])


def test_the_users_story_file_is_never_replaced_by_the_runs_copy(story_in, capsys):
    before = story_in.read_text()
    assert generate(story_in, story_in.parent) == 2
    assert "would replace your story file" in capsys.readouterr().err
    assert generate(story_in, story_in.parent, "--overwrite") == 2  # not even with --overwrite
    assert story_in.read_text() == before and not (story_in.parent / "manifest.json").exists()


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"hello": "world"}', "not json at all"])
def test_another_tools_manifest_is_refused_unless_overwrite(story_in, tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    assert generate(story_in, out) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "manifest.json").read_text() == content
    assert generate(story_in, out, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_a_story_file_no_run_wrote_is_refused_unless_overwrite(story_in, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "story.yaml").write_text("# someone's own story\n")
    assert generate(story_in, out) == 2
    assert "that no storycast run wrote" in capsys.readouterr().err
    assert generate(story_in, out, "--overwrite") == 0


def test_an_out_that_is_a_file_or_below_one_is_a_clear_error(story_in, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert generate(story_in, a_file) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert generate(story_in, a_file / "run") == 2
    assert "which is a file" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"


def test_temporary_files_of_a_killed_run_are_cleaned_by_the_next(story_in, tmp_path):
    out = tmp_path / "out"
    assert generate(story_in, out) == 0
    stale = [out / ".manifest.json.abc123.part", out / "frames" / ".frame_000.png.xyz.part"]
    for path in stale:
        path.write_bytes(b"half written")
    assert generate(story_in, out) == 0  # the same run again: nothing to draw, the leftovers removed
    assert not any(path.exists() for path in stale)


def test_an_interrupt_while_the_storyboard_is_written_marks_the_run_interrupted(story_in, tmp_path, monkeypatch):
    import storycast.runs.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_storyboard", interrupted)
    out = tmp_path / "out"
    assert generate(story_in, out) == 130  # the CLI's clean "interrupted; run it again" exit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and all(manifest["frames"])  # the drawn frames are kept


def test_a_long_story_does_not_rewrite_its_manifest_after_every_frame(tmp_path, monkeypatch):
    from PIL import Image

    import storycast.runs.runner as runner
    from storycast.methods.base import FrameResult, StoryMethod
    from storycast.runs.runner import RunOptions, generate_story
    from storycast.story.parse import parse_story

    class Instant(StoryMethod):
        """Draws a flat grey image instantly: the runner's bookkeeping is what is measured."""

        name = "instant"

        def generate(self, story, group, context):
            return [FrameResult(i, Image.new("RGB", (8, 8), "grey"), story.frame_seed(i)) for i in group]

    writes = []
    original = runner.atomic_write_json
    monkeypatch.setattr(runner, "atomic_write_json", lambda path, data: (writes.append(path), original(path, data)))
    monkeypatch.setattr(runner, "MANIFEST_INTERVAL_S", 3600.0)  # a run shorter than the interval
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    models = load_models(ModelSpec(source="tiny", device="cpu"))
    long = parse_story(small_story_data(600))
    generate_story(long, Instant(models), models, RunOptions(out_dir=tmp_path / "long", storyboard=False))
    assert len(writes) == 2  # the start and the end: not one write per frame
    manifest = json.loads((tmp_path / "long" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and all(manifest["frames"])
    writes.clear()
    short = parse_story(small_story_data(5))
    generate_story(short, Instant(models), models, RunOptions(out_dir=tmp_path / "short", storyboard=False))
    assert len(writes) == 5 + 2  # short stories: after every frame, plus the start and the end


def test_absurd_batch_sizes_are_refused_up_front(story_in, capsys):
    assert main(["generate", str(story_in), "--preset", "tiny", "--out", str(story_in.parent / "o"),
                 "--batch-size", "10000"]) == 2  # fmt: skip
    assert "batch_size 10000 (from the command line) is out of range" in capsys.readouterr().err

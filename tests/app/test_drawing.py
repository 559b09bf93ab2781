"""Drawing in the app: the CLI's run folders, frames appearing as they are drawn, one frame redrawn, a drawing
stopped and resumed, exports, and what an evaluated run shows."""

from __future__ import annotations

import json
import threading
import zipfile

import pytest

from storycast.app.drawing import Drawer, export_download, frame_table, run_document, run_view
from storycast.app.folders import AppFolders, AppRequestError
from storycast.app.story_form import CharacterFields, StoryFields, build_document, check_document, set_frame
from storycast.cli.main import main
from storycast.evaluation.runfolders import run_status


@pytest.fixture
def folders(tmp_path):
    return AppFolders.create(tmp_path / "app")


@pytest.fixture
def drawer(folders, tiny_sdxl, tmp_path):
    drawer = Drawer(folders, cache_dir=tmp_path / "cache", device="cpu")
    drawer.keep(tiny_sdxl)
    return drawer


def _doc(frames: int = 2) -> dict:
    lines = ["{mara} reading a book", "{mara} walking a dog", "{mara} asleep", "a quiet street"][:frames]
    return build_document(
        StoryFields(
            title="App story",
            characters=[CharacterFields(id="mara", description="a young woman with red hair", class_word="woman")],
            frames="\n".join(lines),
            settings={"width": "64", "height": "64", "steps": "2"},
        )
    )


def _manifest(folders, run):
    return json.loads((folders.run_dir(run) / "manifest.json").read_text(encoding="utf-8"))


def test_a_drawing_is_a_run_folder_whose_frames_appear_as_they_are_drawn(folders, drawer):
    updates = list(drawer.draw(check_document(_doc(), folders), "vanilla", "tiny"))
    first, last = updates[0], updates[-1]
    assert "drawing frame(s) 1, 2 of 2" in first.status and not first.finished
    assert [len(u.frames) for u in updates if not u.finished][-1] >= 1  # a frame shown before the end
    assert any(len(u.frames) == 1 for u in updates)
    assert last.finished and not last.failed and last.drawn == [0, 1] and len(last.frames) == 2
    run_dir = folders.run_dir(last.run)
    assert run_status(run_dir) is None  # what `storycast evaluate` scores
    manifest = _manifest(folders, last.run)
    assert manifest["command"] == "storycast app" and manifest["model"]["source"] == "tiny"
    assert (run_dir / "storyboard.png").is_file()
    assert [row[2] for row in frame_table(check_document(_doc(), folders), run_dir)] == ["drawn", "drawn"]


def test_redrawing_one_frame_keeps_the_other(folders, drawer):
    doc = _doc()
    *_, first = drawer.draw(check_document(doc, folders), "vanilla", "tiny")
    before = _manifest(folders, first.run)["frames"]
    frame0 = (folders.run_dir(first.run) / "frames" / "frame_000.png").read_bytes()
    *_, again = drawer.draw(check_document(set_frame(doc, 2, seed=123), folders), "vanilla", "tiny", run=first.run)
    assert again.run == first.run and again.drawn == [1] and again.kept == [0]
    after = _manifest(folders, first.run)["frames"]
    assert after[0] == before[0] and (folders.run_dir(first.run) / "frames" / "frame_000.png").read_bytes() == frame0
    assert after[1]["seed"] == 123 and before[1]["seed"] != 123


def test_other_settings_start_a_new_run_and_say_so(folders, drawer):
    story = check_document(_doc(1), folders)
    *_, first = drawer.draw(story, "vanilla", "tiny")
    changed = check_document({**_doc(1), "settings": {"width": 64, "height": 64, "steps": 3}}, folders)
    *_, other = drawer.draw(changed, "vanilla", "tiny", run=first.run)
    assert other.run != first.run and f"run {first.run} was drawn with other generation settings" in other.status
    assert _manifest(folders, first.run)["generation"]["steps"] == 2  # the first run is untouched


def test_a_stopped_drawing_keeps_its_frames_and_resumes(folders, drawer):
    story = check_document(_doc(3), folders)
    stop = threading.Event()
    updates = []
    for update in drawer.draw(story, "vanilla", "tiny", stop=stop):
        updates.append(update)
        if len(update.frames) >= 1:
            stop.set()
    last = updates[-1]
    assert last.failed and "stopped" in last.status
    manifest = _manifest(folders, last.run)
    assert manifest["status"] == "interrupted"
    kept = [r for r in manifest["frames"] if r]
    assert 1 <= len(kept) < 3
    *_, resumed = drawer.draw(story, "vanilla", "tiny", run=last.run)
    assert resumed.kept == [r["index"] for r in kept] and len(resumed.drawn) == 3 - len(kept)
    assert _manifest(folders, last.run)["status"] == "complete"


def test_bad_requests_fail_before_anything_is_drawn(folders, drawer):
    story = check_document(_doc(1), folders)
    with pytest.raises(AppRequestError, match="unknown model preset"):
        next(drawer.draw(story, "vanilla", "../../sdxl"))
    with pytest.raises(AppRequestError, match="not a run name"):
        next(drawer.draw(story, "vanilla", "tiny", run="../../etc"))
    with pytest.raises(Exception, match="did you mean 'vanilla'"):
        next(drawer.draw(story, "vanila", "tiny"))
    assert folders.run_names() == []


def test_exports_and_the_evaluation_s_pictures(folders, drawer):
    *_, done = drawer.draw(check_document(_doc(), folders), "vanilla", "tiny")
    run_dir = folders.run_dir(done.run)
    pdf = export_download(run_dir, "pdf", "comic", folders)
    assert pdf == run_dir / "exports" / "comic.pdf" and pdf.read_bytes().startswith(b"%PDF")
    pages = export_download(run_dir, "png", "grid", folders)
    assert pages.parent == folders.downloads
    with zipfile.ZipFile(pages) as archive:
        assert archive.namelist() and all(n.startswith("grid-png/page_") for n in archive.namelist())
    shown = run_view(run_dir)
    assert shown.pictures == [] and shown.scores == "" and shown.storyboard == run_dir / "storyboard.png"
    # `storycast evaluate` scores the app's run folder as any other; the app then shows what it wrote.
    assert main(["evaluate", "--preset", "tiny", "--no-progress", str(run_dir)]) == 0
    shown = run_view(run_dir)
    assert [n for _, n in shown.pictures] == ["scores.png", "results.png"]
    assert all(path.is_file() for path, _ in shown.pictures) and "CLIP-T" in shown.scores
    doc, manifest, notes = run_document(run_dir, folders)
    assert check_document(doc, folders).title == "App story" and manifest["method"]["name"] == "vanilla"
    assert notes == []

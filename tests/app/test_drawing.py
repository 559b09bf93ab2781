"""Drawing in the app: the CLI's run folders, frames appearing as they are drawn, one frame redrawn, a drawing
stopped and resumed, exports, and what an evaluated run shows."""

from __future__ import annotations

import json
import threading
import zipfile

import pytest

from storycast.app.drawing import (
    Drawer,
    comic_preview,
    export_download,
    frame_table,
    readiness,
    run_document,
    run_view,
    shown_frame,
)
from storycast.app.folders import AppFolders, AppRequestError
from storycast.app.story_form import CharacterFields, StoryFields, build_document, check_document, set_frame
from storycast.cli.main import main
from storycast.errors import ExportError, StorycastError
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
    # A click on the gallery's second frame picks frame 2 (its manifest record), what Redraw then redraws.
    assert shown_frame(folders.run_dir(first.run), 1) == after[1]
    with pytest.raises(AppRequestError, match="none at position 3"):
        shown_frame(folders.run_dir(first.run), 2)


def test_other_settings_start_a_new_run_and_say_so(folders, drawer):
    story = check_document(_doc(1), folders)
    *_, first = drawer.draw(story, "vanilla", "tiny")
    changed = check_document({**_doc(1), "settings": {"width": 64, "height": 64, "steps": 3}}, folders)
    *_, other = drawer.draw(changed, "vanilla", "tiny", run=first.run)
    assert other.run != first.run and f"run {first.run} was drawn with other generation settings" in other.status
    assert _manifest(folders, first.run)["generation"]["steps"] == 2  # the first run is untouched


def test_an_unfinished_run_has_no_comic_preview(folders, drawer):
    story = check_document(_doc(2), folders)
    stop = threading.Event()
    for update in drawer.draw(story, "vanilla", "tiny", stop=stop):
        if update.frames:
            stop.set()
    with pytest.raises(ExportError):
        comic_preview(folders.run_dir(update.run))


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


def test_closing_a_drawing_stops_it_even_while_no_step_ends(folders, drawer):
    """A server closes the drawing's iterator when its client has gone; the drawing yields at least every
    HEARTBEAT_S seconds (here while its model would load), so the close comes, and the worker stops."""
    story = check_document(_doc(2), folders)
    held, release, finished = threading.Event(), threading.Event(), threading.Event()
    execute = drawer._execute

    def slow_start(plan, spec, out_dir, progress):
        held.set()
        release.wait(timeout=600)  # a ceiling: released when the iterator is closed
        try:
            return execute(plan, spec, out_dir, progress)
        finally:
            finished.set()

    drawer._execute = slow_start
    stop = threading.Event()
    updates = drawer.draw(story, "vanilla", "tiny", stop=stop)
    try:
        assert "drawing frame(s) 1, 2" in next(updates).status
        beat = next(updates)  # the worker starts, and is held: no progress event comes, this is the heartbeat
        assert held.wait(timeout=600)
        assert not beat.finished and beat.status.startswith("drawing into run") and not stop.is_set()
        updates.close()
        assert stop.is_set()
    finally:
        release.set()
    assert finished.wait(timeout=600)
    manifest = _manifest(folders, beat.run)
    assert manifest["status"] == "interrupted" and not any(manifest["frames"])
    # The slot is free: the next drawing gets the device and resumes the run.
    drawer._execute = execute
    *_, resumed = drawer.draw(story, "vanilla", "tiny", run=beat.run)
    assert resumed.drawn == [0, 1] and _manifest(folders, beat.run)["status"] == "complete"


def test_a_story_over_the_frame_cap_is_refused_before_anything_is_drawn(folders, tiny_sdxl):
    drawer = Drawer(folders, device="cpu", max_frames=3)
    drawer.keep(tiny_sdxl)
    long_story = check_document(_doc(4), folders)
    with pytest.raises(
        AppRequestError, match=r"the story has 4 frames; this app draws at most 3 \(its --max-frames\)"
    ):
        next(drawer.draw(long_story, "vanilla", "tiny"))
    with pytest.raises(AppRequestError, match="--max-frames 4"):
        drawer.plan(long_story, "vanilla", "tiny", None, None)
    assert folders.run_names() == [] and not any(folders.runs.iterdir())
    *_, done = drawer.draw(check_document(_doc(3), folders), "vanilla", "tiny")
    assert done.drawn == [0, 1, 2]


def test_the_story_is_checked_against_the_method_without_a_model(folders, monkeypatch):
    """What the page says as the story is written: the planner's refusals, or what Draw would draw; nothing is
    loaded (loading is made to fail) and nothing is written."""
    import storycast.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_models", no_loading)
    drawer = Drawer(folders, device="cpu")
    doc = _doc(2)
    doc["characters"].append({"id": "nina", "description": "a girl with a kite", "class_word": "girl"})
    doc["frames"] = ["{mara} and {nina} by the sea", "{mara} reading a book"]
    story = check_document(doc, folders)
    with pytest.raises(StorycastError, match="'nina' appears alone in 0 frame"):
        drawer.plan(story, "storydiffusion", "tiny", None, None)
    said = readiness(*drawer.plan(story, "storydiffusion", "tiny", {"identity_frames": "portraits"}, None), None)
    assert said == "ready: Draw draws every frame of 2 with storydiffusion into a new run"
    assert not any(folders.runs.iterdir())


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
    # The comic preview is the export's comic layout, page for page, at the preview's resolution.
    (page,) = comic_preview(run_dir)
    assert page.size == (496, 702) and len(set(page.convert("L").getdata())) > 16  # an A4 page at 60 DPI, drawn
    # `storycast evaluate` scores the app's run folder as any other; the app then shows what it wrote.
    assert main(["evaluate", "--preset", "tiny", "--no-progress", str(run_dir)]) == 0
    shown = run_view(run_dir)
    assert [n for _, n in shown.pictures] == ["scores.png", "results.png"]
    assert all(path.is_file() for path, _ in shown.pictures) and "CLIP-T" in shown.scores
    doc, manifest, notes = run_document(run_dir, folders)
    assert check_document(doc, folders).title == "App story" and manifest["method"]["name"] == "vanilla"
    assert notes == []

"""The app's folder: run names and paths stay inside the root, uploads are checked and renamed."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from storycast.app.folders import (
    AppFolders,
    AppRequestError,
    new_run_name,
    store_photo,
    store_story_file,
    zip_run,
)


@pytest.fixture
def folders(tmp_path):
    return AppFolders.create(tmp_path / "app")


def _photo(path: Path, size=(16, 16), fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "red").save(path, format=fmt)
    return path


@pytest.mark.parametrize(
    "name", ["../outside", "..", "a/../../b", "/etc", "runs/../../x", "", ".hidden", "a b", "x" * 200, "a\0b"]
)
def test_run_names_that_leave_the_root_or_are_not_names_are_refused(folders, name):
    with pytest.raises(AppRequestError, match="not a run name"):
        folders.run_dir(name)


def test_a_link_inside_the_runs_folder_that_points_outside_is_refused(folders, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folders.runs / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(AppRequestError, match="outside the app's folder"):
        folders.run_dir("sneaky")


def test_a_run_name_resolves_inside_the_runs_folder(folders):
    path = folders.run_dir("story-vanilla-20250101-000000-abcd")
    assert path.parent == folders.runs.resolve()


def test_new_run_names_are_valid_and_distinct(folders):
    names = {new_run_name("The Lighthouse: part 1/2", "story-adapter") for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.startswith("the-lighthouse-part-1-2-story-adapter-")
        folders.run_dir(name)  # accepted
    assert new_run_name("../../", "vanilla").startswith("story-vanilla-")


def test_a_photo_is_kept_under_a_new_name_whatever_the_client_called_it(folders, tmp_path):
    source = _photo(tmp_path / "gradio" / "..%2F..%2Fevil.png")
    stored = store_photo(source, folders, max_bytes=1 << 20, sources=(tmp_path / "gradio",))
    assert stored.parent == folders.uploads
    assert stored.suffix == ".png" and "evil" not in stored.name
    assert stored.read_bytes() == source.read_bytes()
    assert folders.is_upload(stored)


def test_a_photo_is_typed_by_its_content_not_its_name(folders, tmp_path):
    stored = store_photo(_photo(tmp_path / "photo.png", fmt="JPEG"), folders, max_bytes=1 << 20)
    assert stored.suffix == ".jpg"


def test_an_oversized_photo_is_refused_and_nothing_is_kept(folders, tmp_path):
    source = _photo(tmp_path / "big.png", size=(256, 256))
    with pytest.raises(AppRequestError, match="over the app's limit"):
        store_photo(source, folders, max_bytes=100)
    assert list(folders.uploads.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"#!/bin/sh\nrm -rf /\n", "not an image"), (b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"0" * 64, "cannot be read")],
)
def test_a_file_that_is_not_a_good_photo_is_refused(folders, tmp_path, content, message):
    source = tmp_path / "photo.png"
    source.write_bytes(content)
    with pytest.raises(AppRequestError, match=message):
        store_photo(source, folders, max_bytes=1 << 20)
    assert list(folders.uploads.iterdir()) == []


def test_an_upload_from_outside_the_upload_folders_is_refused(folders, tmp_path):
    source = _photo(tmp_path / "private" / "photo.png")
    with pytest.raises(AppRequestError, match="not a file the app received"):
        store_photo(source, folders, max_bytes=1 << 20, sources=(tmp_path / "gradio",))


def test_story_files_must_be_yaml_or_json_and_small(folders, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("title: t\nframes: [a]\n", encoding="utf-8")
    stored = store_story_file(story, folders, max_bytes=1 << 10)
    assert stored.parent == folders.uploads and stored.suffix == ".yaml"
    assert store_story_file(story, folders, max_bytes=1 << 10, name="s.JSON").suffix == ".json"
    for name in ("story.py", "story", "story.yaml.exe"):
        with pytest.raises(AppRequestError, match="YAML or JSON"):
            store_story_file(story, folders, max_bytes=1 << 10, name=name)
    with pytest.raises(AppRequestError, match="over the app's limit"):
        store_story_file(story, folders, max_bytes=8)


def test_is_upload_only_for_files_in_the_uploads_folder(folders, tmp_path):
    inside = _photo(folders.uploads / "a.png")
    assert folders.is_upload(inside)
    assert not folders.is_upload(folders.uploads / ".." / "runs")
    assert not folders.is_upload(_photo(tmp_path / "b.png"))
    link = folders.uploads / "link.png"
    link.symlink_to(tmp_path / "b.png")
    assert not folders.is_upload(link)


def test_a_run_archive_holds_the_run_without_temporary_files(folders):
    run = folders.run_dir("demo")
    (run / "frames").mkdir(parents=True)
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    (run / "frames" / "frame_000.png").write_bytes(b"png")
    (run / "frames" / ".frame_001.png.x.part").write_bytes(b"half")
    (run / ".workers").mkdir()
    (run / ".workers" / "0.json").write_text("{}", encoding="utf-8")
    os.symlink("/etc/passwd", run / "passwd")
    archive = zip_run(run, folders)
    assert archive.parent == folders.downloads
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["demo/frames/frame_000.png", "demo/manifest.json"]

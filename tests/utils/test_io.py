from __future__ import annotations

import pytest

from storycast.utils.io import atomic_directory, atomic_write_text


def test_atomic_directory_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "pack"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("stopped halfway")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]  # no staging folder left


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "note.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["note.txt"]

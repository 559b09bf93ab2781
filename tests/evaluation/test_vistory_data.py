"""``storycast download vistorybench``: ViStoryBench's stories from a local copy (either layout) or the Hub at one
commit (the Hub replaced by a fixture), checked, recorded, resumable, and found by ``storycast benchmark``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from storycast.cli.main import main
from storycast.errors import SettingsError
from storycast.evaluation import benchmark as B
from storycast.evaluation import vistory_data as V
from storycast.evaluation.bench_data import BenchDataError
from tests.story.vistory_fixture import write_vistory

STORIES = ("01", "02")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_copy(tmp_path):
    """The dataset as the Hub holds it: the card and .gitattributes at the top, the stories in ViStoryBench/."""
    root = tmp_path / "dataset"
    write_vistory(root / V.HUB_FOLDER)
    (root / "README.md").write_text("---\nlicense: mit\n---\n", encoding="utf-8")
    (root / ".gitattributes").write_text("*.png filter=lfs\n", encoding="utf-8")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(B.BENCH_ENV, raising=False)
    monkeypatch.setattr(V, "STORIES", STORIES)
    return tmp_path / "cache"


@pytest.fixture
def hub(hub_copy, monkeypatch):
    """huggingface_hub serving ``hub_copy`` at COMMIT; every call recorded, its repository and revision checked."""
    calls = []

    def dataset_info(self, repo_id, *, revision=None, **kwargs):
        calls.append(("info", revision))
        assert repo_id == "ViStoryBench/ViStoryBench"
        return SimpleNamespace(sha=COMMIT)

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **kwargs):
        calls.append(("list", revision))
        assert (repo_id, repo_type, revision) == ("ViStoryBench/ViStoryBench", "dataset", COMMIT)
        return sorted(p.relative_to(hub_copy).as_posix() for p in hub_copy.rglob("*") if p.is_file())

    def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None, **kwargs):
        calls.append(("download", filename))
        assert (repo_id, repo_type, revision) == ("ViStoryBench/ViStoryBench", "dataset", COMMIT)
        return str(hub_copy / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def _stop_at(files: int):
    """A progress callback that interrupts the install once ``files`` files are done (as Ctrl-C would)."""

    def callback(event):
        if event.completed == files:
            raise KeyboardInterrupt

    return callback


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", ["hub", "stories"])
def test_a_local_copy_in_either_layout_is_checked_copied_recorded_then_kept(hub_copy, tmp_path, layout):
    source = hub_copy if layout == "hub" else hub_copy / V.HUB_FOLDER
    table = V.checksum_table(hub_copy / V.HUB_FOLDER)
    target = tmp_path / "target"
    first = V.install(target, source=source, stories=STORIES)
    assert sorted(first.written) == sorted(table) and first.kept == [] and first.checked == "record"
    assert V.checksum_table(target) == table  # the stories only: the card and .gitattributes stay out
    assert _files(target) == sorted([*table, V.RECORD])
    record = V.read_record(target)
    assert record["complete"] and record["files"] == table and record["revision"] is None
    again = V.install(target, source=source, stories=STORIES)
    assert again.written == [] and sorted(again.kept) == sorted(table)
    assert B.resolve_suite(target).files == (target / "01" / "story.json", target / "02" / "story.json")


def test_an_interrupted_install_resumes_replaces_a_damaged_file_and_touches_nothing_else(hub_copy, tmp_path):
    source = hub_copy / V.HUB_FOLDER
    table = V.checksum_table(source)
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        V.install(target, source=source, stories=STORIES, progress=_stop_at(3))
    done = sorted(table)[:3]
    assert _files(target) == sorted([*done, V.RECORD])
    record = V.read_record(target)
    assert not record["complete"] and sorted(record["files"]) == done  # saved on the way out
    (target / done[0]).write_bytes(b"cut short")  # damaged by something else
    (target / "01" / "notes.txt").write_text("mine", encoding="utf-8")  # not the dataset's: never touched
    (target / "01" / ".DS_Store").write_bytes(b"\0")
    events = []
    result = V.install(target, source=source, stories=STORIES, progress=events.append)
    assert sorted(result.kept) == done[1:] and sorted(result.written) == sorted(set(table) - set(done[1:]))
    assert V.checksum_table(target) == {**table, "01/notes.txt": V.checksum_table(target)["01/notes.txt"]}
    assert (target / "01" / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (target / "01" / ".DS_Store").is_file() and V.read_record(target)["complete"]
    assert [e.completed for e in events] == list(range(len(table) + 1))


def test_with_a_table_a_file_of_another_checksum_is_refused_by_name_and_never_written(hub_copy, tmp_path):
    source = hub_copy / V.HUB_FOLDER
    table = V.checksum_table(source)
    image = "01/image/Mara/00.png"
    (source / image).write_bytes((source / image).read_bytes() + b"\0")
    target = tmp_path / "target"
    with pytest.raises(BenchDataError, match=r"1 file\(s\) from .* were refused: 01/image/Mara/00\.png \(SHA-256"):
        V.install(target, source=source, checksums=table)
    assert not (target / image).exists() and sorted(V.read_record(target)["files"]) == sorted(set(table) - {image})
    assert not V.read_record(target)["complete"]


def test_without_a_table_an_image_that_does_not_decode_is_refused(hub_copy, tmp_path):
    source = hub_copy / V.HUB_FOLDER
    image = source / "02" / "image" / "Fox" / "01.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(BenchDataError, match=r"02/image/Fox/01\.png \(does not decode as an image"):
        V.install(tmp_path / "target", source=source, stories=STORIES)
    assert not (tmp_path / "target" / "02" / "image" / "Fox" / "01.png").exists()


def test_a_from_folder_missing_stories_or_holding_a_story_that_does_not_read_is_refused_whole(hub_copy, tmp_path):
    source = hub_copy / V.HUB_FOLDER
    with pytest.raises(BenchDataError, match=r"1 of the benchmark's stories are not in .*: 03\. Fix"):
        V.install(tmp_path / "a", source=source, stories=("01", "02", "03"))
    story = json.loads((source / "02" / "story.json").read_text(encoding="utf-8-sig"))
    del story["Shots"][1]["Plot Correspondence"]
    (source / "02" / "story.json").write_text(json.dumps(story), encoding="utf-8")
    with pytest.raises(BenchDataError, match=r"1 stories in .* do not read .*: 02: .*Plot Correspondence"):
        V.install(tmp_path / "b", source=source, stories=STORIES)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything was copied
    with pytest.raises(SettingsError, match="holds no ViStoryBench stories"):
        V.install(tmp_path / "c", source=hub_copy / V.HUB_FOLDER / "01")


def test_the_hub_install_pins_one_commit_resumes_from_the_record_and_checks_the_table(hub, hub_copy, tmp_path):
    target = tmp_path / "target"
    table = V.checksum_table(hub_copy / V.HUB_FOLDER)
    result = V.install(target, stories=STORIES)
    assert result.revision == COMMIT and sorted(result.written) == sorted(table)
    assert hub[:2] == [("info", "main"), ("list", COMMIT)]
    assert sorted(f for kind, f in hub if kind == "download") == sorted(V.hub_path(p) for p in table)
    assert V.read_record(target)["revision"] == COMMIT and V.checksum_table(target) == table
    hub.clear()
    (target / "02" / "story.json").write_text("{", encoding="utf-8")
    again = V.install(target, stories=STORIES)  # the recorded commit: no look-up of main, one file fetched again
    assert hub == [("list", COMMIT), ("download", "ViStoryBench/02/story.json")]
    assert again.written == ["02/story.json"] and V.checksum_table(target) == table
    served = hub_copy / V.HUB_FOLDER / "01" / "story.json"
    served.write_bytes(served.read_bytes().replace(b"Mara", b"Mira"))  # the Hub's file is not the pinned one
    (target / "01" / "story.json").unlink()
    with pytest.raises(BenchDataError, match=r"ViStoryBench/ViStoryBench@0123456 were refused: 01/story\.json"):
        V.install(target, revision=COMMIT, checksums=table)


def test_an_unreachable_hub_is_one_message_naming_the_fix(cache, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    assert main(["download", "vistorybench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: could not look up revision 'main' of ViStoryBench/")
    assert "--from" in err and "Network is unreachable" in err


def test_the_download_is_found_by_storycast_benchmark_only_when_complete(hub_copy, cache, monkeypatch, caplog, capsys):
    target = cache / "bench" / "ViStoryBench"
    with pytest.raises(KeyboardInterrupt):
        V.install(target, source=hub_copy, progress=_stop_at(8))
    monkeypatch.setattr(logging.getLogger("storycast"), "propagate", True)
    with caplog.at_level("WARNING"), pytest.raises(SettingsError, match="storycast download vistorybench"):
        B.resolve_suite("vistorybench")
    assert f"{target} holds 8 of the 10 files asked for; skipped" in caplog.text
    # Story 01 (six images and its story.json) is whole.
    assert B.resolve_suite("vistorybench", limit=1).folder == target
    assert main(["download", "vistorybench", "--from", str(hub_copy)]) == 0
    assert f"-> {target}" in capsys.readouterr().out
    suite = B.resolve_suite("ViStoryBench")
    assert (suite.name, suite.folder, len(suite.files)) == ("ViStoryBench", target, 2)
    assert B.select_split(suite, "lite").name == "ViStoryBench-lite"


def test_record_checksums_prints_the_table_to_paste_into_storycast(hub_copy, cache, tmp_path, capsys):
    to = tmp_path / "mine"
    assert main(["download", "vistorybench", "--from", str(hub_copy), "--to", str(to), "--record-checksums"]) == 0
    captured = capsys.readouterr()
    assert "read and decode" in captured.err and f"`storycast benchmark {to}` runs it" in captured.err
    assert "names no revision" in captured.err
    namespace: dict = {}
    exec(captured.out, namespace)  # the printed table is Python, ready to paste
    assert namespace["REVISION"] is None and namespace["CHECKSUMS"] == V.checksum_table(hub_copy / V.HUB_FOLDER)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["download", "sdxl", "--revision", "main"], "--revision apply to vistorybench only"),
        (["download", "consistory-human", "--record-checksums"], "--record-checksums apply to vistorybench only"),
        (["download", "vistorybench", "--split", "single"], "--split apply to consistory-human only"),
        (["download", "vistorybench", "consistory-human", "--to", "x"], "download them with one command each"),
        (["download", "vistorybench", "--from", "nowhere"], "--from 'nowhere' is not a folder"),
    ],
)
def test_flags_are_refused_where_they_do_not_apply(argv, message, cache, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_to_that_is_a_file_is_refused(hub_copy, tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(SettingsError, match="is a file"):
        V.install(tmp_path / "file" / "bench", source=hub_copy)

"""The identity library survives damage and concurrent use: a damaged entry is reported, moved aside and
rediscovered; a NaN identity is refused; a changed byte is caught; four processes writing and reading one key
see whole entries only."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from storycast.cli.main import main
from storycast.identity.library import (
    CHECKSUM_FIELD,
    IdentityLibrary,
    IdentityLibraryError,
    InvalidIdentityError,
)

KEY, OTHER = "3f2a9c0d1e2b3a4c5d6e7f80", "0a1b2c3d4e5f60718293a4b5"
INFO = {"character": "mara", "source": "discovered", "prompt": "a woman img"}


def _embedding() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 16)


def _tensor(folder: Path) -> Path:
    return folder / "identity.safetensors"


def _info(folder: Path) -> Path:
    return folder / "info.json"


def _flip_last_data_byte(folder: Path) -> None:
    data = bytearray(_tensor(folder).read_bytes())
    data[-1] ^= 0x01
    _tensor(folder).write_bytes(bytes(data))


def _rewrite_info(folder: Path, change) -> None:
    info = json.loads(_info(folder).read_text())
    change(info)
    _info(folder).write_text(json.dumps(info))


def _replace_with_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_bytes(b"not a folder")


def _empty_folder(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _into_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = {
    "tensor truncated": lambda f: _tensor(f).write_bytes(_tensor(f).read_bytes()[:40]),
    "tensor truncated in its data": lambda f: _tensor(f).write_bytes(_tensor(f).read_bytes()[:-4]),
    "tensor empty": lambda f: _tensor(f).write_bytes(b""),
    "tensor garbage": lambda f: _tensor(f).write_bytes(random.Random(0).randbytes(300)),
    "tensor header garbage": lambda f: _tensor(f).write_bytes((16).to_bytes(8, "little") + b"\xff" * 80),
    "tensor missing": lambda f: _tensor(f).unlink(),
    "tensor a folder": lambda f: _into_folder(_tensor(f)),
    "tensor key renamed": lambda f: save_file({"embedding": _embedding()}, str(_tensor(f))),
    "tensor wrong shape": lambda f: save_file({"identity": _embedding().reshape(4, 4)}, str(_tensor(f))),
    "tensor wrong dtype": lambda f: save_file({"identity": _embedding().half()}, str(_tensor(f))),
    "tensor of no values": lambda f: save_file({"identity": torch.zeros(0)}, str(_tensor(f))),
    "tensor all NaN": lambda f: save_file({"identity": torch.full((16,), float("nan"))}, str(_tensor(f))),
    "tensor all inf": lambda f: save_file({"identity": torch.full((16,), float("inf"))}, str(_tensor(f))),
    "tensor flipped byte": _flip_last_data_byte,
    "info empty": lambda f: _info(f).write_bytes(b""),
    "info binary": lambda f: _info(f).write_bytes(bytes(range(256))),
    "info truncated": lambda f: _info(f).write_text(_info(f).read_text()[:30]),
    "info not an object": lambda f: _info(f).write_text("[1, 2, 3]\n"),
    "info missing": lambda f: _info(f).unlink(),
    "info a folder": lambda f: _into_folder(_info(f)),
    "info flipped byte": lambda f: _info(f).write_text(_info(f).read_text().replace('"mara"', '"mbra"')),
    "info of another key": lambda f: _rewrite_info(f, lambda i: i.update(key=OTHER)),
    "info checksum unreadable": lambda f: _rewrite_info(f, lambda i: i.update({CHECKSUM_FIELD: "zz"})),
    "key folder a file": _replace_with_file,
    "key folder empty": _empty_folder,
}


@pytest.fixture
def library(tmp_path) -> IdentityLibrary:
    library = IdentityLibrary(tmp_path / "identities")
    library.put(KEY, _embedding(), INFO)
    library.put(OTHER, torch.ones(16), {"character": "tom", "source": "photos", "photos": ["tom.png"]})
    return library


@pytest.fixture
def warnings_logged(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("storycast"), "propagate", True)  # main() gave it a terminal handler
    caplog.set_level(logging.WARNING, logger="storycast.identity.library")
    return caplog


def _moved_aside(library: IdentityLibrary) -> list[Path]:
    return sorted((library.root / ".damaged").glob(f"{KEY}-*"))


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_entry_is_reported_moved_aside_and_treated_as_missing(library, damage, warnings_logged):
    DAMAGE[damage](library.path(KEY))

    assert library.get(KEY) is None
    warning = next(r.getMessage() for r in warnings_logged.records if r.levelno == logging.WARNING)
    assert KEY in warning and "damaged" in warning
    assert len(_moved_aside(library)) == 1 and str(_moved_aside(library)[0]) in warning
    assert not library.path(KEY).exists()
    assert library.get(KEY) is None and library.info(KEY) is None  # missing now, so it is discovered again
    assert library.get(OTHER) is not None
    rediscovered = library.put(KEY, _embedding() * 2, INFO)
    assert torch.equal(library.get(KEY).embedding, rediscovered.embedding)


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_identities_list_lists_the_good_entries_and_reports_the_damaged(library, damage, capsys):
    DAMAGE[damage](library.path(KEY))

    assert main(["identities", "list", "--cache-dir", str(library.root.parent)]) == 0
    out = capsys.readouterr().out
    assert f"{OTHER}  tom" in out
    damaged_line = next(line for line in out.splitlines() if line.startswith(KEY))
    assert "damaged:" in damaged_line and str(_moved_aside(library)[0]) in damaged_line
    assert main(["identities", "list", "--cache-dir", str(library.root.parent)]) == 0
    assert KEY not in capsys.readouterr().out


def test_identities_show_of_a_damaged_entry_says_so(library, capsys):
    _flip_last_data_byte(library.path(KEY))
    assert main(["identities", "show", KEY[:6], "--cache-dir", str(library.root.parent)]) == 2
    err = capsys.readouterr().err
    assert f"identity {KEY}" in err and "damaged" in err and "SHA-256" in err


def test_the_reported_problem_names_what_is_wrong(library, warnings_logged):
    save_file({"identity": _embedding().reshape(4, 4)}, str(_tensor(library.path(KEY))))
    library.get(KEY)
    assert "shape [4, 4]" in warnings_logged.text


def test_a_library_folder_that_is_a_file_is_moved_aside_and_the_library_recovers(tmp_path, warnings_logged):
    root = tmp_path / "identities"
    root.write_text("oops")
    library = IdentityLibrary(root)
    with library.claim(KEY):  # what every identitystory run does first (NotADirectoryError before)
        assert library.get(KEY) is None
        library.put(KEY, _embedding(), INFO)
    assert root.is_dir() and library.keys() == [KEY]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("identities.damaged-")]
    assert len(aside) == 1 and aside[0].read_text() == "oops"  # the user's file is kept, never deleted
    assert "was a file, not a folder" in warnings_logged.text and str(aside[0]) in warnings_logged.text


def test_a_library_folder_another_process_makes_meanwhile_is_not_moved_aside(tmp_path, monkeypatch):
    # The CI race this holds: process A looks (no folder yet), process B makes the folder, A looks again and
    # must see B's folder, not damage to move aside (which lost B's discovery and made A discover it again).
    import storycast.identity.library as library_module

    root = tmp_path / "identities"
    real_stat = os.stat

    def stat_then_other_process_mkdirs(path, *args, **kwargs):
        if Path(path) == root and not os.path.lexists(root):
            root.mkdir()  # B makes it right after A's first look
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(library_module.os, "stat", stat_then_other_process_mkdirs)
    assert IdentityLibrary(root).keys() == []
    assert root.is_dir() and not list(tmp_path.glob("identities.damaged-*"))


@pytest.mark.parametrize("call", ["keys", "get", "put"])
def test_every_entry_point_recovers_from_a_library_file(tmp_path, call):
    root = tmp_path / "identities"
    root.write_text("oops")
    library = IdentityLibrary(root)
    {"keys": library.keys, "get": lambda: library.get(KEY), "put": lambda: library.put(KEY, _embedding(), INFO)}[
        call
    ]()
    assert [p.read_text() for p in tmp_path.glob("identities.damaged-*")] == ["oops"]


def test_a_library_file_that_cannot_be_moved_gives_one_clear_error(tmp_path, monkeypatch, capsys):
    root = tmp_path / "identities"
    root.write_text("oops")
    real_rename = os.rename

    def refuse(src, dst):
        if str(src) == str(root):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(IdentityLibraryError, match="is a file, not a folder") as caught:
        IdentityLibrary(root).get(KEY)
    assert str(root) in str(caught.value) and "Fix:" in str(caught.value) and "Permission denied" in str(caught.value)
    assert main(["identities", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(root) in err and "Fix:" in err


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_identity_is_refused(tmp_path, bad):
    library = IdentityLibrary(tmp_path / "identities")
    embedding = _embedding()
    embedding[3] = bad
    with pytest.raises(InvalidIdentityError, match="1 NaN or infinite values of 16"):
        library.put(KEY, embedding, INFO)
    with pytest.raises(InvalidIdentityError, match="empty"):
        library.put(KEY, torch.zeros(0), INFO)
    assert library.keys() == [] and library.get(KEY) is None


def test_a_flipped_byte_is_caught_by_the_checksum(library, warnings_logged):
    record = library.get(KEY)
    assert record.checksum is not None and CHECKSUM_FIELD not in record.info
    _flip_last_data_byte(library.path(KEY))
    assert library.get(KEY) is None
    assert "does not match its SHA-256" in warnings_logged.text


def test_an_entry_written_before_checksums_still_loads_and_gets_one_when_stored(tmp_path, warnings_logged):
    library = IdentityLibrary(tmp_path / "identities")
    folder = library.path(KEY)
    folder.mkdir(parents=True)
    save_file({"identity": _embedding()}, str(_tensor(folder)))
    _info(folder).write_text(json.dumps({"key": KEY, **INFO}, indent=2))

    record = library.get(KEY)
    assert record is not None and record.checksum is None and record.info == {"key": KEY, **INFO}
    assert torch.equal(record.embedding, _embedding()) and not warnings_logged.records
    library.put(KEY, record.embedding, record.info)
    assert CHECKSUM_FIELD in json.loads(_info(folder).read_text())
    assert library.get(KEY).checksum is not None


def test_an_entry_written_before_checksums_with_nans_is_damaged(tmp_path, warnings_logged):
    library = IdentityLibrary(tmp_path / "identities")
    folder = library.path(KEY)
    folder.mkdir(parents=True)
    save_file({"identity": torch.full((16,), float("nan"))}, str(_tensor(folder)))
    _info(folder).write_text(json.dumps({"key": KEY, **INFO}))
    assert library.get(KEY) is None
    assert "16 NaN or infinite values" in warnings_logged.text


def test_put_returns_what_get_reads_back(library):
    written = library.put(KEY, _embedding(), {**INFO, "photos": [Path("a.png")], "key": "ignored"})
    read = library.get(KEY)
    assert read.info == written.info and read.info["photos"] == ["a.png"] and read.info["key"] == KEY
    assert torch.equal(read.embedding, written.embedding) and read.checksum == written.checksum


def test_remove_forgets_an_entry(library):
    assert library.remove(KEY) and not library.remove(KEY)
    assert library.keys() == [OTHER]


# -- four processes on one key ------------------------------------------------------------------------


def _hammer(root: str, writer: int, operations: int) -> dict[str, int]:
    """Alternate put and get of one key; each embedding encodes its writer and step, as its info does."""
    library = IdentityLibrary(root)
    seen = {"errors": 0, "torn": 0, "missing": 0, "reads": 0}
    for step in range(operations):
        try:
            if step % 2 == 0:
                value = writer * 1000 + step
                library.put(KEY, torch.full((64,), float(value)), {"writer": writer, "step": step})
                continue
            record = library.get(KEY)
            if record is None:
                seen["missing"] += 1
                continue
            seen["reads"] += 1
            expected = record.info["writer"] * 1000 + record.info["step"]
            if not torch.all(record.embedding == expected):
                seen["torn"] += 1
        except Exception:
            seen["errors"] += 1
    return seen


def test_concurrent_puts_and_gets_of_one_key_see_whole_entries(tmp_path):
    root = tmp_path / "identities"
    library = IdentityLibrary(root)
    library.put(KEY, torch.full((64,), -1000.0), {"writer": -1, "step": 0})

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_hammer, [(str(root), writer, 100) for writer in range(4)])

    total = {name: sum(r[name] for r in results) for name in results[0]}
    assert total["errors"] == 0 and total["torn"] == 0, total
    assert total["reads"] + total["missing"] == 200
    try:
        import fcntl  # noqa: F401 (with a lock, a replacement is never seen half done)

        assert total["missing"] == 0, total
    except ImportError:
        pass
    assert not (root / ".damaged").exists()
    assert [p.name for p in root.iterdir() if p.name != ".lock"] == [KEY]  # no staging folder left behind
    final = library.get(KEY)
    assert torch.all(final.embedding == final.info["writer"] * 1000 + final.info["step"])

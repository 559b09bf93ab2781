"""``storycast data build`` on hostile or large sources: captions in other encodings, decompression bombs, broken
masks, links as --out, and thousands of images. Each bad input is one ``error:`` line naming the file and the fix
(exit status 2), or is left out by name and counted; a large source streams through the progress callback."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from storycast.cli.main import main
from storycast.data.build import BuildSettings, build_dataset
from storycast.data.format import iter_rows, open_dataset
from storycast.data.sources import scan_source
from tests.data.test_build import mara, scene


def one_character(root, count=4):
    """``root/mara/`` with ``count`` distinct images of mara."""
    (root / "mara").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        scene(k, [mara(k)])[0].save(root / "mara" / f"{k:03d}.png")
    return root


def build(source, out, *extra):
    return main(["data", "build", str(source), "--out", str(out), "--preset", "tiny", "--no-progress", *extra])


def one_error_line(capsys, *says):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in says:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    ("encoded", "caption"),
    [
        (b"\xef\xbb\xbfa person in a caf\xc3\xa9", "a person in a café"),  # UTF-8 with a byte-order mark
        ("a person in a café".encode("utf-16"), "a person in a café"),  # UTF-16 with its mark (native order)
        (b"\xfe\xff" + "a person in a café".encode("utf-16-be"), "a person in a café"),
    ],
)
def test_captions_in_utf8_or_utf16_with_a_mark_are_read(tmp_path, encoded, caption):
    root = one_character(tmp_path / "src")
    (root / "mara" / "000.txt").write_bytes(encoded)
    build_dataset(root, tmp_path / "data", tiny=True)
    assert next(iter_rows(open_dataset(tmp_path / "data"))).captions[0] == caption


@pytest.mark.parametrize(
    ("encoded", "says"),
    [
        (b"a woman\nin a caf\xe9\n", "line 2: byte e9 at offset 16 is not UTF-8"),  # Latin-1
        ("a woman\nin a café".encode("utf-16-le"), "line 1: holds NUL bytes, as UTF-16 without a byte-order mark"),
        (b"a woman\n\n\x80\x81 garbage", "line 3: byte 80"),
    ],
)
def test_captions_in_other_encodings_are_refused_naming_file_and_line(tmp_path, capsys, encoded, says):
    root = one_character(tmp_path / "src")
    (root / "mara" / "002.txt").write_bytes(encoded)
    assert build(root, tmp_path / "data") == 2
    one_error_line(capsys, "002.txt", says, "Fix: save it as UTF-8")
    (root / "characters.yaml").write_bytes(b"characters:\n  mara: {class_word: caf\xe9}\n")
    (root / "mara" / "002.txt").unlink()
    assert build(root, tmp_path / "data") == 2
    one_error_line(capsys, "characters.yaml, line 2: byte e9")


def png_header(width, height):
    """A PNG that claims ``width`` x ``height`` pixels and holds almost nothing: a decompression bomb's header."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_left_out_by_name_and_counted(tmp_path, capsys):
    root = one_character(tmp_path / "src")
    (root / "mara" / "bomb.png").write_bytes(png_header(20_000, 20_000))  # PIL's error: over 2 x 89 megapixels
    (root / "mara" / "huge.png").write_bytes(png_header(10_000, 10_000))  # PIL's warning: over 89 megapixels
    assert build(root, tmp_path / "data") == 0
    out, logged = capsys.readouterr()  # logged: the CLI's log lines
    assert "left out: images over PIL's pixel limit (decompression-bomb guard) 2" in out
    assert "bomb.png is left out" in logged and "huge.png is left out" in logged and "decompression bomb" in logged
    assert len(next(iter_rows(open_dataset(tmp_path / "data"))).images) == 4


@pytest.mark.parametrize("broken", ["text", "truncated", "bomb"])
def test_a_broken_sidecar_mask_is_an_error_naming_it(tmp_path, capsys, broken):
    root = one_character(tmp_path / "src")
    mask = root / "mara" / "001.mask.png"
    if broken == "text":
        mask.write_text("not a mask")
    elif broken == "truncated":
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(mask)
        mask.write_bytes(mask.read_bytes()[:200])
    else:
        mask.write_bytes(png_header(20_000, 20_000))
    assert build(root, tmp_path / "data") == 2
    one_error_line(capsys, f"the mask {mask} (of 001.png) is not a readable image", "Fix:")


def test_links_as_out_are_refused_and_nothing_behind_them_changes(tmp_path, capsys):
    root = one_character(tmp_path / "src")
    data = tmp_path / "data"
    assert build(root, data) == 0
    before = sorted((p.name, p.stat().st_size) for p in data.rglob("*"))
    capsys.readouterr()
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)  # a link to a data set: --overwrite would replace the link
    assert build(root, link, "--overwrite") == 2
    one_error_line(capsys, "is a symbolic link (to ", "Fix:")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a link to itself: resolving it fails
    assert build(root, loop, "--overwrite") == 2
    one_error_line(capsys, "loop' is a symbolic link")
    assert build(root, loop / "inside") == 2  # a folder below the loop cannot be resolved
    one_error_line(capsys, "cannot be resolved", "Fix:")
    (tmp_path / "other.partial").symlink_to(data, target_is_directory=True)  # the work folder as a link
    assert build(root, tmp_path / "other") == 2
    one_error_line(capsys, "other.partial' is a symbolic link")
    (tmp_path / "a-file").write_text("mine")
    assert build(root, tmp_path / "a-file" / "data") == 2  # --out below a file
    one_error_line(capsys, "cannot write the work folder", "Fix:")
    assert sorted((p.name, p.stat().st_size) for p in data.rglob("*")) == before
    assert (tmp_path / "a-file").read_text() == "mine"


def test_mask_names_that_are_not_a_character_s_are_ignored(tmp_path):
    root = one_character(tmp_path / "src")
    Image.new("L", (64, 64), 255).save(root / "mara" / "000.maskfoo.png")  # once an IndexError
    Image.new("L", (64, 64), 0).save(root / "mara" / "001.mask-mara.png")
    items = {item.path.name: item for item in scan_source(root).items}
    assert set(items) == {"000.png", "001.png", "002.png", "003.png"}
    assert dict(items["000.png"].masks) == {} and set(items["001.png"].masks) == {"mara"}


def test_thousands_of_images_stream_through_the_progress_callback(tmp_path):
    """2,400 images of 3 characters with sidecar masks and captions, one flat folder each: every image is reported
    to the progress callback and analysed, the filters run over every set, and each set keeps its first
    max_images distinct images, the rest counted."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    per_set, side = 800, 16
    for name in ("ada", "bo", "cy"):
        (root / name).mkdir(parents=True)
        for k in range(per_set):
            cells = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # a random background per image
            pixels = np.kron(cells, np.ones((2, 2, 1), dtype=np.uint8))
            pixels[4:12, 4:12] = (255, 0, 0)
            Image.fromarray(pixels).save(root / name / f"{k:04d}.png")
            mask = np.zeros((side, side), dtype=np.uint8)
            mask[4:12, 4:12] = 255
            Image.fromarray(mask).save(root / name / f"{k:04d}.mask.png")
            (root / name / f"{k:04d}.txt").write_text(f"a person, picture {k}")
    seen = []
    settings = BuildSettings(max_images=200, max_side=64)
    info = build_dataset(root, tmp_path / "data", settings, tiny=True, progress=lambda d, t: seen.append((d, t)))
    total = 3 * per_set
    assert seen == [(done, total) for done in range(total + 1)]
    assert (info.sets, info.images) == (3, 3 * 200)
    assert sum(info.dropped.values()) == total - 3 * 200 and info.dropped["over max_images (200) in a set"] > 0
    rows = {row.set_id: row for row in iter_rows(open_dataset(tmp_path / "data"))}
    assert rows["bo"].sources[:2] == ["bo/0000.png", "bo/0001.png"] and rows["bo"].captions[1] == (
        "a person, picture 1"
    )


def test_a_half_written_analysis_is_made_again_on_resume(tmp_path, monkeypatch):
    from storycast.data import build as module

    root = one_character(tmp_path / "src")
    original, calls, stop = module.Builder.masks, [], {"at": 3}

    def failing(self, *args):
        calls.append(1)
        if len(calls) == stop["at"]:
            raise RuntimeError("the power went off")
        return original(self, *args)

    monkeypatch.setattr(module.Builder, "masks", failing)
    with pytest.raises(RuntimeError, match="power"):
        build_dataset(root, tmp_path / "data", tiny=True)
    records = sorted((tmp_path / "data.partial" / "items").glob("*.json"))
    assert len(records) == 2
    records[0].write_text('{"name": "000.png", "charac')  # what an interrupted write once left
    calls.clear()
    stop["at"] = 0
    info = build_dataset(root, tmp_path / "data", tiny=True)
    assert info.images == 4 and len(calls) == 3  # the damaged one and the two never analysed

"""``storycast data build`` on images and a video the test draws: simple characters on varied backgrounds, with
sidecar captions and masks. The data set has the right sets, masks and captions; bad input is refused clearly;
an interrupted build resumes; nothing already built is replaced without --overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from storycast.data.build import BuildSettings, build_dataset, ensure_class_words
from storycast.data.format import DataSetError, iter_rows, open_dataset
from storycast.data.ops import average_hash, cluster_embeddings, contrast_mask, near_duplicates
from storycast.errors import StorycastError

SIDE = 64
BACKGROUNDS = [(30, 90, 160), (200, 190, 60), (40, 140, 70), (150, 60, 150), (90, 90, 90), (220, 120, 40)]


def scene(k, shapes, side=SIDE):
    """A background of two tones split by a line that moves with k (so that backgrounds differ), and the
    shapes: (kind, colour, box). Returns the image and each shape's mask."""
    base = BACKGROUNDS[k % len(BACKGROUNDS)]
    image = Image.new("RGB", (side, side), base)
    draw = ImageDraw.Draw(image)
    shade = tuple(max(0, c - 22) for c in base)
    half, end = side // 2, side - 1
    layouts = [  # a darker part in a different place for every k: six distinct backgrounds
        [(0, 0), (half, 0), (half, end), (0, end)],
        [(0, 0), (end, 0), (end, half), (0, half)],
        [(0, 0), (end, 0), (0, end)],
        [(half, half), (end, half), (end, end), (half, end)],
        [(0, half - 8), (end, half - 8), (end, half + 8), (0, half + 8)],
        [(end, 0), (end, end), (0, end)],
    ]
    draw.polygon(layouts[k % len(layouts)], fill=shade)
    masks = []
    for kind, colour, box in shapes:
        mask = Image.new("L", (side, side), 0)
        for target, fill in ((draw, colour), (ImageDraw.Draw(mask), 255)):
            (target.ellipse if kind == "circle" else target.rectangle)(box, fill=fill)
        masks.append(np.asarray(mask) > 127)
    return image, masks


def mara(k):
    x, y, r = 10 + 3 * k, 12 + 2 * k, 12 + k
    return ("circle", (230, 30, 30), (x, y, x + 2 * r, y + 2 * r))


def tom(k):
    x, y = 30 - 2 * k, 8 + 3 * k
    return ("square", (20, 20, 240), (x, y, x + 20, y + 24))


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    (root / "mara").mkdir(parents=True)
    (root / "tom").mkdir()
    (root / "scenes").mkdir()
    (root / "characters.yaml").write_text(
        "characters:\n  mara: {class_word: woman}\n  tom: {class_word: man}\n"
        "images:\n" + "".join(f"  scenes/tea{k}.png: [mara, tom]\n" for k in range(4))
    )
    for k in range(5):
        image, _ = scene(k, [mara(k)])
        image.save(root / "mara" / f"{k:03d}.png")
        (root / "mara" / f"{k:03d}.txt").write_text(f"a woman in scene {k}" if k else "someone by the sea")
        image, _ = scene(k + 1, [tom(k)])
        image.save(root / "tom" / f"{k:03d}.png")
    scene(0, [mara(0)])[0].save(root / "mara" / "copy.png")  # a near duplicate of 000.png
    scene(1, [mara(4)])[0].save(root / "mara" / "same_place.png")  # 001.png's background again
    for k in range(4):
        image, (m, t) = scene(k + 2, [mara(k), tom(k)])
        image.save(root / "scenes" / f"tea{k}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "scenes" / f"tea{k}.mask-mara.png")
        Image.fromarray(t.astype(np.uint8) * 255).save(root / "scenes" / f"tea{k}.mask-tom.png")
    return root


def test_a_built_data_set_has_the_right_sets_masks_and_captions(source, tmp_path):
    out = tmp_path / "data"
    info = build_dataset(source, out, BuildSettings(), tiny=True)
    assert (info.sets, info.multi_character_sets, info.characters) == (3, 1, 2)
    assert info.dropped["near duplicates"] == 1 and info.dropped["repeated backgrounds"] == 1
    rows = {row.set_id: row for row in iter_rows(open_dataset(out))}
    assert set(rows) == {"mara", "tom", "mara+tom"}
    assert len(rows["mara"].images) == 5 and rows["mara"].sources[0] == "mara/000.png"
    # Captions: given ones kept, the class word put in when missing, templates naming every character.
    assert rows["mara"].captions[1] == "a woman in scene 1"
    assert rows["mara"].captions[0] == "a woman, someone by the sea"
    assert rows["tom"].captions[0] == "a photo of a man"
    assert rows["mara+tom"].captions[0] == "a photo of a woman and a man"
    assert rows["mara+tom"].characters == [("mara", "woman"), ("tom", "man")]
    # Masks: the contrast segmenter finds each single character; sidecar masks are used as given.
    for k, masks in enumerate(rows["mara"].masks):
        expected = scene(k, [mara(k)])[1][0]
        found = np.asarray(masks[0]) > 127
        assert (found & expected).sum() / (found | expected).sum() > 0.9  # IoU
    sidecar = np.asarray(rows["mara+tom"].masks[2][1]) > 127
    assert np.array_equal(sidecar, scene(4, [mara(2), tom(2)])[1][1])
    assert (out / "contact_sheets" / "mara+tom.png").is_file()
    card = (out / "README.md").read_text()
    assert "| character sets | 3 |" in card and "data/train-*.parquet" in card
    assert json.loads((out / "storycast_data.json").read_text())["images"] == 14


def test_sets_are_read_one_at_a_time_from_the_shards(source, tmp_path):
    from storycast.data.format import ShardedSets

    build_dataset(source, tmp_path / "data", tiny=True)
    whole = list(iter_rows(open_dataset(tmp_path / "data")))
    sets = ShardedSets(tmp_path / "data")
    assert len(sets) == len(whole) and sets.sizes() == [len(row.images) for row in whole]
    for position, row in enumerate(whole):
        got = sets[position]
        assert (got.set_id, got.captions, got.image_characters) == (row.set_id, row.captions, row.image_characters)
        assert np.array_equal(np.asarray(got.images[-1]), np.asarray(row.images[-1]))
        assert np.array_equal(np.asarray(got.masks[0][0]), np.asarray(row.masks[0][0]))


def test_the_cli_builds_offline_and_refuses_to_replace_a_data_set(source, tmp_path, capsys):
    from storycast.cli.main import main

    out = tmp_path / "data"
    args = ["data", "build", str(source), "--out", str(out), "--preset", "tiny"]
    assert main(args) == 0
    assert "wrote 3 character set(s)" in capsys.readouterr().out
    before = (out / "storycast_data.json").read_text()
    assert main(args) == 2
    assert "already holds a data set" in capsys.readouterr().err
    assert (out / "storycast_data.json").read_text() == before
    assert main([*args, "--overwrite", "--set", "min_imags=3"]) == 2
    assert "did you mean 'min_images'" in capsys.readouterr().err
    assert main(["data", "info", str(out)]) == 0
    assert "3 set(s), 14 images" in capsys.readouterr().out


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["the source", "its parent", "inside it"])
def test_an_out_that_is_holds_or_lies_in_the_source_is_refused_and_the_photos_kept(source, tmp_path, capsys, where):
    from storycast.cli.main import main

    out = {"the source": source, "its parent": source.parent, "inside it": source / "data"}[where]
    before = _listing(source)
    assert main(["data", "build", str(source), "--out", str(out), "--preset", "tiny", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "source folder" in err and "Fix:" in err and "Traceback" not in err
    assert _listing(source) == before


def test_a_folder_of_the_user_s_named_like_the_work_folder_is_never_deleted(source, tmp_path):
    mine = tmp_path / "data.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(StorycastError, match="not the work folder of an earlier build"):
        build_dataset(source, tmp_path / "data", tiny=True)
    assert (mine / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_data_set_and_never_through_a_link(source, tmp_path, capsys):
    from storycast.cli.main import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["data", "build", str(source), "--out", str(mine), "--preset", "tiny", "--overwrite"]) == 2
    assert "not a storycast data set" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(mine, target_is_directory=True)
    assert main(["data", "build", str(source), "--out", str(link), "--preset", "tiny", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err and (mine / "notes.txt").read_text() == "mine"


def test_videos_are_sampled_into_frames(tmp_path):
    import av

    root = tmp_path / "src"
    (root / "leo").mkdir(parents=True)
    with av.open(str(root / "leo" / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for k in range(24):  # 6 seconds at 4 fps: one frame a second gives 6
            image, _ = scene(k // 4, [mara(k // 4)])
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = build_dataset(root, tmp_path / "data", BuildSettings(near_duplicate_bits=0, background_bits=-1), tiny=True)
    row = next(iter_rows(open_dataset(tmp_path / "data")))
    assert info.images == 6 and row.sources[:2] == ["leo/clip.mp4#0", "leo/clip.mp4#4"]


def test_an_interrupted_build_resumes_from_what_it_analysed(source, tmp_path, monkeypatch):
    from storycast.data import build

    calls = []
    original = build.Builder.masks
    stop = {"at": 6}

    def failing(self, item, image, characters, words):
        calls.append(item.path.name)
        if len(calls) == stop["at"]:
            raise RuntimeError("the power went off")
        return original(self, item, image, characters, words)

    monkeypatch.setattr(build.Builder, "masks", failing)
    with pytest.raises(RuntimeError, match="power"):
        build_dataset(source, tmp_path / "data", tiny=True)
    assert not (tmp_path / "data").exists() and (tmp_path / "data.partial").is_dir()
    calls.clear()
    stop["at"] = 0
    build_dataset(source, tmp_path / "data", tiny=True)
    assert len(calls) == 16 - 5  # the five analysed before the stop are not analysed again
    assert not (tmp_path / "data.partial").exists()


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(StorycastError, match="does not exist"):
        build_dataset(tmp_path / "nowhere", tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StorycastError, match="holds no images"):
        build_dataset(empty, tmp_path / "data")
    (empty / "mara").mkdir()
    (empty / "mara" / "broken.png").write_text("not an image")
    with pytest.raises(StorycastError, match=r"broken\.png is not a readable image"):
        build_dataset(empty, tmp_path / "data")
    (empty / "mara" / "broken.png").unlink()
    for k in range(2):
        scene(k, [mara(k)])[0].save(empty / "mara" / f"{k}.png")
    with pytest.raises(StorycastError, match=r"no character set .* has 4 or more usable images.*min_images"):
        build_dataset(empty, tmp_path / "data", tiny=True)
    (empty / "characters.yaml").write_text("characters:\n  mara: {}\n")
    with pytest.raises(StorycastError, match=r"characters\.mara needs a class_word"):
        build_dataset(empty, tmp_path / "data", tiny=True)
    with pytest.raises(DataSetError, match="not a storycast data set"):
        open_dataset(empty)


def test_a_corrupt_video_is_named(tmp_path):
    root = tmp_path / "src" / "leo"
    root.mkdir(parents=True)
    (root / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(StorycastError, match=r"clip\.mp4 is not a readable video"):
        build_dataset(tmp_path / "src", tmp_path / "data", tiny=True)


def test_images_of_unknown_characters_are_clustered(tmp_path):
    """Loose images get identities from clustering (DINOv2 features; random tiny weights here, so only the
    path is checked: every image gets a found identity and sets are named after them)."""
    root = tmp_path / "src"
    root.mkdir()
    for k in range(6):
        scene(k, [mara(k)])[0].save(root / f"{k}.png")
    settings = BuildSettings(identities="dino", dino_threshold=-1.0, min_images=2)  # -1: one cluster
    info = build_dataset(root, tmp_path / "data", settings, tiny=True)
    row = next(iter_rows(open_dataset(tmp_path / "data")))
    assert info.sets == 1 and row.set_id == "person_000" and row.characters == [("person_000", "person")]
    assert row.captions[0] == "a photo of a person"


def test_pure_parts():
    assert ensure_class_words("a man and a woman", ["woman", "man"]) == "a man and a woman"
    assert ensure_class_words("two people", ["woman"]) == "a woman, two people"
    assert ensure_class_words("", ["dog"]) == "a dog"
    import torch

    embeddings = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [0.7, 0.7]])
    assert cluster_embeddings(embeddings, 0.95) == [0, 0, 1, 1, 2]
    assert cluster_embeddings(embeddings, 0.6) == [0, 0, 0, 0, 0]  # single linkage through the middle one
    a, _ = scene(0, [mara(0)])
    b, _ = scene(3, [tom(3)])
    assert near_duplicates([average_hash(a), average_hash(a.copy()), average_hash(b)], 4) == [1]
    _, (expected,) = scene(1, [tom(1)])
    found = contrast_mask(scene(1, [tom(1)])[0])
    assert (found & expected).sum() / (found | expected).sum() > 0.9

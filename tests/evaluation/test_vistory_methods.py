"""Every method draws every ViStoryBench story it can: a shot a method cannot take as it is falls back, recorded
per frame, instead of the story being refused; the frames are also laid out as ViStoryBench's scorer reads them,
which a naive reader written from its ``read_outputs.py`` finds; a rerun redraws and rewrites nothing."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest

from storycast.errors import RunFolderError, StorycastError
from storycast.evaluation import benchmark as B
from storycast.methods.limits import AS_IS, WITHOUT_CHARACTERS, FrameLimit, apply_limits, count_limits
from storycast.methods.registry import get_method, list_methods
from storycast.models.tokenizers import first_tokenizer
from storycast.runs.plan import plan_run
from storycast.runs.runner import RunOptions, execute_plan
from storycast.story.parse import load_story
from tests.story.vistory_fixture import MIXED, write_vistory

GENERATION = {"steps": 2, "width": 64, "height": 64}
MODELS = {"sdxl": "tiny_sdxl", "sd15": "tiny_sd15", "flux": "tiny_flux"}
CLASS_WORD = ("consistory", "identitystory", "photomaker", "storynizor")
"""Methods that find (or fuse into) a character by its class word's token: the fifth shot's characters come after
CLIP's 77 tokens."""
FACE_READERS = ("pulid",)
"""Methods that need a face in reference images (PuLID's antelopev2) with their first family's defaults: Rex is a dog
(``non_human``). PhotoMaker v1 (identitystory, photomaker, storydiffusion on SDXL) embeds the whole image."""
FROM_PHOTOS = {"pulid": "antelopev2"}
"""Methods that read every character from a face the face pack finds in its photos, with that pack."""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_vistory(tmp_path_factory.mktemp("vistory") / "ViStory", MIXED)


@pytest.fixture(scope="module")
def with_faces(tmp_path_factory):
    """Story 03 whose human characters' images are face photos, and the tiny face packs: pack name -> folder."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny face pack
    from storycast.vision.tiny_faces import write_tiny_face_pack
    from tests.methods.helpers import face_photo

    folder = tmp_path_factory.mktemp("vistory-faces")
    root = write_vistory(folder / "ViStory", MIXED)
    characters = MIXED["03"]["Characters"]
    humans = [key for key, fields in characters.items() if fields["tag"] == "realistic_human"]
    for number, key in enumerate(humans):
        for photo in sorted((root / "03" / "image" / key).iterdir()):
            face_photo(photo, number + 1)
    packs = {pack: write_tiny_face_pack(folder / pack, pack=pack) for pack in set(FROM_PHOTOS.values())}
    return root, packs


def expected_limits(method: str, family: str) -> dict[int, set[tuple[str, tuple[str, ...]]]]:
    """What each method meets in story 03, from the story (not from a run): frame -> {(limit, characters)}.

    Shots: 0 Ava alone; 1 nobody; 2 Ava, Bo, Rex; 3 Rex alone; 4 Ava, Bo, Rex after a long script. Rex is a dog.
    """
    found: dict[int, set[tuple[str, tuple[str, ...]]]] = {}
    if family != "flux":  # CLIP is the prompt's encoder: shot 4 takes more than 77 tokens
        found.setdefault(4, set()).add(("prompt-tokens", ()))
    if method in FACE_READERS:  # the dog's images are not read (pulid, identity=auto: discovered from his description)
        for index in (2, 3, 4):
            found.setdefault(index, set()).add(("no-face", ("rex",)))
    if method in (*CLASS_WORD, "storydiffusion"):  # storydiffusion on SDXL fuses the reference images with PhotoMaker
        found.setdefault(4, set()).add(("class-word-cut", ("ava", "bo", "rex")))
    if method == "pulid":  # one identity per frame: the first named (Ava); Bo and the dog stay in the prompt only
        for index in (2, 4):
            found[index].add(("characters-per-frame", ("bo", "rex")))
    if method in ("storydiffusion", "characonsist"):  # Bo never appears alone: no identity frame of his
        found.setdefault(2, set()).add(("solo-frames", ("bo",)))
        if method == "characonsist":
            found.setdefault(4, set()).add(("solo-frames", ("bo",)))
    return found


def test_limits_fall_back_as_documented_and_are_counted():
    from storycast.story.model import Character, Frame, Story

    story = Story(
        "t",
        (Frame("a", ("m", "d")), Frame("b", ("d",))),
        (Character("m", "a woman", "woman", references=(Path("m.png"),)), Character("d", "a dog", "dog")),
    )
    limits = [FrameLimit(0, "solo-frames", "x", WITHOUT_CHARACTERS, ("d",)), FrameLimit(1, "language", "y", AS_IS)]
    adapted = apply_limits(story, limits)
    assert [f.characters for f in adapted.frames] == [("m",), ("d",)] and adapted.characters == story.characters
    unread = apply_limits(story, [FrameLimit(0, "references-family", "z", "without-references", ("m",))])
    assert unread.character("m").references == () and unread.frames == story.frames
    counted = count_limits([{"0": [limits[0].to_dict()], "1": [limits[1].to_dict()]}, {}])
    assert counted == {"frames_changed": 1, "frames_noted": 2, "by_limit": {"language": 1, "solo-frames": 1}}
    with pytest.raises(ValueError, match="fallback must be one of"):
        FrameLimit(0, "x", "y", "skip")


def test_a_character_known_to_have_no_face_is_not_read_by_the_methods_that_read_faces():
    from storycast.methods.registry import get_settings_class
    from storycast.story.model import Character, Frame, Story

    story = Story(
        "t",
        (Frame("a", ("d", "w", "m")), Frame("b", ("d",)), Frame("c", ("w",))),
        (
            Character("d", "a dog", "dog", references=(Path("d.png"),), kind="non_human"),
            Character("w", "a woman", "woman", references=(Path("w.png"),), kind="realistic_human"),
            Character("m", "a man", "man", references=(Path("m.png"),)),  # kind unknown: read as before
        ),
    )

    def limits(method: str, family: str = "sdxl", **values) -> set:
        settings = get_settings_class(method).from_mapping(values)
        return {
            (x.frame, x.limit, x.fallback, x.characters)
            for x in get_method(method).frame_limits(story, settings, family)
        }

    unread = {(0, "no-face", "without-references", ("d",)), (1, "no-face", "without-references", ("d",))}
    left_out = {(0, "no-face", WITHOUT_CHARACTERS, ("d",)), (1, "no-face", WITHOUT_CHARACTERS, ("d",))}
    # PhotoMaker v1's ID encoder embeds the whole image: on SDXL the dog's images are read as the others'.
    assert limits("identitystory") == limits("photomaker") == limits("photomaker", identity="photos") == set()
    assert limits("storydiffusion", identity_frames="portraits") == set()
    assert limits("identitystory", "flux") == unread  # PuLID needs a face: discovered from its description instead
    assert limits("photomaker", photomaker_file="photomaker-v2.bin") == left_out  # v2 reads a face, cannot discover
    assert limits("photomaker", identity="discovered") == set()  # no image is read
    assert limits("storynizor", "sd15") == set()  # reference_crop=auto: a photo without a face is segmented or whole
    assert limits("storynizor", "sd15", reference_crop="face") == unread
    assert limits("storynizor", "sd15", reference_crop="face", identity="photos") == left_out
    # pulid, identity=auto: the dog is discovered from his description (as identitystory on FLUX) and, named first,
    # is the frame's one identity; identity=photos leaves him out and keeps the woman; discovered reads no image.
    assert limits("pulid", "flux") == unread | {(0, "characters-per-frame", WITHOUT_CHARACTERS, ("w", "m"))}
    assert limits("pulid", "flux", identity="photos") == left_out | {
        (0, "characters-per-frame", WITHOUT_CHARACTERS, ("m",))
    }
    assert limits("pulid", "flux", identity="discovered") == {
        (0, "characters-per-frame", WITHOUT_CHARACTERS, ("w", "m"))
    }
    assert get_method("pulid").reads_references(get_settings_class("pulid")(), "flux")  # a benchmark's img_ref mode


def test_outside_a_benchmark_the_limits_are_still_refused(mixed, tiny_sdxl):
    story = load_story(mixed / "03" / "story.json")
    with pytest.raises(StorycastError, match="'bo' appears alone in 0 frame"):
        plan_run(story, "storydiffusion", model=tiny_sdxl, generation=GENERATION)
    nobody = apply_limits(story, [FrameLimit(i, "x", "y", WITHOUT_CHARACTERS, ("ava", "bo", "rex")) for i in range(5)])
    with pytest.raises(StorycastError, match="no frame names a character"):
        plan_run(nobody, "storydiffusion", model=tiny_sdxl, generation=GENERATION)
    plan = plan_run(nobody, "storydiffusion", model=tiny_sdxl, generation=GENERATION, fallback=True)
    assert not [limit for limit in plan.limits if limit.fallback != AS_IS]  # nothing to leave out: plain frames


@pytest.mark.parametrize("method", list_methods())
def test_every_method_draws_the_mixed_story_with_its_limits_recorded_per_shot(method, mixed, request, tmp_path):
    family = get_method(method).families[0]
    models = request.getfixturevalue(MODELS[family])
    settings = None
    if method in FROM_PHOTOS:
        mixed, packs = request.getfixturevalue("with_faces")
        settings = {"face_models": str(packs[FROM_PHOTOS[method]])}
    story = load_story(mixed / "03" / "story.json")
    plan = plan_run(story, method, model=models, generation=GENERATION, method_settings=settings,
                    out_dir=tmp_path / "run", fallback=True, tokenizer=first_tokenizer(models))  # fmt: skip
    got: dict[int, set[tuple[str, tuple[str, ...]]]] = {}
    for limit in plan.limits:
        got.setdefault(limit.frame, set()).add((limit.limit, limit.characters))
    assert got == expected_limits(method, family)
    left_out = {
        (limit.frame, c) for limit in plan.limits if limit.fallback == WITHOUT_CHARACTERS for c in limit.characters
    }
    for index, frame in enumerate(plan.story.frames):  # the fallback did what it says, and nothing else
        assert set(frame.characters) == {c for c in story.frames[index].characters if (index, c) not in left_out}
    result = execute_plan(plan, None, models, RunOptions(out_dir=tmp_path / "run", storyboard=False))
    assert result.drawn == [0, 1, 2, 3, 4]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    recorded = {
        int(k): {(e["limit"], tuple(e["characters"])) for e in v} for k, v in manifest.get("limits", {}).items()
    }
    assert recorded == got


# -- the benchmark's own layout ------------------------------------------------------------------------------------

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
TIMESTAMP = re.compile(r"^\d{8}[_-]\d{6}$")


def naive_load_outputs(root: Path, method: str, mode: str, language: str) -> dict[str, dict[int, Path]]:
    """ViStoryBench's reader (``vistorybench/dataset_loader/read_outputs.py`` at 514cc31) as its path logic goes,
    for one method, mode and language, every timestamp: story id -> shot number -> image."""
    found: dict[str, dict[int, Path]] = {}
    method_dir = root / method
    language_first = (method_dir / language).is_dir()
    base = method_dir / language / mode if language_first else method_dir / mode / language
    for stamp in sorted(os.listdir(base)):
        stamp_dir = base / stamp
        for story in sorted((d for d in os.listdir(stamp_dir) if (stamp_dir / d).is_dir()), key=int):
            story_dir = stamp_dir / story
            nested = [d for d in os.listdir(story_dir) if (story_dir / d).is_dir() and TIMESTAMP.match(d)]
            target = (
                story_dir / max(nested, key=lambda d: datetime.strptime(d.replace("_", "-"), "%Y%m%d-%H%M%S"))
                if nested
                else story_dir
            )
            shot_sub = None
            for item in os.listdir(target):
                if item.lower() in {"shots", "shot"} or item.endswith("shot") or item.endswith("shots"):
                    shot_sub = target / item
            shot_base = shot_sub if shot_sub is not None and shot_sub.is_dir() else target
            shots = {}
            for name in sorted(os.listdir(shot_base)):
                path = shot_base / name
                if path.is_file() and name.lower().endswith(IMAGE_EXTS):
                    shots[int(name.split("_")[-1].split(".")[0])] = path
            found[story] = shots
    return found


def test_the_benchmark_writes_its_scorer_s_layout_once_and_never_over_a_user_s_file(mixed, tiny_sdxl, tmp_path):
    pytest.importorskip("onnxruntime")
    from storycast.evaluation.evaluator import Evaluator, ExtractorOptions
    from storycast.evaluation.presets import resolve_preset

    def run():
        evaluator = Evaluator(
            resolve_preset("identitystory", tiny=True), ExtractorOptions(tiny=True), cache_dir=tmp_path / "c"
        )
        return B.run_benchmark([B.resolve_suite(mixed)], "storydiffusion", tiny_sdxl, evaluator,
                               B.BenchmarkOptions(out_dir=tmp_path / "bench"), generation=GENERATION)  # fmt: skip

    run()
    record = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["vistory"]
    assert record["mode"] == "img_ref" and record["language"] == "en"  # PhotoMaker reads the images on SDXL
    assert TIMESTAMP.match(record["timestamp"]) and record["outputs"] == str(tmp_path / "bench" / "outputs")
    # Shots 2 and 4: Bo left out (solo-frames), Ava, Bo and Rex cut (class-word-cut).
    assert record["limits"]["frames_changed"] == 2 and record["limits"]["stories"] == {"ViStory/03": 2}
    assert "Limits: 2 frame(s) drawn by a fallback" in (tmp_path / "bench" / "results.md").read_text()

    read = naive_load_outputs(tmp_path / "bench" / "outputs", "storydiffusion", "img_ref", "en")
    story = json.loads((mixed / "03" / "story.json").read_text(encoding="utf-8-sig"))
    assert sorted(read) == ["03"] and sorted(read["03"]) == [int(shot["index"]) for shot in story["Shots"]]
    run_dir = tmp_path / "bench" / "ViStory" / "03"
    for number, path in read["03"].items():  # shot N is frame N - 1 of the run, byte for byte
        assert path.name == f"shot_{number:02d}.png"
        assert path.read_bytes() == (run_dir / "frames" / f"frame_{number - 1:03d}.png").read_bytes()
    stamps = tmp_path / "bench" / "outputs" / "storydiffusion" / "img_ref" / "en"
    times = {p: p.stat().st_mtime_ns for p in stamps.rglob("*")}

    again = run()  # a rerun: nothing drawn, nothing written, one timestamp folder
    assert again.drawn == [] and {p: p.stat().st_mtime_ns for p in stamps.rglob("*")} == times
    assert [p.name for p in stamps.iterdir()] == [record["timestamp"]]

    mine = read["03"][1]
    mine.write_bytes(b"a user's own image")
    with pytest.raises(RunFolderError, match="not an image this benchmark wrote"):
        run()
    assert mine.read_bytes() == b"a user's own image"

"""Bad story files never end in a traceback: each gives a StoryError naming the file, the field and the fix,
raised while the story loads (before any model would)."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
import yaml
from PIL import Image

from storycast.errors import StoryError
from storycast.story import parse
from storycast.story.parse import load_story, parse_story
from tests.helpers import small_story_data


def refused(path):
    """The problems of a story file that must not load, keyed by field."""
    with pytest.raises(StoryError) as info:
        load_story(path)
    assert str(path) in str(info.value)
    return {p.field: p for p in info.value.problems}


def story_text(**settings) -> str:
    data = small_story_data()
    data["settings"].update(settings)
    return yaml.safe_dump(data, sort_keys=False)


def png(path, size=(32, 32)):
    Image.effect_noise(size, 64).convert("RGB").save(path)
    return path


# Encodings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [
        ("utf-8", b""),
        ("utf-8", b"\xef\xbb\xbf"),
        ("utf-16-le", b"\xff\xfe"),
        ("utf-16-be", b"\xfe\xff"),
        ("utf-32-le", b"\xff\xfe\x00\x00"),
        ("utf-32-be", b"\x00\x00\xfe\xff"),
    ],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_utf8_with_or_without_bom_and_utf16_32_with_bom_are_read(tmp_path, encoding, bom, suffix):
    data = small_story_data()
    data["characters"][0]["description"] = "a young woman with red hair, née Ağaoğlu"
    text = json.dumps(data, ensure_ascii=False) if suffix == ".json" else yaml.safe_dump(data, allow_unicode=True)
    path = tmp_path / f"story{suffix}"
    path.write_bytes(bom + text.encode(encoding))
    story = load_story(path)
    assert story.characters[0].description.endswith("née Ağaoğlu")


def test_bytes_that_are_not_utf8_are_refused_with_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(story_text().replace("red hair", "rote Haare, schön").encode("latin-1"))
    problem = refused(path)[""]
    assert "(line 5) is not UTF-8 text" in problem.message and "UTF-8" in problem.fix


def test_utf16_without_a_bom_is_refused(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_bytes(story_text().encode("utf-16-le"))
    problem = refused(path)[""]
    assert "NUL" in problem.message and "without a BOM" in problem.message and "UTF-8" in problem.fix


def test_a_bom_that_lies_is_refused(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_bytes(b"\xff\xfe" + b"x")  # UTF-16 BOM, then half a character
    assert "is not UTF-16 text" in refused(path)[""].message


# Paths in references, masks and control_image ---------------------------------------------------------------


def frame_paths(tmp_path, name):
    """A story naming ``name`` as a reference photo, a mask and a control image; its problems by field."""
    data = small_story_data()
    data["characters"][0]["references"] = [str(png(tmp_path / "ok.png")), name]
    data["frames"][0]["masks"] = {"mara": name}
    data["frames"][1]["control_image"] = name
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    problems = refused(path)
    assert set(problems) == {"characters[0].references[1]", "frames[0].masks.mara", "frames[1].control_image"}
    return problems


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_control_characters_are_refused_with_their_line_and_the_character_meant(tmp_path, suffix):
    # U+0092 is Windows-1252's right quote decoded as Latin-1; PyYAML's reader refuses it with a ReaderError.
    path = tmp_path / f"story{suffix}"
    body = (
        '{"frames": [\n  "a\xc2\x92b",\n  "c\x01d"\n]}'
        if suffix == ".json"
        else 'frames:\n  - "a\xc2\x92b"\n  - "c\x01d"\n'
    )
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(StoryError) as info:
        load_story(path)
    problems = info.value.problems
    assert [p.message for p in problems] == [
        "(line 2) holds the control character U+0092",
        "(line 3) holds the control character U+0001",
    ]
    assert "'’'" in problems[0].fix and "delete it" in problems[1].fix


def test_printable_unicode_is_read_as_written(tmp_path):
    path = tmp_path / "story.yaml"
    data = small_story_data(1)
    data["frames"][0]["text"] = "{mara} says “hé” — ok… 日本 🙂\tend"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert load_story(path).frames[0].text == data["frames"][0]["text"]


def test_paths_with_a_nul_byte_are_refused(tmp_path):
    for problem in frame_paths(tmp_path, "photos/ma\0ra.png").values():
        assert "NUL byte" in problem.message and "remove it" in problem.fix


def test_paths_too_long_for_the_file_system_are_refused(tmp_path):
    for problem in frame_paths(tmp_path, "x" * 5000 + ".png").values():
        assert "too long for the file system (" in problem.message and "shorter path" in problem.fix
        assert len(problem.message) < 300  # the path itself is shortened


def test_a_symlink_loop_is_refused(tmp_path):
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    for problem in frame_paths(tmp_path, "loop.png").values():
        assert "cannot be read" in problem.message


# Nesting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_document_nested_1000_deep_is_refused_before_walking_it(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    nested = "[" * 1000 + "]" * 1000
    path.write_text(f'{{"title": "x", "methods": {{"vanilla": {{"x": {nested}}}}}}}', encoding="utf-8")
    problem = refused(path)[""]
    assert f"nested more than {parse.MAX_DEPTH} deep" in problem.message and "(line 1)" in problem.message


def test_block_yaml_nested_deeply_is_refused(write_story):
    text = "title: x\nmethods:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)) + "  " * 201 + "v\n"
    assert f"nested more than {parse.MAX_DEPTH} deep" in refused(write_story(text))[""].message


def test_aliases_that_nest_deeply_are_refused(write_story):
    levels = ["a0: &a0 [[[[[[[[[[1]]]]]]]]]]"] + [f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]" for i in range(1, 8)]
    text = "title: x\nmethods:\n  vanilla:\n" + "".join(f"    {line}\n" for line in levels) + "frames: [x]\n"
    assert "aliases (*name) here nest more than" in refused(write_story(text))[""].message


def test_parse_story_refuses_a_deep_document_built_in_code():
    deep: list = []
    for _ in range(1000):
        deep = [deep]
    data = small_story_data()
    data["methods"] = {"vanilla": {"x": deep}}
    with pytest.raises(StoryError, match=f"nested more than {parse.MAX_DEPTH} deep"):
        parse_story(data)


def test_parse_story_refuses_a_document_that_holds_itself():
    data = small_story_data()
    loop: list = []
    loop.append(loop)
    data["methods"] = {"vanilla": {"x": loop}}
    with pytest.raises(StoryError, match=f"nested more than {parse.MAX_DEPTH} deep"):
        parse_story(data)


# Huge integers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["settings", "methods"])
@pytest.mark.parametrize("digits", ["9" * 5000, "0x" + "f" * 5000, "-" + "1_" * 2500 + "1"])
def test_integers_of_thousands_of_digits_are_refused_with_their_digit_count(write_story, where, digits):
    if where == "settings":
        text, field, line = f"title: x\nframes: [x]\nsettings:\n  seed: {digits}\n", "settings.seed", 4
    else:
        text = f"title: x\nframes: [x]\nmethods:\n  vanilla:\n    unknown_knob: {digits}\n"
        field, line = "methods.vanilla.unknown_knob", 5
    problems = refused(write_story(text))
    assert problems[field].message.startswith(f"(line {line}) a whole number of ")
    assert "digits is too long" in problems[field].message
    assert f"at most {parse.MAX_INT_DIGITS} digits" in problems[field].fix


def test_json_integers_of_thousands_of_digits_are_refused(tmp_path):
    path = tmp_path / "story.json"
    path.write_text('{"title": "x", "frames": ["x"], "settings": {"steps": ' + "7" * 5000 + "}}", encoding="utf-8")
    problem = refused(path)["settings.steps"]
    assert "a whole number of 5,000 digits is too long" in problem.message


def test_parse_story_shows_a_huge_integer_by_its_digit_count():
    data = small_story_data()
    data["settings"]["seed"] = 10**5000
    data["frames"][0]["seed"] = 10**30
    data["characters"][0]["description"] = 10**5000  # must be text: the message may not str() it
    with pytest.raises(StoryError) as info:
        parse_story(data)
    problems = {p.field: p.message for p in info.value.problems}
    assert "a whole number of 5,001 digits is too long" in problems["settings.seed"]
    assert "a whole number of 5,001 digits is too long" in problems["characters[0].description"]
    data["settings"] = {10**5000: 1}
    data["characters"][0]["description"] = "a young woman"
    with pytest.raises(StoryError) as info:
        parse_story(data)  # a huge key too: every message would str() it
    assert [p.field for p in info.value.problems] == ["settings.a whole number of 5,001 digits"]
    data["settings"] = {}
    with pytest.raises(StoryError) as info:
        parse_story(data)
    assert "a whole number of 31 digits is out of range" in info.value.problems[0].message


# Alias bombs and file size ----------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "title: x\nframes: [x]\nunknown_key:\n" + "".join(f"  {line}\n" for line in lines)


def test_a_billion_laughs_under_an_unknown_key_is_refused_while_composing(write_story):
    problem = refused(write_story(billion_laughs()))[""]
    assert f"expand to more than {parse.MAX_VALUES:,} values" in problem.message and "(line " in problem.message


def test_too_many_aliases_are_refused(write_story):
    text = "title: x\nframes: [x]\nstyle: &s a photo of\nmethods:\n  vanilla:\n    many: [" + ", ".join(
        ["*s"] * (parse.MAX_ALIASES + 1)
    )
    assert f"more than {parse.MAX_ALIASES} aliases" in refused(write_story(text + "]\n"))[""].message


def test_a_recursive_alias_is_refused(write_story):
    text = "title: x\nframes: [x]\nmethods:\n  vanilla: &loop\n    again: *loop\n"
    assert "refers to the list or mapping that holds it" in refused(write_story(text))[""].message


def test_a_few_aliases_still_work(write_story):
    text = story_text().replace("style: A photo of", "style: &s A photo of") + "methods:\n  vanilla:\n    x: *s\n"
    assert load_story(write_story(text)).methods["vanilla"]["x"] == "A photo of"


def test_a_file_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(story_text().encode() + b"#" * parse.MAX_STORY_BYTES)
    problem = refused(path)[""]
    assert "larger than 10 MiB" in problem.message and "split" in problem.fix


def test_a_document_of_too_many_values_is_refused(tmp_path):
    path = tmp_path / "wide.json"
    path.write_text(json.dumps({"title": "x", "frames": ["x"], "methods": {"v": {"x": [0] * 200_000}}}))
    assert f"more than {parse.MAX_VALUES:,} values" in refused(path)[""].message


# Accepted before, refused now -------------------------------------------------------------------------------


def test_a_key_written_twice_is_refused_with_its_line(write_story):
    text = story_text().replace("  seed: 3\n", "  seed: 3\n  steps: 40\n")
    problem = refused(write_story(text))["settings.steps"]
    assert "the field 'steps' is written twice (first at line" in problem.message
    assert problem.message.startswith(f"(line {text.splitlines().index('  steps: 40') + 1})")
    assert "keep one" in problem.fix


def test_a_frame_key_written_twice_in_json_is_refused(tmp_path):
    path = tmp_path / "story.json"
    path.write_text('{"title": "x",\n "frames": [{"text": "a", "text": "b"}]}', encoding="utf-8")
    problem = refused(path)["frames[0].text"]
    assert "written twice" in problem.message and "(line 2)" in problem.message


def test_merge_keys_may_be_overridden(write_story):
    text = story_text() + "methods:\n  base: &b {x: 1}\n  vanilla:\n    <<: *b\n    x: 2\n"
    assert load_story(write_story(text)).methods["vanilla"] == {"x": 2}


def test_steps_written_as_a_time_are_not_read_in_base_60(write_story):
    problem = refused(write_story(story_text().replace("steps: 2", "steps: 1:30")))["settings.steps"]
    assert "must be a whole number, got str '1:30'" in problem.message and "base-60" in problem.fix
    forced = refused(write_story(story_text().replace("steps: 2", "steps: !!int 1:30"), "b.yaml"))
    assert "base-60" in forced["settings.steps"].message


def test_an_impossible_date_is_a_yaml_error(write_story):
    problem = refused(write_story(story_text() + "methods:\n  vanilla:\n    when: 2023-02-30\n"))[""]
    assert "invalid YAML: cannot read" in problem.message and "(line" in problem.message


@pytest.mark.parametrize(
    ("key", "value", "limit"),
    [
        ("width", 2**70, f"between {parse.MIN_SIDE} and {parse.MAX_SIDE}"),
        ("height", 8192, f"between {parse.MIN_SIDE} and {parse.MAX_SIDE}"),
        ("width", 32, f"between {parse.MIN_SIDE} and {parse.MAX_SIDE}"),
        ("steps", 2**80, f"between 1 and {parse.MAX_STEPS}"),
        ("batch_size", 2**65, f"between 1 and {parse.MAX_BATCH}"),
        ("seed", 2**64, f"between 0 and {parse.MAX_SEED}"),
        ("seed", 2**100, f"between 0 and {parse.MAX_SEED}"),
    ],
)
def test_settings_beyond_the_planners_limits_are_refused(write_story, key, value, limit):
    problem = refused(write_story(story_text(**{key: value})))[f"settings.{key}"]
    assert "out of range" in problem.message and limit in problem.fix


def test_the_limits_are_the_run_planners():
    from storycast.runs import plan

    assert (parse.MAX_SIDE, parse.MAX_STEPS, parse.MAX_BATCH, parse.MAX_SEED) == (
        plan.MAX_SIDE,
        plan.MAX_STEPS,
        plan.MAX_BATCH,
        plan.MAX_SEED,
    )


def test_seeds_up_to_2_64_are_taken_and_beyond_refused(write_story):
    data = small_story_data(2)
    data["settings"]["seed"] = parse.MAX_SEED - 1
    assert load_story(write_story(data)).frame_seed(1) == parse.MAX_SEED
    data["frames"][0]["seed"] = 2**64
    data["settings"]["seed"] = parse.MAX_SEED
    problems = refused(write_story(data, "b.yaml"))
    assert "out of range" in problems["frames[0].seed"].message
    assert "frame 1 would draw from seed" in problems["settings.seed"].message
    assert "seed_policy: same" in problems["settings.seed"].fix


def test_a_guidance_scale_must_be_finite(write_story):
    problem = refused(write_story(story_text(guidance_scale=float("inf"))))["settings.guidance_scale"]
    assert "not a finite number" in problem.message


# Files a story names ----------------------------------------------------------------------------------------


def truncated_png(path):
    png(path, (64, 64))
    path.write_bytes(path.read_bytes()[:100])
    return path


def bomb_png(path, side=20_000):
    """A PNG whose header says side x side pixels (a few hundred bytes on disk)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (side // 8 + 1) * 16)  # a few rows; the header alone must refuse it
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path):
    Image.effect_noise((256, 256), 64).convert("RGB").save(path, quality=90)
    path.write_bytes(path.read_bytes()[:2000])
    return path


def text_file(path):
    path.write_text("hello, not an image")
    return path


def empty_file(path):
    path.write_bytes(b"")
    return path


def folder(path):
    path.mkdir()
    return path


BAD_FILES = {
    "not an image": (text_file, "is not an image in a format we read"),
    "empty": (empty_file, "is empty (0 bytes)"),
    "truncated png": (truncated_png, "is damaged or truncated"),
    "truncated jpeg": (truncated_jpeg, "is damaged or truncated"),
    "decompression bomb": (
        bomb_png,
        "is too large to open safely (400,000,000 pixels): a possible decompression bomb",
    ),
    "directory": (folder, "is a folder, not a file"),
}
WHAT = {
    "characters[0].references[1]": "reference photo",
    "frames[0].masks.mara": "mask image",
    "frames[1].control_image": "control image",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_files_a_story_names_that_are_not_good_images_are_refused_at_load(tmp_path, kind):
    make, expected = BAD_FILES[kind]
    bad = make(tmp_path / ("bad.jpg" if "jpeg" in kind else "bad.png"))
    for field, problem in frame_paths(tmp_path, bad.name).items():
        assert f"{WHAT[field]} '{bad.name}' {expected}" in problem.message, field
        assert problem.fix, field


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    bomb = Image.new("1", (20_000, 20_000))
    bomb.save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    problem = frame_paths(tmp_path, "bomb.png")["frames[0].masks.mara"]
    assert "decompression bomb" in problem.message and "MAX_IMAGE_PIXELS" in problem.fix


@pytest.mark.parametrize("special", ["/dev/null", "/proc/self/status", "fifo"])
def test_devices_pipes_and_proc_files_are_refused(tmp_path, special):
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")  # opening it would block: it must be refused before
        special = str(tmp_path / "fifo")
    if not os.path.exists(special):
        pytest.skip(f"{special} is not on this system")
    for problem in frame_paths(tmp_path, special).values():
        assert "is a device, pipe or socket, not a regular file" in problem.message or (
            "is a system file under /proc" in problem.message
        )


def test_good_png_and_jpeg_files_are_taken(tmp_path, write_story):
    png(tmp_path / "mara.png")
    Image.effect_noise((64, 48), 64).convert("RGB").save(tmp_path / "pose.jpg")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    data = small_story_data()
    data["characters"][0]["references"] = ["mara.png"]
    data["frames"][0]["masks"] = {"mara": "mask.png"}
    data["frames"][0]["control_image"] = "pose.jpg"
    story = load_story(write_story(data))
    assert story.frames[0].control_image == (tmp_path / "pose.jpg").resolve()


@pytest.mark.parametrize("special", ["/dev/null", "/proc/self/status", "folder"])
def test_a_story_path_that_is_not_a_regular_file_is_refused(tmp_path, special):
    if special == "folder":
        special = str(tmp_path)
    if not os.path.exists(special):
        pytest.skip(f"{special} is not on this system")
    with pytest.raises(StoryError, match=r"is a folder|is a device|is a system file"):
        load_story(special)

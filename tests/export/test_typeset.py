"""Lettering: captions split into narration and speech, text fitted to its box, the fonts shipped as package data."""

from __future__ import annotations

import fnmatch
from importlib import resources

import pytest

from storycast.export.typeset import FONTS, FONTS_FOLDER, Lettering, fit_text, font, font_bytes, split_caption
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Mia climbs the stairs.", Lettering("Mia climbs the stairs.")),
        ('Mia finds a map. "What is this?"', Lettering("Mia finds a map.", ("What is this?",))),
        ('Mia: "A map!" Grandpa: “Careful.”', Lettering("", ("A map!", "Careful."))),
        ('"Tomorrow," she whispers.', Lettering("she whispers.", ("Tomorrow",))),
        ('She says "hi" and leaves.', Lettering("She says and leaves.", ("hi",))),
        ('A "" empty quote', Lettering("A empty quote")),
        ('An unmatched "quote', Lettering('An unmatched "quote')),
    ],
)
def test_quoted_text_of_a_caption_is_speech_and_the_rest_narration(caption, expected):
    assert split_caption(caption) == expected


def test_text_is_wrapped_to_its_width_then_set_smaller_then_cut():
    short = fit_text("a few words", "comic", 40, 400, 200)
    assert short.lines == ("a few words",) and short.size == 40 and not short.cut
    long = "word " * 30
    wrapped = fit_text(long, "comic", 40, 400, 10_000)
    assert len(wrapped.lines) > 1 and wrapped.size == 40 and not wrapped.cut
    assert all(font("comic", 40).getlength(line) <= 400 for line in wrapped.lines)
    smaller = fit_text(long, "comic", 40, 400, wrapped.height - 1)
    assert smaller.size < 40 and smaller.height <= wrapped.height - 1 and not smaller.cut
    cut = fit_text(long, "comic", 40, 400, 60)
    assert cut.cut and cut.height <= 60 and cut.lines[-1].endswith("…")
    assert fit_text("", "serif", 20, 100, 100).lines == ()


def test_the_fonts_ship_inside_the_package_with_their_licences():
    folder = resources.files("storycast.export").joinpath(FONTS_FOLDER)
    names = {item.name for item in folder.iterdir()}
    assert set(FONTS.values()) <= names
    assert {"OFL-ComicNeue.txt", "LICENSE-DejaVu.txt"} <= names
    assert "SIL OPEN FONT LICENSE Version 1.1" in folder.joinpath("OFL-ComicNeue.txt").read_text(encoding="utf-8")
    assert "Bitstream Vera" in folder.joinpath("LICENSE-DejaVu.txt").read_text(encoding="utf-8")
    assert sum(len(font_bytes(face)) for face in FONTS) < 1_500_000
    for face in FONTS:
        assert font(face, 12).getlength("Hello") > 0
    assert font("comic", 12).getname()[0] == "Comic Neue" and font("serif", 12).getname()[0] == "DejaVu Serif"


def test_the_fonts_are_package_data_in_the_build_configuration():
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["storycast"]
    shipped = [
        f"export/{FONTS_FOLDER}/{name}" for name in [*FONTS.values(), "OFL-ComicNeue.txt", "LICENSE-DejaVu.txt"]
    ]
    missing = [path for path in shipped if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"

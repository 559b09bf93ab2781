"""Export settings: page sizes by name or with a unit, turned sideways, in pixels at a DPI; bad values refused."""

from __future__ import annotations

import pytest

from storycast.errors import SettingsError
from storycast.export.settings import ExportSettings, parse_page_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A4", (210, 297)),
        ("a5", (148, 210)),
        ("Letter", (215.9, 279.4)),
        ("square", (210, 210)),
        ("6x9in", (152.4, 228.6)),
        ("148 x 210 mm", (148, 210)),
        ("20×25cm", (200, 250)),
    ],
)
def test_page_sizes_by_name_or_with_a_unit(text, expected):
    assert parse_page_size(text) == pytest.approx(expected)


def test_a_page_in_pixels_at_a_dpi_and_turned_sideways():
    settings = ExportSettings(page="A4", dpi=300)
    # 210 mm = 8.268 in -> 2480 px; 297 mm = 11.693 in -> 3508 px (the usual A4 at 300 DPI).
    assert (settings.pixels(settings.page_mm[0]), settings.pixels(settings.page_mm[1])) == (2480, 3508)
    assert ExportSettings(page="A4", landscape=True).page_mm == (297, 210)
    assert ExportSettings(page="9x6in", landscape=True).page_mm == pytest.approx((228.6, 152.4))
    assert settings.points(72) == 300  # a point is 1/72 inch


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"page": "B7"}, r"page size 'B7' is neither a known name.*Fix: use one of A3, A4"),
        ({"page": "10x10"}, r"WIDTHxHEIGHT with a unit"),
        ({"page": "1x2in"}, r"side of 25.4 mm.*between 50 mm and 1000 mm"),
        ({"page": "5x9000mm"}, r"side of 5 mm"),
        ({"dpi": 20}, r"dpi 20 is out of range.*from 36 to 1200"),
        ({"dpi": 150.0}, r"dpi 150.0 is out of range"),
        ({"page": "A3", "dpi": 1200}, r"more than 64,000,000.*Fix: use at most \d+ DPI"),
        ({"margin_mm": 60}, r"margin_mm 60 is out of range"),
        ({"gutter_mm": -1}, r"gutter_mm -1 is out of range"),
        ({"text_pt": float("nan")}, r"text_pt nan is out of range"),
        ({"columns": 0}, r"columns 0 is out of range"),
        ({"rows": True}, r"rows True is out of range"),
        ({"comic_style": "manga"}, r"comic style 'manga' is not known.*classic, four-panel"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(fields, message):
    with pytest.raises(SettingsError, match=message):
        ExportSettings(**fields)


def test_the_largest_dpi_the_message_offers_is_accepted():
    with pytest.raises(SettingsError, match=r"at most (\d+) DPI") as caught:
        ExportSettings(page="A3", dpi=1200)
    most = int(caught.value.args[0].split("at most ")[1].split(" DPI")[0])
    ExportSettings(page="A3", dpi=most)
    with pytest.raises(SettingsError):
        ExportSettings(page="A3", dpi=most + 1)

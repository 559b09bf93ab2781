from __future__ import annotations

import pytest
from PIL import Image

from storycast.runs.storyboard import render_storyboard, wrap_text


def test_grid_layout_and_missing_frames():
    frames = [Image.new("RGB", (64, 64), (255, 0, 0)), None, Image.new("RGB", (64, 64), (0, 0, 255))]
    sheet = render_storyboard(frames, ["one", "two", "three"], title="T", columns=3, cell_width=256)
    assert sheet.width > 3 * 256 and sheet.height > 256
    # The first cell holds the (upscaled) red frame.
    assert sheet.getpixel((sheet.width // 6, sheet.height // 2)) == (255, 0, 0)


def test_captions_must_match_frames():
    with pytest.raises(ValueError, match="captions"):
        render_storyboard([Image.new("RGB", (8, 8))], ["a", "b"])


def test_wrap_text_limits_lines_and_marks_the_cut():
    from PIL import ImageFont

    font = ImageFont.load_default()
    lines = wrap_text("word " * 200, font, 100, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import StoryError
from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError, MaskProvider
from storycast.masks.user import UserMasks, mask_from_image, read_mask_file

HEIGHT, WIDTH = 6, 8


def _left_half(value_inside: int, value_outside: int, dtype=np.uint8) -> np.ndarray:
    """(HEIGHT, WIDTH) array: ``value_inside`` on the left half, ``value_outside`` on the right half."""
    array = np.full((HEIGHT, WIDTH), value_outside, dtype=dtype)
    array[:, : WIDTH // 2] = value_inside
    return array


LEFT_HALF = torch.from_numpy(_left_half(1, 0).astype(bool))


def _inputs(tmp_path, masks, characters=("lena",), frame_index=0, size=(WIDTH, HEIGHT)) -> MaskInputs:
    return MaskInputs(
        image=Image.new("RGB", size),
        characters=[CharacterQuery(character_id, "woman") for character_id in characters],
        frame_index=frame_index,
        user_masks=masks,
    )


def test_grey_levels_are_thresholded_at_half():
    image = Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8), mode="L")
    assert mask_from_image(image).tolist() == [[False, False, True, True]]


def test_rgb_uses_luminance():
    pixels = np.zeros((1, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 255, 255)  # white: inside
    pixels[0, 1] = (255, 0, 0)  # red: luminance 76, outside
    pixels[0, 2] = (0, 255, 0)  # green: luminance 150, inside
    assert mask_from_image(Image.fromarray(pixels, mode="RGB")).tolist() == [[True, False, True]]


def test_rgba_with_transparency_uses_alpha():
    pixels = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)  # black everywhere...
    pixels[..., 3] = _left_half(255, 0)  # ...opaque on the left
    assert torch.equal(mask_from_image(Image.fromarray(pixels, mode="RGBA")), LEFT_HALF)


def test_alpha_is_thresholded_at_half():
    pixels = np.full((1, 4, 4), 255, dtype=np.uint8)
    pixels[0, :, 3] = (0, 127, 128, 255)
    image = Image.fromarray(pixels, mode="RGBA")
    assert mask_from_image(image).tolist() == [[False, False, True, True]]
    assert mask_from_image(image.convert("LA")).tolist() == [[False, False, True, True]]


def test_fully_opaque_rgba_uses_luminance():
    pixels = np.full((HEIGHT, WIDTH, 4), 255, dtype=np.uint8)
    pixels[..., 0] = pixels[..., 1] = pixels[..., 2] = _left_half(255, 0)
    assert torch.equal(mask_from_image(Image.fromarray(pixels, mode="RGBA")), LEFT_HALF)


def test_palette_with_a_transparent_colour_uses_alpha():
    image = Image.fromarray(_left_half(1, 0), mode="L").convert("P")
    image.info["transparency"] = 0  # palette index 0 (the right half) is transparent
    assert image.mode == "P"
    assert torch.equal(mask_from_image(image), LEFT_HALF)


def test_sixteen_bit_and_one_bit_images():
    sixteen = Image.fromarray(_left_half(40000, 30000, dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    assert torch.equal(mask_from_image(sixteen), LEFT_HALF)
    one_bit = Image.fromarray(_left_half(255, 0), mode="L").convert("1")
    assert torch.equal(mask_from_image(one_bit), LEFT_HALF)


def test_provider_reads_each_character_file(tmp_path):
    Image.fromarray(_left_half(255, 0), mode="L").save(tmp_path / "lena.png")
    Image.fromarray(_left_half(0, 255), mode="L").convert("RGB").save(tmp_path / "tom.png")
    provider = UserMasks()
    assert isinstance(provider, MaskProvider)
    assert provider.name == "user"
    inputs = _inputs(
        tmp_path, {"tom": tmp_path / "tom.png", "lena": tmp_path / "lena.png"}, characters=("lena", "tom")
    )
    masks = provider(inputs)
    assert list(masks) == ["lena", "tom"]
    assert torch.equal(masks["lena"], LEFT_HALF)
    assert torch.equal(masks["tom"], ~LEFT_HALF)
    assert all(mask.dtype == torch.bool for mask in masks.values())


def test_other_sizes_are_resized_with_nearest_and_logged(tmp_path, caplog):
    Image.fromarray(_left_half(255, 0), mode="L").save(tmp_path / "lena.png")  # 8 x 6
    with caplog.at_level(logging.INFO, logger="storycast.masks.user"):
        masks = UserMasks()(_inputs(tmp_path, {"lena": tmp_path / "lena.png"}, size=(16, 12)))
    mask = masks["lena"]
    assert mask.shape == (12, 16)
    assert mask[:, :8].all()
    assert not mask[:, 8:].any()
    assert "resized" in caplog.text
    assert "8x6" in caplog.text
    assert "16x12" in caplog.text


def test_a_different_aspect_ratio_is_a_warning(tmp_path, caplog):
    Image.fromarray(_left_half(255, 0), mode="L").save(tmp_path / "lena.png")
    with caplog.at_level(logging.INFO, logger="storycast.masks.user"):
        masks = UserMasks()(_inputs(tmp_path, {"lena": tmp_path / "lena.png"}, size=(8, 8)))
    assert masks["lena"].shape == (8, 8)
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


def test_missing_entry_names_the_frame_the_character_and_the_story_field(tmp_path):
    Image.fromarray(_left_half(255, 0), mode="L").save(tmp_path / "lena.png")
    inputs = _inputs(tmp_path, {"lena": tmp_path / "lena.png"}, characters=("lena", "tom"), frame_index=2)
    with pytest.raises(MaskNotFoundError) as caught:
        UserMasks()(inputs)
    assert (caught.value.frame_index, caught.value.character_id) == (2, "tom")
    message = str(caught.value)
    for needle in ("frame 3", "'tom'", "frames[2].masks.tom"):
        assert needle in message


def test_missing_file_names_the_file_and_the_field(tmp_path):
    inputs = _inputs(tmp_path, {"lena": tmp_path / "nope.png"}, frame_index=1)
    with pytest.raises(StoryError, match=r"frames\[1\]\.masks\.lena: mask file '.*nope\.png' does not exist"):
        UserMasks()(inputs)


def test_unreadable_file_names_the_file(tmp_path):
    (tmp_path / "lena.png").write_bytes(b"not an image at all")
    with pytest.raises(StoryError, match=r"frames\[0\]\.masks\.lena: cannot read mask file '.*lena\.png'"):
        UserMasks()(_inputs(tmp_path, {"lena": tmp_path / "lena.png"}))


def test_truncated_file_names_the_file(tmp_path):
    Image.fromarray(_left_half(255, 0), mode="L").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "lena.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoryError, match=r"cannot read mask file '.*lena\.png'"):
        read_mask_file(tmp_path / "lena.png", "frames[0].masks.lena")


def test_an_all_black_mask_is_refused(tmp_path):
    Image.new("L", (WIDTH, HEIGHT), 0).save(tmp_path / "lena.png")
    with pytest.raises(StoryError, match="marks nothing"):
        UserMasks()(_inputs(tmp_path, {"lena": tmp_path / "lena.png"}))

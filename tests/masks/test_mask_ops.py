import numpy as np
import pytest
import torch
from scipy import ndimage

from storycast.masks.ops import (
    area_order,
    clean_masks,
    dilate,
    is_injection_step,
    largest_component,
    make_disjoint,
    progressive_kernel,
    progressive_masks,
    resize_masks_nearest,
    scale_pixels,
    union,
)


def _random_mask(height: int, width: int, density: float, seed: int) -> torch.Tensor:
    return torch.rand(height, width, generator=torch.Generator().manual_seed(seed)) < density


def _box(height: int, width: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def _naive_dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    height, width = mask.shape
    out = torch.zeros_like(mask)
    for y in range(height):
        for x in range(width):
            window = mask[max(y - pixels, 0) : y + pixels + 1, max(x - pixels, 0) : x + pixels + 1]
            out[y, x] = bool(window.any())
    return out


def _naive_largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Flood fill in raster order, 4-connectivity; the first component met wins ties."""
    height, width = mask.shape
    grid = mask.tolist()
    label = [[0] * width for _ in range(height)]
    sizes = [0]
    for y0 in range(height):
        for x0 in range(width):
            if not grid[y0][x0] or label[y0][x0]:
                continue
            sizes.append(0)
            current = len(sizes) - 1
            stack = [(y0, x0)]
            label[y0][x0] = current
            while stack:
                y, x = stack.pop()
                sizes[current] += 1
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < height and 0 <= nx < width and grid[ny][nx] and not label[ny][nx]:
                        label[ny][nx] = current
                        stack.append((ny, nx))
    if len(sizes) == 1:
        return torch.zeros_like(mask)
    best = max(range(1, len(sizes)), key=lambda k: (sizes[k], -k))
    return torch.tensor([[value == best for value in row] for row in label])


def _assert_disjoint(masks: torch.Tensor) -> None:
    assert int(masks.sum(dim=0).max()) <= 1


# --- dilation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixels", [0, 1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_dilate_matches_naive_square_window(pixels, seed):
    mask = _random_mask(17, 23, 0.08, seed)
    assert torch.equal(dilate(mask, pixels), _naive_dilate(mask, pixels))


def test_dilate_matches_scipy_binary_dilation_with_square_structure():
    mask = _random_mask(64, 48, 0.02, 3)
    for pixels in (1, 4, 10):
        expected = ndimage.binary_dilation(mask.numpy(), structure=np.ones((2 * pixels + 1,) * 2, dtype=bool))
        assert torch.equal(dilate(mask, pixels), torch.from_numpy(expected))


def test_dilate_single_pixel_gives_a_square_and_is_batched():
    single = torch.zeros(2, 11, 11, dtype=torch.bool)
    single[0, 5, 5] = True
    single[1, 0, 0] = True
    out = dilate(single, 2)
    assert torch.equal(out[0], _box(11, 11, 3, 3, 8, 8))
    assert torch.equal(out[1], _box(11, 11, 0, 0, 3, 3))


def test_dilate_accepts_float_masks_and_rejects_bad_pixels():
    mask = torch.zeros(5, 5)
    mask[2, 2] = 1.0
    assert dilate(mask, 1).sum() == 9
    with pytest.raises(ValueError, match="pixels"):
        dilate(mask, -1)
    with pytest.raises(ValueError, match="pixels"):
        dilate(mask, 1.5)


# --- connected components ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_largest_component_matches_flood_fill(seed, density):
    mask = _random_mask(19, 27, density, seed)
    assert torch.equal(largest_component(mask), _naive_largest_component(mask))


def test_largest_component_uses_4_connectivity_and_first_on_ties():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal: two components of size 1
    mask[4:6, 4] = True  # size 2, met last
    mask[3, 0:2] = True  # size 2, met first
    expected = torch.zeros_like(mask)
    expected[3, 0:2] = True
    assert torch.equal(largest_component(mask), expected)


def test_largest_component_batched_matches_per_image_and_keeps_empty():
    masks = torch.stack(
        [_random_mask(30, 30, 0.5, 10), torch.zeros(30, 30, dtype=torch.bool), _box(30, 30, 2, 2, 9, 9)]
    )
    out = largest_component(masks)
    for index in range(3):
        assert torch.equal(out[index], largest_component(masks[index]))
    assert not out[1].any()
    assert torch.equal(out[2], masks[2])


def test_largest_component_takes_float_masks_and_several_leading_dims():
    masks = torch.stack([_random_mask(12, 14, 0.55, seed) for seed in range(6)]).reshape(2, 3, 12, 14)
    out = largest_component(masks.float())
    assert out.dtype == torch.bool and out.device == masks.device and out.shape == masks.shape
    for index in range(6):
        assert torch.equal(out.reshape(6, 12, 14)[index], _naive_largest_component(masks.reshape(6, 12, 14)[index]))


def test_largest_component_matches_scipy_on_a_large_mask():
    mask = _random_mask(256, 256, 0.58, 11)
    labels, _ = ndimage.label(mask.numpy())
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    assert torch.equal(largest_component(mask), torch.from_numpy(labels == sizes.argmax()))


def test_largest_component_follows_a_long_snake():
    snake = torch.zeros(64, 64, dtype=torch.bool)
    snake[0:61:2, :] = True
    for row in range(1, 60, 2):
        snake[row, 63 if (row // 2) % 2 == 0 else 0] = True
    island = torch.zeros_like(snake)
    island[63, 10:40] = True
    assert torch.equal(largest_component(snake | island), snake)


# --- disjoint / clean-up ----------------------------------------------------------------------------------


def test_area_order_is_stable_smallest_first():
    masks = [_box(8, 8, 0, 0, 4, 4), _box(8, 8, 0, 0, 2, 2), _box(8, 8, 4, 4, 8, 8)]
    assert area_order(masks) == [1, 0, 2]


def test_make_disjoint_gives_overlap_to_the_smaller_mask_in_original_order():
    big = _box(10, 10, 0, 0, 10, 6)
    small = _box(10, 10, 3, 4, 6, 9)
    out = make_disjoint([big, small])
    assert torch.equal(out[1], small)
    assert torch.equal(out[0], big & ~small)
    _assert_disjoint(out)
    assert torch.equal(union(out), big | small)


def test_clean_masks_reference_example():
    big = _box(40, 40, 5, 5, 35, 25)
    small = _box(40, 40, 10, 20, 20, 32)
    small[30, 38] = True  # a stray pixel: not the largest component
    out = clean_masks(torch.stack([big, small]), dilation_px=2)
    expected_small = dilate(_box(40, 40, 10, 20, 20, 32), 2)
    assert torch.equal(out[1], expected_small)
    assert torch.equal(out[0], dilate(big & ~small, 2) & ~expected_small)
    _assert_disjoint(out)


@pytest.mark.parametrize("seed", range(4))
def test_clean_masks_never_overlap(seed):
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(3):
        top, left = torch.randint(0, 40, (2,), generator=generator).tolist()
        height, width = torch.randint(8, 30, (2,), generator=generator).tolist()
        masks.append(_box(64, 64, top, left, top + height, left + width) | _random_mask(64, 64, 0.01, seed))
    out = clean_masks(masks, dilation_px=3)
    _assert_disjoint(out)
    for mask in out:
        assert mask.any()


def test_clean_masks_fully_covered_mask_comes_back_empty():
    outer = _box(20, 20, 2, 2, 18, 18)
    same = outer.clone()
    out = clean_masks([outer, same], dilation_px=1)
    assert out[0].any()
    assert not out[1].any()


# --- progressive schedule ---------------------------------------------------------------------------------


def test_progressive_kernel_at_official_defaults():
    values = {step: progressive_kernel(step, 50, 10, 50) for step in range(9, 50)}
    assert len(values) == 41
    assert (values[9], values[10], values[11], values[29], values[48], values[49]) == (0, 1, 2, 25, 48, 50)
    ordered = [values[step] for step in range(9, 50)]
    assert ordered == sorted(ordered)


def test_injection_steps_at_official_defaults():
    steps = [step for step in range(50) if is_injection_step(step, 10)]
    assert steps[0] == 9
    assert len(steps) == 41


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((8, 50, 10, 50), "before the sweet spot"),
        ((50, 50, 10, 50), "step_index"),
        ((10, 50, 50, 50), "sweet_spot_step"),
        ((10, 50, 10, -1), "max_dilation"),
        ((10.0, 50, 10, 50), "step_index"),
    ],
)
def test_progressive_kernel_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        progressive_kernel(*args)


def _three_clean_masks() -> torch.Tensor:
    raw = torch.stack(
        [
            _box(96, 96, 10, 10, 60, 40),
            _box(96, 96, 30, 35, 80, 70),
            _box(96, 96, 70, 10, 90, 30),
        ]
    )
    return clean_masks(raw, dilation_px=2)


def test_progressive_masks_never_overlap_and_the_union_grows():
    clean = _three_clean_masks()
    previous_union = None
    previous_smallest = None
    smallest = area_order(clean)[0]
    for step in range(9, 50):
        masks = progressive_masks(clean, step, 50, 10, 20)
        _assert_disjoint(masks)
        current_union = union(masks)
        assert torch.equal(current_union, dilate(clean, progressive_kernel(step, 50, 10, 20)).any(dim=0))
        if previous_union is not None:
            assert not (previous_union & ~current_union).any()
            assert not (previous_smallest & ~masks[smallest]).any()
        previous_union, previous_smallest = current_union, masks[smallest]


def test_progressive_masks_at_the_sweet_spot_equal_the_clean_masks():
    clean = _three_clean_masks()
    assert torch.equal(progressive_masks(clean, 9, 50, 10, 50), clean)


def test_progressive_masks_single_mask_grows_every_step():
    clean = _box(64, 64, 20, 20, 40, 40).unsqueeze(0)
    sizes = [int(progressive_masks(clean, step, 50, 10, 10).sum()) for step in range(9, 50)]
    assert sizes == sorted(sizes)
    assert sizes[-1] == 40 * 40


def test_progressive_masks_a_later_mask_can_lose_pixels():
    """Documented limit: the smaller mask grows into the larger one, which then shrinks."""
    small = _box(40, 40, 10, 10, 14, 14)
    large = _box(40, 40, 14, 10, 30, 30)
    early = progressive_masks([small, large], 9, 50, 10, 40)
    late = progressive_masks([small, large], 49, 50, 10, 40)
    assert (early[1] & ~late[1]).any()


# --- resizing / scaling -----------------------------------------------------------------------------------


def test_resize_masks_nearest_matches_interpolate_and_keeps_dtype():
    masks = torch.stack([_random_mask(64, 64, 0.3, 1), _random_mask(64, 64, 0.6, 2)])
    out = resize_masks_nearest(masks, 8)
    assert out.dtype == torch.bool
    assert out.shape == (2, 8, 8)
    expected = torch.nn.functional.interpolate(masks[:, None].float(), size=(8, 8), mode="nearest")[:, 0] > 0.5
    assert torch.equal(out, expected)
    assert torch.equal(out[0], masks[0, ::8, ::8])
    float_masks = resize_masks_nearest(masks.half(), (16, 4))
    assert float_masks.dtype == torch.float16
    assert float_masks.shape == (2, 16, 4)


def test_scale_pixels():
    assert scale_pixels(50, 1024) == 50
    assert scale_pixels(50, 512) == 25
    assert scale_pixels(10, 768) == 8
    assert scale_pixels(50, (1024, 1024)) == 50
    assert scale_pixels(50, (2048, 512)) == 50
    with pytest.raises(ValueError, match="image_size"):
        scale_pixels(50, 0)


def test_masks_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="one shape"):
        make_disjoint([torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.bool)])
    with pytest.raises(ValueError, match="empty"):
        clean_masks([])

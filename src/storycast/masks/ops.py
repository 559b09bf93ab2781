"""Pure mask math of IdentityStory's re-denoising identity injection (paper §3.3; authors' code
``utils/layout_extraction.py:process_masks`` and ``id_injection/pipeline.py:get_progressive_masks``).

Masks are (H, W) tensors or (K, H, W) stacks, one per character. Inputs may be bool, integer (non-zero is
inside) or floating (> 0.5 is inside); outputs are bool unless stated otherwise. Nothing here does I/O or
draws random numbers.

Official defaults (at 1024 x 1024): clean-up dilation 10 px; progressive dilation up to 50 px; T = 50 steps;
sweet-spot step s = 10. Use :func:`scale_pixels` for other resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CLEANUP_DILATION_PX = 10
MAX_DILATION_PX = 50
SWEET_SPOT_STEP = 10
REFERENCE_SIZE = 1024

Masks = torch.Tensor | Sequence[torch.Tensor]


def as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a mask: bool as is, floating ``> 0.5``, integer ``!= 0``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"a mask must be a torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask > 0.5
    return mask != 0


def stack_masks(masks: Masks) -> torch.Tensor:
    """(K, H, W) bool tensor from a (K, H, W) tensor or a sequence of K (H, W) tensors of one shape."""
    if isinstance(masks, torch.Tensor):
        if masks.ndim != 3:
            raise ValueError(f"masks must have shape (K, H, W), got {tuple(masks.shape)}.")
        return as_bool(masks)
    masks = list(masks)
    if not masks:
        raise ValueError("masks is empty: give at least one (H, W) mask.")
    shapes = {tuple(mask.shape) for mask in masks}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"masks must all be 2-D with one shape (H, W), got shapes {sorted(shapes)}.")
    return torch.stack([as_bool(mask) for mask in masks])


def area_order(masks: Masks) -> list[int]:
    """Indices of ``masks`` by area, smallest first; equal areas keep their order (Python's stable sort,
    as the authors' ``sorted(..., key=area)``)."""
    areas = stack_masks(masks).flatten(1).sum(dim=1)
    return torch.argsort(areas, stable=True).tolist()


def union(masks: Masks) -> torch.Tensor:
    """(H, W) bool union of K masks."""
    return stack_masks(masks).any(dim=0)


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation with a square (2 * pixels + 1)^2 structuring element, over the last two dims.

    This is what the authors run: ``scipy.ndimage.binary_dilation(mask, np.ones((2k+1, 2k+1)))``, i.e. every
    pixel within Chebyshev distance ``pixels`` of the mask joins it (a square, not a disk; pixels outside
    the image count as background). ``pixels = 0`` returns the mask unchanged.

    Implemented as two separable 1-D box filters with cumulative sums: O(H W) whatever ``pixels`` is.
    """
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"pixels must be an integer >= 0, got {pixels!r}.")
    mask = as_bool(mask)
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dims (..., H, W), got shape {tuple(mask.shape)}.")
    if pixels == 0:
        return mask.clone()
    grown = _box_any(mask, pixels, dim=-1)
    return _box_any(grown, pixels, dim=-2)


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary erosion with a square (2 * pixels + 1)^2 structuring element, over the last two dims: a pixel stays
    when every pixel within Chebyshev distance ``pixels`` inside the image is set. Pixels outside the image do not
    erode (OpenCV's ``cv2.erode`` with its default border), so this is the complement of :func:`dilate` of the
    complement."""
    return ~dilate(~as_bool(mask), pixels)


def _box_any(mask: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """True where any pixel within ``radius`` along ``dim`` is True."""
    length = mask.shape[dim]
    counts = torch.cumsum(mask.to(torch.int32), dim=dim, dtype=torch.int32)
    zero_shape = list(mask.shape)
    zero_shape[dim] = 1
    counts = torch.cat([counts.new_zeros(zero_shape), counts], dim=dim)
    position = torch.arange(length, device=mask.device)
    high = (position + radius + 1).clamp(max=length)
    low = (position - radius).clamp(min=0)
    return (counts.index_select(dim, high) - counts.index_select(dim, low)) > 0


def _by_component(mask: torch.Tensor, keep: Any) -> torch.Tensor:
    """Each (H, W) image of ``mask`` (batched over leading dims) cut into 4-connected components by
    ``scipy.ndimage.label`` (its default 2-D connectivity), and the pixels of the components ``keep(sizes)`` accepts
    (a bool array over the components, numbered in row-major order of their first pixel); bool, on the input's
    device."""
    import numpy as np
    from scipy import ndimage

    mask = as_bool(mask)
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dims (..., H, W), got shape {tuple(mask.shape)}.")
    images = mask.detach().cpu().numpy().reshape(-1, *mask.shape[-2:])
    kept = np.zeros_like(images)
    for image, out in zip(images, kept, strict=True):
        labels, count = ndimage.label(image)
        if count:
            chosen = np.concatenate([[False], keep(np.bincount(labels.ravel())[1:])])
            out[...] = chosen[labels]
    return torch.from_numpy(kept).reshape(mask.shape).to(mask.device)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep only the largest 4-connected component of each (H, W) mask (batched over leading dims).

    The authors' ``scipy.ndimage.label`` (default 4-connectivity in 2-D) followed by the argmax of the
    component sizes: labels are numbered in row-major order of first pixel, so on a tie the component met
    first wins. An empty mask stays empty. The result is bool on the input's device.
    """
    # argmax: the first maximum, i.e. the first component met
    return _by_component(mask, lambda sizes: np.arange(len(sizes)) == sizes.argmax())


def remove_small_components(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop the 4-connected components of fewer than ``min_size`` pixels from each (H, W) mask (batched over leading
    dims), as scikit-image's ``remove_small_objects(mask, min_size)`` with its default connectivity 1."""
    return _by_component(mask, lambda sizes: sizes >= min_size)


def make_disjoint(masks: Masks) -> torch.Tensor:
    """Smallest mask first, each mask keeps only the pixels no earlier mask took; returned in the ORIGINAL
    order as a (K, H, W) bool tensor. The union is unchanged and the masks never overlap."""
    stacked = stack_masks(masks)
    result = torch.zeros_like(stacked)
    taken = torch.zeros_like(stacked[0])
    for index in area_order(stacked):
        result[index] = stacked[index] & ~taken
        taken |= result[index]
    return result


def clean_masks(masks: Masks, dilation_px: int = CLEANUP_DILATION_PX) -> torch.Tensor:
    """The authors' mask clean-up (``process_masks``), returned in the original order as (K, H, W) bool.

    Smallest raw mask first: take the pixels not yet taken, keep the largest 4-connected component, dilate it
    by ``dilation_px`` (official 10 at 1024 px), drop the pixels already taken again, mark the result taken.
    The results never overlap; a mask whose pixels were all taken comes back empty.
    """
    stacked = stack_masks(masks)
    result = torch.zeros_like(stacked)
    taken = torch.zeros_like(stacked[0])
    for index in area_order(stacked):
        core = largest_component(stacked[index] & ~taken)
        result[index] = dilate(core, dilation_px) & ~taken
        taken |= result[index]
    return result


def is_injection_step(step_index: int, sweet_spot_step: int = SWEET_SPOT_STEP) -> bool:
    """Whether 0-based denoising step ``step_index`` is re-denoised with identities: ``(i + 1) >= s``.

    With T = 50 and s = 10 these are steps 9..49, 41 of the 50.
    """
    return step_index + 1 >= sweet_spot_step


def progressive_kernel(
    step_index: int,
    num_steps: int,
    sweet_spot_step: int = SWEET_SPOT_STEP,
    max_dilation: int = MAX_DILATION_PX,
) -> int:
    """Dilation (pixels) of the progressive masks at 0-based step ``step_index`` (paper §3.3).

    ``ratio = ((i + 1) - s) / (T - s)``; ``kernel = int(max_dilation * ratio)``, the same float arithmetic as
    the authors' ``get_progressive_masks`` (called with ``i + 1``). Defined for injection steps only
    (``(i + 1) >= s``, see :func:`is_injection_step`): 0 at ``i = s - 1``, ``max_dilation`` at the last step.
    With T = 50, s = 10, max 50: steps 9, 10, 11, 29, 48, 49 give 0, 1, 2, 25, 48, 50.
    """
    for name, value in (("step_index", step_index), ("num_steps", num_steps), ("sweet_spot_step", sweet_spot_step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}.")
    if isinstance(max_dilation, bool) or not isinstance(max_dilation, int) or max_dilation < 0:
        raise ValueError(f"max_dilation must be an integer >= 0, got {max_dilation!r}.")
    if not 0 <= sweet_spot_step < num_steps:
        raise ValueError(f"sweet_spot_step must be in [0, num_steps={num_steps}), got {sweet_spot_step}.")
    if not 0 <= step_index < num_steps:
        raise ValueError(f"step_index must be in [0, num_steps={num_steps}), got {step_index}.")
    if not is_injection_step(step_index, sweet_spot_step):
        raise ValueError(
            f"step_index {step_index} is before the sweet spot ((i + 1) < sweet_spot_step={sweet_spot_step}): "
            "that step is not re-denoised, so it has no progressive mask. Check is_injection_step() first."
        )
    ratio = ((step_index + 1) - sweet_spot_step) / (num_steps - sweet_spot_step)
    return int(max_dilation * ratio)


def progressive_masks(
    clean: Masks,
    step_index: int,
    num_steps: int,
    sweet_spot_step: int = SWEET_SPOT_STEP,
    max_dilation: int = MAX_DILATION_PX,
) -> torch.Tensor:
    """Masks used at injection step ``step_index``, (K, H, W) bool in the original order.

    Each cleaned mask is dilated by :func:`progressive_kernel`; then, smallest cleaned mask first, each keeps
    only the pixels no earlier mask took. Guarantees: the masks never overlap; their union is the union of
    the dilated masks, so it only grows from step to step; at the sweet-spot step (kernel 0) they equal the
    (disjoint) cleaned masks. A single mask only grows too, and so does the smallest one, but a later mask
    can lose pixels to an earlier mask growing into it, so per-mask growth is not guaranteed for K > 1.
    """
    stacked = stack_masks(clean)
    kernel = progressive_kernel(step_index, num_steps, sweet_spot_step, max_dilation)
    result = torch.zeros_like(stacked)
    taken = torch.zeros_like(stacked[0])
    for index in area_order(stacked):
        result[index] = dilate(stacked[index], kernel) & ~taken
        taken |= result[index]
    return result


def resize_masks_nearest(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (..., H, W) masks to ``size`` = (h, w) or an int for a square; keeps the
    dtype. Uses ``F.interpolate(mode="nearest")`` as the authors do to bring image-size masks to latent size."""
    if not isinstance(masks, torch.Tensor) or masks.ndim < 2:
        raise ValueError("masks must be a tensor of shape (..., H, W).")
    target = (size, size) if isinstance(size, int) else tuple(size)
    if len(target) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in target):
        raise ValueError(f"size must be a positive int or a pair (h, w) of positive ints, got {size!r}.")
    leading = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:])
    work = flat.float() if not flat.is_floating_point() else flat
    resized = F.interpolate(work, size=target, mode="nearest")
    return resized.to(masks.dtype).reshape(*leading, *target)


def scale_pixels(pixels: int, image_size: int | tuple[int, int], reference: int = REFERENCE_SIZE) -> int:
    """A pixel distance given at ``reference`` x ``reference`` (1024 for SDXL) at another image size.

    For a non-square (h, w) image the side of the square with the same area, sqrt(h * w), is used;
    rounding is half up. ``scale_pixels(50, 1024) == 50``, ``scale_pixels(50, 512) == 25``.
    """
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"pixels must be an integer >= 0, got {pixels!r}.")
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides):
        raise ValueError(f"image_size must be a positive int or a pair (h, w), got {image_size!r}.")
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 1:
        raise ValueError(f"reference must be a positive integer, got {reference!r}.")
    side = (sides[0] * sides[1]) ** 0.5
    return int(pixels * side / reference + 0.5)

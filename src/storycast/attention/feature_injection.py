"""Feature injection: ConsiStory's blending of self-attention outputs along dense correspondences (Tewel et al.,
SIGGRAPH 2024, §3.3; NVlabs/consistory ``consistory_utils.FeatureInjector``, ``utils/general_utils.py``).

After a first pass over the frames, each frame's DIFT features (the output of the UNet's first up block at
t = 261, Gaussian-smoothed) say, for each of its pixels, which pixel inside the subject of another frame looks
the same (cosine distance). In the second pass, at the self-attention outputs of the injection layers and during
the injection steps, each pixel inside the frame's subject whose best match is close enough takes a share of the
matched output: ``out = alpha * source + (1 - alpha) * out``.

- Matches are searched only inside the source's subject mask (outside it the authors set the distance to 2).
- Of several sources, a pixel takes the closest (``swap_strategy='min'``); "close enough" is below the Otsu
  threshold of the frame's best distances (``dist_thr='dynamic'``).
- Sources are read before any frame is changed (the paper's formulation): the authors write the batch in
  place, so a later anchor there reads an earlier anchor's already-injected output (``docs/methods/consistory.md``).

The math is pure functions; :class:`FeatureInjection` is the per-call state the attention processors apply.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.cache import TokenCache
from storycast.attention.thresholds import otsu_threshold

# -- pure functions ----------------------------------------------------------------------------------------------


def gaussian_smooth(features: torch.Tensor, kernel_size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """(C, h, w) features with every channel convolved by a normalised Gaussian kernel, zero-padded to keep the
    size (the authors smooth DIFT features with 3 x 3, sigma 1)."""
    centre = (kernel_size - 1) / 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - centre
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(features)
    return F.conv2d(features[:, None], kernel[None, None], padding=kernel_size // 2)[:, 0]


def features_at(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(h * w, C) pixel features of (C, H, W) ``features`` resized bilinearly to ``grid`` (h, w)."""
    if tuple(features.shape[-2:]) != tuple(grid):
        features = F.interpolate(features[None].float(), size=grid, mode="bilinear", align_corners=False)[0]
    return features.reshape(features.shape[0], -1).T.float()


def nearest_in_mask(
    target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every target pixel, the closest source pixel (cosine distance, ``1 - cos``) inside ``source_mask``.

    Args:
        target: (P, C) target pixel features.
        source: (Q, C) source pixel features.
        source_mask: (Q,) boolean: the source pixels a match may land on.

    Returns:
        (P,) source pixel indices and (P,) their distances; source pixels outside the mask cost 2 (the largest
        cosine distance), so a target pixel with no masked source gets distance 2.
    """
    distances = 1 - F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).T  # (Q, P)
    distances = distances.masked_fill(~source_mask.to(distances.device)[:, None], 2.0)
    best, index = distances.min(dim=0)
    return index, best


def dynamic_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold of ``values`` over their own range (the authors' ``get_dynamic_threshold``, scikit-image's
    ``threshold_otsu``); for constant values, that value (nothing lies strictly below it)."""
    return otsu_threshold(values)


@dataclass(frozen=True)
class Correspondence:
    """Where a frame takes injected features from, at one token grid.

    Attributes:
        pixels: (K,) the frame's pixels that are injected.
        source: (K,) which source each takes from (a number in the call's list of sources).
        token: (K,) the pixel of that source.
    """

    pixels: torch.Tensor
    source: torch.Tensor
    token: torch.Tensor


def correspond(
    target: torch.Tensor,
    target_mask: torch.Tensor,
    sources: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
) -> Correspondence | None:
    """The pixels of a frame to inject, and from where.

    Args:
        target: (P, C) the frame's pixel features at the grid.
        target_mask: (P,) boolean: the frame's subject (only these pixels are injected).
        sources: Per source, (Q, C) features and (Q,) its subject mask at the same grid; None for a source the
            frame is not mapped to. Sources with an empty mask are skipped.

    Returns:
        None when nothing is injected (no subject, no usable source), else each kept pixel's closest source and
        pixel; a pixel is kept when it lies in ``target_mask`` and its distance is below the Otsu threshold of all
        the frame's best distances.
    """
    usable = [(n, s) for n, s in enumerate(sources) if s is not None and bool(s[1].any())]
    if not usable or not bool(target_mask.any()):
        return None
    matches = [nearest_in_mask(target, features, mask) for _, (features, mask) in usable]
    indices = torch.stack([index for index, _ in matches])  # (S, P)
    distances = torch.stack([distance for _, distance in matches])
    best = distances.argmin(dim=0)
    pixels = torch.arange(target.shape[0], device=target.device)
    distance = distances[best, pixels]
    keep = target_mask.to(distance.device) & (distance < dynamic_threshold(distance))
    kept = torch.nonzero(keep).flatten()
    numbers = torch.tensor([n for n, _ in usable], device=target.device)
    return Correspondence(kept, numbers[best[kept]], indices[best[kept], kept])


def blend(
    target: torch.Tensor, source_tokens: torch.Tensor, correspondence: Correspondence, alpha: float
) -> torch.Tensor:
    """(P, C) ``target`` with its corresponding pixels set to ``alpha * source + (1 - alpha) * target``;
    ``source_tokens`` (K,  C) are the sources' outputs at ``correspondence.token``, in its order."""
    out = target.clone()
    pixels = correspondence.pixels
    out[pixels] = alpha * source_tokens.to(target.dtype) + (1 - alpha) * target[pixels]
    return out


# -- the anchors' injected outputs --------------------------------------------------------------------------------


class InjectedOutputs:
    """(layer, step) -> each anchor's injected self-attention output inside its subject (what later frames take
    their features from), kept on ``device`` (the model's when None, or the CPU).

    Args:
        masks: Per anchor, per token count of a grid, its (P,) boolean subject mask: the pixels kept.
        device: Where the outputs are kept.
    """

    def __init__(self, masks: Sequence[Mapping[int, torch.Tensor]], device: Any = None):
        self.masks = [dict(m) for m in masks]
        self._outputs = TokenCache(
            device,
            what="anchor outputs (layer, step)",
            fix="the anchors must be drawn with injection, the same steps and size before the frames that read them",
        )
        # Pixel -> row of the kept tokens, per anchor and grid (-1 outside the mask).
        self._rows = [
            {tokens: torch.cumsum(mask.long(), 0) - 1 for tokens, mask in per_grid.items()} for per_grid in self.masks
        ]

    def put(self, layer: str, step: int, outputs: torch.Tensor) -> None:
        """Keep (anchors, P, C) injected outputs at the anchors' masks."""
        tokens = outputs.shape[1]
        self._outputs.put(
            (layer, step), [outputs[a, self.masks[a][tokens].to(outputs.device)] for a in range(outputs.shape[0])]
        )

    def gather(self, layer: str, step: int, correspondence: Correspondence, tokens: int) -> torch.Tensor:
        """(K, C) the anchors' outputs at ``correspondence``'s (source, token) pairs."""
        outputs = self._outputs.get((layer, step))
        parts = torch.empty(
            (len(correspondence.pixels), outputs[0].shape[-1]),
            dtype=outputs[0].dtype,
            device=correspondence.token.device,
        )
        for anchor in correspondence.source.unique().tolist():
            chosen = correspondence.source == anchor
            rows = self._rows[anchor][tokens].to(correspondence.token.device)[correspondence.token[chosen]]
            parts[chosen] = outputs[anchor][rows.to(outputs[anchor].device)].to(parts.device)
        return parts

    @property
    def nbytes(self) -> int:
        return self._outputs.nbytes


# -- the per-call state -------------------------------------------------------------------------------------------


@dataclass
class FeatureInjection:
    """What the injection layers do during one call of the second pass.

    Attributes:
        alpha: Share of the source's output (the authors' 0.8).
        steps: Steps injected (the authors' ``S // 10 .. S // 3``, both included).
        correspondences: Per frame of the batch, per token count of a grid, its correspondence (missing: none).
        anchors: Read: the anchors' outputs the frames take from (sources are anchor numbers). None: sources are
            other frames of the same batch.
        record: Write: keep the batch's injected outputs for later frames (the batch is the anchors).
    """

    alpha: float
    steps: range
    correspondences: Sequence[Mapping[int, Correspondence]]
    anchors: InjectedOutputs | None = None
    record: InjectedOutputs | None = None
    injected_pixels: dict[int, int] = field(default_factory=dict)
    """Frame of the batch -> pixels injected at the last layer applied (for manifests and tests)."""

    def active(self, step: int) -> bool:
        return step in self.steps

    def apply(self, layer: str, step: int, outputs: torch.Tensor) -> torch.Tensor:
        """(frames, P, C) cond-half outputs of one layer, injected."""
        tokens = outputs.shape[1]
        injected = outputs.clone()
        for frame, per_grid in enumerate(self.correspondences):
            found = per_grid.get(tokens)
            if found is None or found.pixels.numel() == 0:
                continue
            if self.anchors is not None:
                taken = self.anchors.gather(layer, step, found, tokens)
            else:
                taken = outputs[found.source, found.token]
            injected[frame] = blend(outputs[frame], taken, found, self.alpha)
            self.injected_pixels[frame] = int(found.pixels.numel())
        if self.record is not None:
            self.record.put(layer, step, injected)
        return injected


def injection_steps(num_steps: int, start: float, end: float) -> range:
    """Steps ``floor(start x T) .. floor(end x T)``, both included (the authors' ``(S // 10, S // 3)`` at
    ``start = 0.1, end = 1/3``)."""
    first, last = math.floor(start * num_steps + 1e-9), math.floor(end * num_steps + 1e-9)
    return range(first, last + 1)


@contextlib.contextmanager
def record_block_output(
    module: torch.nn.Module, rows: slice, when: Any, *, copy: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Keep a module's output rows (DIFT features: the first up block's output, cond half) on the calls where
    ``when()`` is true; the latest is under ``"features"``. The hook is removed on exit (no forked UNet).

    ``copy=False`` keeps a view of the output instead, as ConsiStory's ``DIFTLatentStore`` does, so that what the
    rest of the same forward pass changes in place shows in it: with FreeU on, the next up block scales the first
    half of its input's channels in place (diffusers' ``apply_freeu``) before the authors' correspondences read it.
    """
    found: dict[str, torch.Tensor] = {}

    def hook(_: Any, __: Any, output: Any) -> None:
        if when():
            tensor = (output[0] if isinstance(output, tuple) else output).detach()[rows]
            found["features"] = tensor.clone() if copy else tensor

    handle = module.register_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()

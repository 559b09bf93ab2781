"""Storynizor's training losses, as pure functions (``docs/methods/storynizor-training.md`` gives the sources).

Total = diffusion + ``mask_alignment`` x (a) + ``perceptual`` x (b):

- **diffusion**: the noise-prediction MSE (or the v-prediction's, following the scheduler);
- **(a) attention-mask alignment** (the spec's mask perceptual loss, part a; after StoryMaker's ``get_loss_ip``):
  the character word's cross-attention map Â, scaled to [0, 1] by its maximum, against the character's
  ground-truth mask S: an area-normalised squared error, sum_p (Â - S)^2 / max(sum_p S, 1), plus a background
  term, mean_p ((1 - Â) - (1 - S))^2, so that a small character's map is not drowned by the background;
- **(b) masked perceptual consistency** (part b): frozen image-encoder features of each frame's decoded
  x0-prediction, averaged inside that frame's character mask, L2-normalised; the mean squared distance over
  every pair of frames of one character; only for groups at low noise (t <= 250, StoryMaker's identity loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the UNet's prediction, in float32 (the diffusers training scripts')."""
    return F.mse_loss(prediction.float(), target.float())


def attention_mask_alignment(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Term (a) for (n, h, w) non-negative maps and (n, h, w) masks in {0, 1} at the same size; mean over n."""
    maps = maps.float()
    masks = masks.float()
    scaled = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(eps)
    squared = (scaled - masks) ** 2
    inside = squared.sum(dim=(1, 2)) / masks.sum(dim=(1, 2)).clamp_min(1.0)
    background = (((1 - scaled) - (1 - masks)) ** 2).mean(dim=(1, 2))
    return (inside + background).mean()


def masked_feature_consistency(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Term (b) for one character: (n, L, D) token features of n frames and (n, L) mask weights on the same
    tokens. Frames whose mask is empty are left out; fewer than two frames give 0."""
    masks = masks.float()
    keep = masks.sum(dim=1) > eps
    if int(keep.sum()) < 2:
        return features.new_zeros((), dtype=torch.float32)
    features, masks = features[keep].float(), masks[keep]
    pooled = (features * masks[..., None]).sum(dim=1) / masks.sum(dim=1, keepdim=True)
    pooled = F.normalize(pooled, dim=-1)
    n = pooled.shape[0]
    distances = torch.cdist(pooled, pooled) ** 2  # (n, n), zero on the diagonal
    return distances.sum() / (n * (n - 1))

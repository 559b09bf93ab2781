"""The data builder's math, as pure functions: image hashes and near duplicates, identity clustering, and the
model-free "contrast" segmenter.

- **Average hash** (Krawetz's aHash): the image at 8 x 8 in grey, each cell above the mean a 1. Near duplicates
  differ in at most a few of the 64 bits.
- **Clustering**: identities are the connected components of the graph linking embeddings whose cosine
  similarity is at least a threshold (single linkage), as face-clustering tools do with ArcFace embeddings
  (insightface's examples use ~0.5 on ``normed_embedding``).
- **Contrast segmentation** (offline, for studio-like images and the tiny preset): the pixels whose colour is
  far from the image border's median colour, cut at Otsu's threshold, the largest connected region kept. It
  needs no model; real photos use GroundingDINO + SAM.

The background hash (the character painted over in the background's mean colour first) tells whether two
images of a set share a background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

HASH_SIDE = 8


def average_hash(image: Image.Image) -> np.ndarray:
    """(64,) booleans: the 8 x 8 grey thumbnail's cells above its mean."""
    small = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float32)
    return (small > small.mean()).reshape(-1)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))


def near_duplicates(hashes: Sequence[np.ndarray], max_bits: int) -> list[int]:
    """Indices to drop so that no two kept hashes differ in ``max_bits`` bits or fewer (the first kept)."""
    kept: list[np.ndarray] = []
    dropped: list[int] = []
    for index, value in enumerate(hashes):
        if any(hamming(value, other) <= max_bits for other in kept):
            dropped.append(index)
        else:
            kept.append(value)
    return dropped


def cluster_embeddings(embeddings: torch.Tensor, threshold: float) -> list[int]:
    """A cluster label per row of (n, d) embeddings: connected components of cos >= ``threshold``, labelled in
    order of first appearance."""
    if embeddings.shape[0] == 0:
        return []
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    linked = ((unit @ unit.T) >= threshold).numpy()
    # Components are numbered from the lowest unlabelled node on: in order of first appearance.
    _, labels = connected_components(csr_matrix(linked), directed=False)
    return [int(label) for label in labels]


def contrast_mask(image: Image.Image, border: int = 2) -> np.ndarray:
    """(H, W) boolean mask of what stands out from the image border's median colour (see the module docstring)."""
    from storycast.attention.thresholds import otsu_threshold
    from storycast.masks.ops import largest_component

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    edge = np.concatenate(
        [
            pixels[:border].reshape(-1, 3),
            pixels[-border:].reshape(-1, 3),
            pixels[:, :border].reshape(-1, 3),
            pixels[:, -border:].reshape(-1, 3),
        ]
    )
    distance = np.linalg.norm(pixels - np.median(edge, axis=0), axis=-1)
    top = float(distance.max())
    if top <= 0:
        return np.zeros(distance.shape, dtype=bool)
    scaled = torch.from_numpy(distance / top)
    # Our own segmenter, not an author's: cut where Otsu's classes split (a few flat colours sit on few levels).
    mask = scaled > otsu_threshold(scaled, at="edge")
    return largest_component(mask).numpy().astype(bool)


def background_hash(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """The average hash of ``image`` with the character (``mask``) painted in the background's mean colour, so
    that only the background decides the bits."""
    pixels = np.asarray(image.convert("RGB")).copy()
    if mask.any() and not mask.all():
        pixels[mask] = pixels[~mask].mean(axis=0).astype(np.uint8)
    return average_hash(Image.fromarray(pixels))

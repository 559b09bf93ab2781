"""The data builder's math, as pure functions: image hashes and near duplicates, identity clustering, and the
model-free "contrast" segmenter.

- **Average hash** (Krawetz's aHash): the image at 8 x 8 in grey, each cell above the mean a 1. Near duplicates
  differ in at most a few of the 64 bits.
- **Clustering**: identities are the connected components of the graph linking embeddings whose cosine
  similarity is at least a threshold (single linkage), as face-clustering tools do with ArcFace embeddings
  (insightface's examples use ~0.5 on ``normed_embedding``). The similarities are computed a block of rows at a
  time, so ten thousand images never hold a 10,000 x 10,000 matrix (tested equal to the whole-matrix way).
- **Near duplicates** are found in one pass: each hash against the packed hashes kept so far, vectorised.
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


_BITS_SET = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)
"""The number of bits set in each byte value (numpy 1.x has no popcount)."""


def _bits_differing(kept: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Bits in which each row of ``kept`` ((k, 8) bytes) differs from ``packed`` ((8,) bytes)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2: one popcount per 64-bit word
        return np.bitwise_count(kept.view(np.uint64)[:, 0] ^ packed.view(np.uint64)[0])
    return _BITS_SET[kept ^ packed].sum(axis=1, dtype=np.int64)


class DistinctHashes:
    """The hashes kept so far, packed: :meth:`add` keeps a hash unless it lies within ``max_bits`` bits of one
    already kept. One comparison with all kept hashes is one vectorised XOR, so n hashes cost n such passes."""

    def __init__(self, max_bits: int):
        self.max_bits = max_bits
        self._kept = np.zeros((64, HASH_SIDE * HASH_SIDE // 8), dtype=np.uint8)
        self._count = 0

    def add(self, value: np.ndarray) -> bool:
        """Keep ``value`` (a (64,) boolean hash) and return True, or return False: it is a near duplicate."""
        packed = np.packbits(value)
        if self._count:
            differ = _bits_differing(self._kept[: self._count], packed)
            if int(differ.min()) <= self.max_bits:
                return False
        if self._count == len(self._kept):
            self._kept = np.concatenate([self._kept, np.zeros_like(self._kept)])
        self._kept[self._count] = packed
        self._count += 1
        return True


def near_duplicates(hashes: Sequence[np.ndarray], max_bits: int) -> list[int]:
    """Indices to drop so that no two kept hashes differ in ``max_bits`` bits or fewer (the first kept)."""
    kept = DistinctHashes(max_bits)
    return [index for index, value in enumerate(hashes) if not kept.add(value)]


def cluster_embeddings(embeddings: torch.Tensor, threshold: float, block: int = 512) -> list[int]:
    """A cluster label per row of (n, d) embeddings: connected components of cos >= ``threshold``, labelled in
    order of first appearance.

    ``block`` rows are compared with all n at a time (memory ``block x n``, not ``n x n``). After each block every
    node knows the smallest node of its component so far (its root); the block's links, mapped to roots, join
    those components.
    """
    count = embeddings.shape[0]
    if count == 0:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    def components(sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        # Repeated links are summed into one edge (int32: never wraps to zero, which would read as no edge).
        graph = coo_matrix((np.ones(len(sources), dtype=np.int32), (sources, targets)), shape=(count, count))
        # Components are numbered from the lowest unlabelled node on: in order of first appearance.
        return connected_components(graph.tocsr(), directed=False)[1]

    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    nodes = np.arange(count)
    root = nodes.copy()
    for start in range(0, count, block):
        linked = ((unit[start : start + block] @ unit.T) >= threshold).numpy()
        linked &= root[start : start + block, None] != root[None, :]  # links inside a known component add nothing
        rows, columns = np.nonzero(linked)
        labels = components(np.concatenate([root[rows + start], nodes]), np.concatenate([root[columns], root]))
        smallest = np.full(int(labels.max()) + 1, count)
        np.minimum.at(smallest, labels, nodes)
        root = smallest[labels]
    return [int(label) for label in components(nodes, root)]


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

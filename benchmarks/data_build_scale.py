"""``storycast data build`` on thousands of images: the three steps that grew faster than the source did, timed
against the way they were done before (kept here as the baseline), in the same run; then, with ``--build``, the
whole build of a synthetic source (tiny preset), with the progress callback counting images.

    python benchmarks/data_build_scale.py --sizes 1000 10000
    python benchmarks/data_build_scale.py --sizes 10000 --build --per-set 1000

- scan: listing a flat folder of N images with a sidecar mask each. Before: one ``glob`` of the folder per image
  (N listings of N files); now: one listing, masks looked up by name.
- near duplicates: N random 64-bit average hashes, all distinct (the worst case: every hash is kept, so every
  later one is compared with all). Before: a Python loop of Hamming distances; now: one vectorised XOR per hash.
- clustering: N random 384-wide embeddings linked at cos >= -1 (one identity: the densest graph). Before: the
  n x n similarity matrix and its n x n sparse graph; now: blocks of 512 rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from storycast.data.ops import cluster_embeddings, hamming, near_duplicates
from storycast.data.sources import scan_source


def scan_before(root: Path) -> int:
    """The scan's mask lookup as it was: a glob of the image's folder per image."""
    found = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".png" and ".mask" not in path.stem:
            found += len(list(path.parent.glob(f"{path.stem}.mask*.png")))
    return found


def near_duplicates_before(hashes: list[np.ndarray], max_bits: int) -> list[int]:
    kept: list[np.ndarray] = []
    dropped = []
    for index, value in enumerate(hashes):
        if any(hamming(value, other) <= max_bits for other in kept):
            dropped.append(index)
        else:
            kept.append(value)
    return dropped


def cluster_before(embeddings: torch.Tensor, threshold: float) -> list[int]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    linked = ((unit @ unit.T) >= threshold).numpy()
    return [int(label) for label in connected_components(csr_matrix(linked), directed=False)[1]]


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def source_folder(root: Path, count: int, per_set: int, masks: bool) -> None:
    """``count`` 16 px images, random backgrounds and a red square, ``per_set`` per character folder."""
    rng = np.random.default_rng(0)
    square = np.zeros((16, 16), dtype=np.uint8)
    square[4:12, 4:12] = 255
    for k in range(count):
        folder = root / f"c{k // per_set:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((2, 2, 1), dtype=np.uint8))
        pixels[4:12, 4:12] = (255, 0, 0)
        Image.fromarray(pixels).save(folder / f"{k:05d}.png")
        if masks:
            Image.fromarray(square).save(folder / f"{k:05d}.mask.png")


class Calls:
    """A progress callback that records its calls."""

    def __init__(self, calls: list[tuple[int, int]]):
        self.calls = calls

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--build", action="store_true", help="also time the whole build at each size (new code)")
    parser.add_argument("--per-set", type=int, default=1000, help="images per character folder in --build")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'step':<16}{'N':>7}{'before s':>11}{'now s':>9}{'x faster':>10}")
    for count in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "flat"
            source_folder(root, count, per_set=count, masks=True)
            before, masks = timed(scan_before, root)
            now, scanned = timed(scan_source, root)
            assert masks == sum(len(item.masks) for item in scanned.items) == count
            print(f"{'scan':<16}{count:>7}{before:>11.2f}{now:>9.2f}{before / now:>10.1f}")
        rng = np.random.default_rng(0)
        hashes = [rng.random(64) > 0.5 for _ in range(count)]
        before, dropped_before = timed(near_duplicates_before, hashes, 4)
        now, dropped = timed(near_duplicates, hashes, 4)
        assert dropped == dropped_before
        print(f"{'near duplicates':<16}{count:>7}{before:>11.2f}{now:>9.2f}{before / now:>10.1f}")
        embeddings = torch.randn(count, 384, generator=torch.Generator().manual_seed(0))
        before, labels_before = timed(cluster_before, embeddings, -1.0)
        now, labels = timed(cluster_embeddings, embeddings, -1.0)
        assert labels == labels_before
        print(f"{'clustering':<16}{count:>7}{before:>11.2f}{now:>9.2f}{before / now:>10.1f}")
    if not args.build:
        return
    from storycast.data.build import BuildSettings, build_dataset

    for count in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "src"
            source_folder(root, count, per_set=args.per_set, masks=False)
            seen: list[tuple[int, int]] = []
            start = time.perf_counter()
            info = build_dataset(
                root, Path(folder) / "data", BuildSettings(max_side=64), tiny=True, progress=Calls(seen)
            )
            seconds = time.perf_counter() - start
            assert seen[-1] == (count, count) and len(seen) == count + 1
            print(
                f"whole build, N={count} ({count // args.per_set} sets, contrast masks): {seconds:.1f} s, "
                f"{info.sets} sets of {info.images} images, left out {dict(info.dropped)}"
            )


if __name__ == "__main__":
    main()

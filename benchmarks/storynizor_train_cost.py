"""Seconds and peak memory per Storynizor training step: stage 1, and stage 2 with and without AMSA.

Each configuration runs in a fresh process on a small synthetic data set written here (one character on
varied backgrounds, built with `storycast data build --preset tiny`), trains a few steps, and reports the mean
seconds per step after the first (warm-up) and the process's peak memory (CUDA: ``max_memory_allocated``;
CPU: peak resident set). Ratios are against stage 2 without AMSA, measured in the same run.

    python benchmarks/storynizor_train_cost.py --preset tiny-sd15 --size 64 --steps 6
    python benchmarks/storynizor_train_cost.py --preset sd15-random --size 128 --steps 3 --threads 2
    python benchmarks/storynizor_train_cost.py --preset sd15-random --device cuda --size 512 --steps 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import peak_memory_mb, run_worker

CONFIGS = {
    "stage 2, AMSA off": {"stage": "2", "amsa": "false"},
    "stage 2 (AMSA, SRS, mask losses)": {"stage": "2"},
    "stage 1 (injector alone), 4 images": {"stage": "1", "batch_size": "4"},
}
BASELINE = "stage 2, AMSA off"


def write_source(root: Path, side: int) -> None:
    """Six images of one character (a red disc) on six backgrounds, in a folder named after it."""
    from PIL import Image, ImageDraw

    folder = root / "mara"
    folder.mkdir(parents=True)
    colours = [(30, 90, 160), (200, 190, 60), (40, 140, 70), (150, 60, 150), (90, 90, 90), (220, 120, 40)]
    for k, colour in enumerate(colours):
        image = Image.new("RGB", (side, side), colour)
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, side // 2, side // (k + 2)], fill=tuple(c // 2 for c in colour))
        x = side // 6 + k * side // 20
        draw.ellipse([x, side // 4, x + side // 2, side // 4 + side // 2], fill=(230, 30, 30))
        image.save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"a woman in scene {k}")


def worker(args: argparse.Namespace) -> dict:
    import torch

    from storycast.data.build import BuildSettings, build_dataset
    from storycast.models.spec import ModelSpec
    from storycast.training.loop import train_storynizor
    from storycast.training.settings import StorynizorTrainSettings

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    write_source(folder / "src", max(64, args.size))
    build_dataset(folder / "src", folder / "data", BuildSettings(background_bits=-1, near_duplicate_bits=0), tiny=True)
    settings = StorynizorTrainSettings.from_mapping(
        {
            **CONFIGS[args.config],
            "resolution": str(args.size),
            "max_steps": str(args.steps),
            "checkpoint_every": str(10**6),
            "perceptual_max_timestep": "1000",  # every step pays for the perceptual term: the worst case
            "mixed_precision": "fp16" if args.device.startswith("cuda") and args.dtype == "fp16" else "no",
        },
        where="benchmark",
    )
    stamps: list[float] = []
    started = time.perf_counter()
    train_storynizor(
        folder / "data",
        folder / "run",
        settings,
        ModelSpec(source=args.preset, device=args.device),
        on_step=lambda step, terms: stamps.append(time.perf_counter()),
    )
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "config": args.config,
        "seconds_per_step": sum(gaps) / len(gaps) if gaps else stamps[0] - started,
        "peak_memory_mb": peak_memory_mb(args.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-sd15", help="tiny-sd15 or sd15-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="fp16 trains with fp16 mixed precision on CUDA")
    parser.add_argument("--size", type=int, default=64, help="training resolution")
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for config in CONFIGS:
        arguments = [
            "--config", config, "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
            "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads),
        ]  # fmt: skip
        rows.append(run_worker(__file__, arguments))
    print(f"preset={args.preset} device={args.device} dtype={args.dtype} size={args.size} steps={args.steps}")
    base = next(r for r in rows if r["config"] == BASELINE)
    header = f"{'configuration':<38} {'s/step':>8} {'peak MB':>9} {'time x':>7} {'mem x':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['config']:<38} {row['seconds_per_step']:>8.3f} {row['peak_memory_mb']:>9.0f} "
            f"{row['seconds_per_step'] / base['seconds_per_step']:>7.2f} "
            f"{row['peak_memory_mb'] / base['peak_memory_mb']:>6.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""How far each step cache (``--cache``) moves FLUX's frames, and what it saves: a held-out story set drawn without
and with each cache on one loaded model, in one process.

For each configuration: seconds per frame and its ratio to the uncached draw (drawn first and again last, so that
the drift of the timings on a shared machine shows), the share of the uncached draw's
FLOPs it spent (torch's FLOP counter over one story's draw: the work skipped, free of timing noise), CLIP-T of
its frames with their prompts (and the change from uncached), and how alike its frames are to the uncached ones:
CLIP-I and DINO (cosine of the two frames' image features, x100, storycast's ``evaluation.metrics``) and the
pixels' PSNR. DreamSim, the metric of the step-cache papers, is not computed: storycast's evaluation has no DreamSim
(it needs torchvision, timm and open_clip); CLIP-I and DINO stand in for it.

    python benchmarks/cache_drift.py --preset tiny-flux --steps 28 --size 128           # CPU: the wiring check
    python benchmarks/cache_drift.py --preset flux-dev --device cuda --steps 28 --size 1024 \\
        --extractors pretrained                                     # real weights and CLIP/DINO: the real figures

The stories are the last ones of ConsiStory-Human's splits (``--bench``, default ``../shared/bench/ConsiStory-
Human`` beside the clone), which no tuning here has drawn; the first ``--frames`` frames of each. Without that
folder the script says so and stops (``--builtin`` draws a small built-in story instead). With random weights
(tiny-flux, flux-random) and the tiny random extractors (``--extractors tiny``) the similarity columns only show
that the wiring runs: random features measure nothing about how an image looks. The real figures need FLUX.1-dev's
weights and the real CLIP/DINO (``--extractors pretrained``), on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from harness import one_character_story, print_columns, shrink_flux

from storycast.pipelines.step_cache import CACHE_DEFAULTS

CONFIGS = [*CACHE_DEFAULTS, "first-block:0.2"]
"""Every preset at its default, and First Block Cache at a threshold that skips on random weights too."""
HELD_OUT = ("single/story_069.json", "multi-2/story_009.json")
"""The last story of each split of ConsiStory-Human."""
COLUMNS = [
    ("cache", 18), ("s/frame", 8), ("time x", 7), ("FLOPs x", 8), ("CLIP-T", 7), ("dCLIP-T", 8), ("CLIP-I", 7),
    ("DINO", 6), ("PSNR dB", 8),
]  # fmt: skip
DEFAULT_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "ConsiStory-Human"


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (inf when equal)."""
    import numpy as np

    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


def stories(args: argparse.Namespace) -> list:
    from storycast.story.parse import load_story

    if args.builtin:
        return [one_character_story(args.frames)]
    if not args.bench.is_dir():
        sys.exit(
            f"the held-out stories are read from {args.bench}, which is not there (the shared ConsiStory-Human copy "
            f"beside the clone). Skipped; pass --bench DIR, or --builtin for a small built-in story."
        )
    chosen = [load_story(args.bench / name) for name in args.stories]
    return [dataclasses.replace(story, frames=story.frames[: args.frames]) for story in chosen]


def extractors(kind: str, device: str):
    from storycast.vision.features import ClipFeatures, DinoFeatures

    if kind == "tiny":
        return ClipFeatures.tiny(seed=0), DinoFeatures.tiny(seed=0)
    return ClipFeatures.from_pretrained(device=device), DinoFeatures.from_pretrained(device=device)


def cached(models, label: str | None):
    """The same loaded pipeline, with the step cache ``label`` (None: none) in its spec, info and backbone."""
    spec = dataclasses.replace(models.spec, cache=label or "none")
    return dataclasses.replace(models, spec=spec, info={**models.info, "cache": spec.cache})


def draw_all(models, story_set, args) -> tuple[list, float]:
    """Every story drawn; the frames in order and the seconds per frame."""
    import torch

    from storycast.runs.draw import draw

    generation = {"steps": args.steps, "width": args.size, "height": args.size}
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)
    frames, seconds = [], 0.0
    for story in story_set:
        sync()
        started = time.perf_counter()
        result = draw(story, args.method, models, generation=generation)
        sync()
        seconds += time.perf_counter() - started
        prompts = [result.plan.story.prompt(i) for i in range(len(result.frames))]
        frames += [(frame.image, prompt) for frame, prompt in zip(result.frames, prompts, strict=True)]
    return frames, seconds / len(frames)


def draw_flops(models, story, args) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from storycast.runs.draw import draw

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        draw(story, args.method, models, generation={"steps": args.steps, "width": args.size, "height": args.size})
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-flux", help="tiny-flux, flux-random (with --depth) or flux-dev")
    parser.add_argument("--method", default="vanilla", help="a method that takes a step cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="weights dtype (default: bf16 on CUDA, fp32 on a CPU)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=3, help="frames of each story")
    parser.add_argument("--caches", nargs="+", default=CONFIGS, help="--cache values to compare with none")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="the ConsiStory-Human folder")
    parser.add_argument("--stories", nargs="+", default=list(HELD_OUT), help="story files under --bench")
    parser.add_argument("--builtin", action="store_true", help="a built-in one-character story instead")
    parser.add_argument("--extractors", choices=("tiny", "pretrained"), default="tiny")
    parser.add_argument("--depth", help="flux-random's D,S,T (CPU runs)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")

    import torch
    from diffusers.utils import logging as diffusers_logging

    from storycast.evaluation.metrics import clip_t, paired_cosine
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec

    diffusers_logging.set_verbosity_error()  # FasterCache warns that it is experimental at every draw
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    story_set = stories(args)
    shrink_flux(args.depth)
    models = load_models(ModelSpec(source=args.preset, device=args.device, dtype=args.dtype))
    draw_all(models, story_set[:1], argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up, untimed
    clip, dino = extractors(args.extractors, models.aux_device)

    rows = []
    for index, label in enumerate([None, *args.caches, None]):
        configured = cached(models, label)
        frames, seconds = draw_all(configured, story_set, args)
        images = [image for image, _ in frames]
        image_clip = clip.encode_images(images)
        rows.append(
            {
                # The uncached draw again at the end: how much the timings drift on a shared machine.
                "cache": configured.spec.cache if index <= len(args.caches) else "none (again)",
                "seconds_per_frame": seconds,
                "flops": draw_flops(configured, story_set[0], args),
                "clip_t": clip_t(image_clip, clip.encode_texts([prompt for _, prompt in frames])).mean().item(),
                "images": images,
                "clip": image_clip,
                "dino": dino.encode_images(images),
            }
        )
    base = rows[0]
    frames_drawn = len(base["images"])
    depth = f" depth={args.depth}" if args.depth else ""
    print(
        f"preset={args.preset}{depth} method={args.method} device={args.device} dtype={args.dtype} "
        f"steps={args.steps} size={args.size} frames={frames_drawn} ({len(story_set)} stories) "
        f"extractors={args.extractors}"
    )
    table = []
    for row in rows:
        psnrs = [psnr(a, b) for a, b in zip(row["images"], base["images"], strict=True)]
        finite = [p for p in psnrs if math.isfinite(p)]
        table.append(
            [
                row["cache"],
                f"{row['seconds_per_frame']:.3f}",
                f"{row['seconds_per_frame'] / base['seconds_per_frame']:.2f}",
                f"{row['flops'] / base['flops']:.2f}",
                f"{row['clip_t']:.2f}",
                f"{row['clip_t'] - base['clip_t']:.2f}",
                f"{100 * paired_cosine(row['clip'], base['clip']).mean().item():.2f}",
                f"{100 * paired_cosine(row['dino'], base['dino']).mean().item():.2f}",
                f"{sum(finite) / len(finite):.1f}" if finite else "inf",
            ]
        )
    print_columns(COLUMNS, table)


if __name__ == "__main__":
    main()

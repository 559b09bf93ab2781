"""The GPU suite: every method against vanilla at the real sizes, in one command, with random weights.

For each family (SDXL at 1024 px, SD 1.5 at 512 px, FLUX.1-dev at 1024 px; random weights of the real
architectures, fp16 for the UNets, bf16 for FLUX) and each method that runs on it, a fresh process draws a
one-character story and reports seconds per frame, peak memory, denoiser evaluations per frame, and the share of
the compute floor reached: the FLOPs of the frame's denoiser evaluations (one evaluation counted with torch's FLOP
counter) divided by seconds x the device's measured matmul rate in the same dtype. Preparation (identity discovery, reference encoding) is paid once per
character and is not in the per-frame numbers. Writes ``suite.json`` and ``suite.md`` into ``--out``.

    python benchmarks/gpu_suite.py --out runs/gpu-suite                          # an NVIDIA GPU, ~8 minutes
    python benchmarks/gpu_suite.py --out /tmp/suite --device cpu --tiny --steps 2  # the CPU smoke run (CI)
    python benchmarks/gpu_suite.py --out /tmp/suite --device cpu --families sdxl --size 128 --steps 2 \
        --story-frames 2 --threads 2                                             # SDXL-size weights on a CPU

The methods are every registered method (``storycast methods``; a method added to the registry joins the suite),
each on the families it runs on, against that family's vanilla in the same run. FLUX also gets rows for its speed
options (``OPTION_ROWS``): vanilla compiled (``--compile``; one untimed warm-up draw first, where compilation
happens) and under step caches (``--cache``, lossy: ``benchmarks/cache_drift.py`` measures how far the frames
move), and every other FLUX method that takes a cache under First Block Cache; their ratios are to plain vanilla.
``--dry-run`` prints the rows it would draw.

Story-Adapter runs ``rounds=1`` here (its 10 rounds cost (1 + 10) / (1 + 1) = 5.5x the row), so that the suite
stays within its minutes; every other method runs its defaults.

Who gets a GPU runs the first command and puts the table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import measure, one_character_story, run_worker

FAMILIES = {
    "sdxl": {"real": ("sdxl-random", 1024), "tiny": ("tiny", 128)},
    "sd15": {"real": ("sd15-random", 512), "tiny": ("tiny-sd15", 128)},
    "flux": {"real": ("flux-random", 1024), "tiny": ("tiny-flux", 128)},
}
FAMILY_DTYPE = {"flux": "bf16"}
"""A family's dtype on the GPU where it is not the suite's (FLUX overflows in fp16; it runs in bf16)."""
OPTION_ROWS: dict[str, dict[str, dict]] = {
    "flux": {
        "compile": {"compile": True},
        "cache first-block": {"cache": "first-block"},
        "cache taylorseer": {"cache": "taylorseer"},
    },
}
"""Per family, vanilla's speed-option rows: ModelSpec fields by row name."""
CACHE_ROW = "cache first-block"
"""The option row every other method that takes a step cache gets on a family with option rows."""
SUITE_SETTINGS = {
    # Discovery is paid once per character, before the timed frames: a small budget keeps the suite short (random
    # weights have no identity to find anyway).
    "identitystory": {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1, "discovery_steps": 4},
    "photomaker": {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1, "discovery_steps": 4},
    # One round of the ten: the per-frame cost of R rounds is (1 + R) / 2 times this row's.
    "story-adapter": {"rounds": 1},
}


def matmul_rate(device: str, dtype: str, side: int) -> float:
    """FLOP/s of a square matmul of ``side`` in ``dtype`` on ``device`` (the best of a few runs)."""
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    if device == "cpu" and torch_dtype == torch.float16:
        torch_dtype = torch.float32  # CPUs have no fast fp16 matmul: the floor is measured in what runs
    a = torch.randn(side, side, device=device, dtype=torch_dtype)
    b = torch.randn(side, side, device=device, dtype=torch_dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(5):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * side**3 / best


def denoiser_flops(models, width: int, height: int) -> int:
    """FLOPs of one denoiser evaluation (one batch row) at ``width`` x ``height``, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    backbone = models.backbone
    guidance = backbone.guidance(models.defaults.guidance_scale)
    pair = backbone.encode(["a photo"], [""], width=width, height=height, guidance=guidance)
    latents = torch.zeros(1, *backbone.latent_shape(width, height), device=models.device, dtype=backbone.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone.predict(latents, torch.tensor(500.0, device=models.device), pair.cond, guidance=guidance)
    return int(counter.get_total_flops())


PHOTO_METHODS = {"pulid": "antelopev2"}
"""Methods that read every character from reference photos, with the face pack they read them with. The suite gives
them a synthetic photo and the tiny ONNX stand-in of the pack, built in code (random weights everywhere here, and
nothing can be fetched on the GPU machine): reading the photo is preparation, paid once per character and not in the
per-frame numbers, so the rows time what a real pack would."""


def photo_inputs(method: str, out: Path) -> tuple[list[str], dict]:
    """The reference photos and extra settings ``method`` needs in the suite (none for methods that draw from text)."""
    pack = PHOTO_METHODS.get(method)
    if pack is None:
        return [], {}
    from storycast.vision.tiny_faces import write_tiny_face_pack, write_tiny_face_photo

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    face_models = write_tiny_face_pack(folder / pack, pack=pack)
    return [write_tiny_face_photo(folder / "mara.png", 1)], {"face_models": str(face_models)}


def worker(args: argparse.Namespace) -> dict:
    preset, size = FAMILIES[args.family]["tiny" if args.tiny else "real"]
    args.preset, args.size, args.frames = preset, args.size or size, [args.story_frames]
    references, photo_settings = photo_inputs(args.method, args.out)
    settings = {**SUITE_SETTINGS.get(args.method, {}), **photo_settings}
    args.method_settings = json.dumps(settings)
    options = OPTION_ROWS.get(args.family, {}).get(args.option, {}) if args.option else {}
    story = one_character_story(args.story_frames, references)
    row, (_, models, plan) = measure(args, story, settings, options, warmup=bool(options.get("compile")))
    flops = denoiser_flops(models, plan.story.settings.width, plan.story.settings.height)
    rate = matmul_rate(args.device, args.dtype, 512 if args.tiny or args.device == "cpu" else 8192)
    frame_flops = flops * row["evaluations_per_frame"]
    return {
        **row,
        "family": args.family,
        "option": args.option or "-",
        "applied": {
            **models.info.get("speed", {}),
            **({"cache": models.info["cache"]} if options.get("cache") else {}),
        },
        "preset": preset,
        "size": plan.story.settings.width,
        "dtype": args.dtype,
        "gflops_per_evaluation": flops / 1e9,
        "matmul_tflops": rate / 1e12,
        "compute_floor_share": frame_flops / (row["seconds_per_frame"] * rate) if row["seconds_per_frame"] else 0.0,
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"device={args.device} dtype={args.dtype} steps={args.steps} frames={args.story_frames} "
        f"{'tiny models' if args.tiny else 'random weights at the real sizes' if not args.size else 'random weights'}"
        + "".join(
            f"; {m}: {', '.join(f'{k}={v}' for k, v in s.items())}"
            for m, s in SUITE_SETTINGS.items()
            if m in args.methods
        ),
        "",
        "| family | method | option | px | evals/frame | s/frame | peak MB | GFLOP/eval | floor share | time x | "
        "mem x |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(
            r for r in rows if r["family"] == row["family"] and r["method"] == "vanilla" and r["option"] == "-"
        )
        lines.append(
            f"| {row['family']} | {row['method']} | {row['option']} | {row['size']} | "
            f"{row['evaluations_per_frame']:.1f} | "
            f"{row['seconds_per_frame']:.3f} | {row['peak_memory_mb']:.0f} | {row['gflops_per_evaluation']:.1f} | "
            f"{row['compute_floor_share']:.1%} | {row['seconds_per_frame'] / base['seconds_per_frame']:.2f} | "
            f"{row['peak_memory_mb'] / base['peak_memory_mb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def planned_rows(families: list[str], methods: list[str]) -> list[tuple[str, str, str | None]]:
    """(family, method, option row or None) in drawing order: per family, vanilla first, every method that runs on
    it, then the option rows (vanilla's, then the cache row of every other method that takes a cache)."""
    from storycast.methods.registry import get_method

    rows: list[tuple[str, str, str | None]] = []
    for family in families:
        names = [m for m in ["vanilla", *[m for m in methods if m != "vanilla"]] if family in get_method(m).families]
        rows += [(family, name, None) for name in names]
        options = OPTION_ROWS.get(family, {})
        rows += [(family, "vanilla", option) for option in options if "vanilla" in names]
        rows += [
            (family, name, CACHE_ROW)
            for name in names
            if name != "vanilla" and CACHE_ROW in options and get_method(name).step_cache_safe
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the CPU smoke run)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--story-frames", type=int, default=4, help="frames of the measured story")
    parser.add_argument("--size", type=int, help="image side instead of the family's (a CPU run of the real weights)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="+", help="methods to time (default: every registered method)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="print the rows it would draw (JSON) and stop")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--option", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu" and args.dtype == "fp16":
        args.dtype = "fp32"  # CPU runs in fp32
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from storycast.methods.registry import list_methods

    args.methods = args.methods or list_methods()
    planned = planned_rows(args.families, args.methods)
    if args.dry_run:
        print(json.dumps(planned))
        return
    rows: list[dict] = []
    failed: list[str] = []
    for family, method, option in planned:
        dtype = args.dtype if args.device == "cpu" else FAMILY_DTYPE.get(family, args.dtype)
        arguments = [
            "--family", family, "--method", method, "--device", args.device, "--dtype", dtype,
            "--steps", str(args.steps), "--story-frames", str(args.story_frames), "--threads", str(args.threads),
            "--out", str(args.out),
        ]  # fmt: skip
        if option:
            arguments += ["--option", option]
        if args.tiny:
            arguments.append("--tiny")
        if args.size:
            arguments += ["--size", str(args.size)]
        try:
            rows.append(run_worker(__file__, arguments))
        except SystemExit as failure:  # one method failing does not lose the others' minutes on the GPU
            failed.append(f"{family} {method} {option or ''}: {failure}")
            print(f"{family} {method} {option or ''} FAILED: {failure}", file=sys.stderr)
            continue
        print(f"{family} {method} {option or ''}: {rows[-1]['seconds_per_frame']:.3f} s/frame", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(
        json.dumps({"rows": rows, "failed": failed, "args": vars(args)}, indent=2, default=str) + "\n"
    )
    table = markdown(rows, args) + "".join(f"\nFAILED: {line}\n" for line in failed)
    (args.out / "suite.md").write_text(table)
    print(table)
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed (listed above)")


if __name__ == "__main__":
    main()

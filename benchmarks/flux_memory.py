"""FLUX's memory options against the plain configuration, measured in the same run: what each costs in time and
saves in memory, for vanilla and StoryDiffusion.

For each method and configuration (plain; offload model; offload group; the text encoders on the CPU; int8 weights;
int8 with the text encoders on the CPU; that with group offload, the smallest 24 GB combination; for
StoryDiffusion, its bank in CPU memory), a fresh process loads the models with those ``ModelSpec`` options, draws a
one-character story and reports seconds per frame, the memory the loaded models hold before drawing (CUDA:
``memory_allocated``; CPU: the resident set) and the peak over the run (CUDA: ``max_memory_allocated``; CPU: the
peak resident set), with ratios to the plain row of the same method. Offload needs CUDA: on a CPU the loader drops
it with a warning, and the table says so in the ``applied`` column.

    python benchmarks/flux_memory.py --preset tiny-flux --steps 2 --frames 2                 # CPU smoke run
    python benchmarks/flux_memory.py --preset flux-random --size 256 --steps 1 --frames 2 \\
        --depth 1,1,1                                                      # FLUX.1's widths at depth 1 on a CPU
    python benchmarks/flux_memory.py --preset flux-random --device cuda --size 1024 --steps 28 --frames 8
                                                                           # the 24 GB question, on any CUDA GPU

The last command answers whether a 1024 px, 8-frame FLUX.1-dev story fits a 24 GB GPU: a configuration fits where
its peak is under 24 GB (about 22,900 MB allocated, leaving room for the CUDA context and the allocator's cache).
``benchmarks/flux_budget.py`` works the same question out from FLUX.1-dev's exact weight sizes and activations
measured on a CPU (where the full model does not fit). ``--depth D,S,T`` builds flux-random with D double-stream blocks, S single-stream blocks and T T5 layers (FLUX.1:
19, 38, 24) at the real widths, for CPU runs; the header line states it, and the numbers are then not FLUX.1's.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

from harness import one_character_story, peak_memory_mb, run_worker

CONFIGS = {
    "plain": {},
    "model-offload": {"offload": "model"},
    "group-offload": {"offload": "group"},
    "t5-cpu": {"text_encoder_device": "cpu"},
    "int8": {"quantize": "int8"},
    "int8+t5-cpu": {"quantize": "int8", "text_encoder_device": "cpu"},
    "int8+t5-cpu+group": {"quantize": "int8", "text_encoder_device": "cpu", "offload": "group"},
    "bank-cpu": {},
}
"""ModelSpec options of each configuration ("plain" is the baseline every ratio is taken against)."""
METHOD_CONFIGS = {"bank-cpu": {"storydiffusion": {"bank_device": "cpu"}}}
"""Method settings of a configuration, per method (a configuration a method has none for is skipped for it):
StoryDiffusion's bank kept in CPU memory."""
METHODS = ("vanilla", "storydiffusion")
FLUX_DEPTH = (19, 38, 24)
"""FLUX.1's double-stream blocks, single-stream blocks and T5 layers."""


def resident_mb(device: str) -> float:
    """Memory held now: CUDA's allocated bytes, or the process's resident set on a CPU."""
    import os

    import torch

    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> dict:
    import torch

    from storycast.models import flux_components
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec
    from storycast.runs.draw import draw

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.depth:
        double, single, t5 = args.depth
        flux_components.random_flux_components = functools.partial(
            flux_components.random_flux_components, double_blocks=double, single_blocks=single, t5_layers=t5
        )
    options = CONFIGS[args.config]
    settings = METHOD_CONFIGS.get(args.config, {}).get(args.method, {})
    models = load_models(ModelSpec(source=args.preset, device=args.device, dtype=args.dtype, **options))
    loaded_mb = resident_mb(models.device)
    story = one_character_story(args.frames)
    generation = {"steps": args.steps, "width": args.size, "height": args.size}
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    result = draw(story, args.method, models, generation=generation, method_settings=settings)
    sync()
    applied = [f"offload {models.info['offload']}"] if "offload" in options else []
    applied += [f"{key}={value}" for key, value in settings.items()]
    if models.info.get("text_encoder_device"):
        applied.append(f"encoders on {models.info['text_encoder_device']}")
    if models.info.get("quantization"):
        q = models.info["quantization"]
        applied.append(f"{q['mode']} ({q['layers']}/{q['of']} linears)")
    return {
        "method": args.method,
        "config": args.config,
        "applied": ", ".join(applied) or "-",
        "frames": len(result.images),
        "size": result.images[0].width,
        "seconds_per_frame": (time.perf_counter() - started) / len(result.images),
        "loaded_mb": loaded_mb,
        "peak_memory_mb": peak_memory_mb(models.device),
        "bank_mb": max(frame.metadata.get("bank_bytes", 0) for frame in result.frames) / 2**20,
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'method':<15} {'config':<14} {'applied':<38} {'s/frame':>9} {'loaded MB':>10} {'peak MB':>9} "
        f"{'bank MB':>8} {'time x':>7} {'loaded x':>9} {'peak x':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        base = next((r for r in rows if r["method"] == row["method"] and r["config"] == "plain"), None)
        time_x, loaded_x, peak_x = (
            row[key] / base[key] if base else float("nan")
            for key in ("seconds_per_frame", "loaded_mb", "peak_memory_mb")
        )
        print(
            f"{row['method']:<15} {row['config']:<14} {row['applied']:<38} {row['seconds_per_frame']:>9.3f} "
            f"{row['loaded_mb']:>10.0f} {row['peak_memory_mb']:>9.0f} {row['bank_mb']:>8.0f} {time_x:>7.2f} "
            f"{loaded_x:>9.2f} {peak_x:>7.2f}"
        )


def depth(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--depth {text!r}: expected D,S,T (three positive integers), e.g. 1,2,1")
    return int(parts[0]), int(parts[1]), int(parts[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-flux", help="tiny-flux (CPU smoke run) or flux-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="weights dtype (default: bf16 on CUDA, fp32 on a CPU)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, help="image side (default: the preset's)")
    parser.add_argument("--frames", type=int, default=8, help="frames of the story")
    parser.add_argument("--depth", type=depth, help="flux-random's D,S,T: double, single blocks, T5 layers (CPU)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.depth and args.preset != "flux-random":
        parser.error("--depth shrinks flux-random; the tiny presets have their own depth")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    configs = ["plain", *(c for c in args.configs if c != "plain")]
    rows, failed = [], []
    for method in args.methods:
        for config in configs:
            if config in METHOD_CONFIGS and method not in METHOD_CONFIGS[config]:
                continue
            arguments = [
                "--method", method, "--config", config, "--preset", args.preset, "--device", args.device,
                "--dtype", args.dtype, "--steps", str(args.steps), "--frames", str(args.frames),
                "--threads", str(args.threads),
            ]  # fmt: skip
            if args.size:
                arguments += ["--size", str(args.size)]
            if args.depth:
                arguments += ["--depth", ",".join(map(str, args.depth))]
            try:
                rows.append(run_worker(__file__, arguments))
            except SystemExit as failure:  # one configuration failing does not lose the others' minutes
                failed.append(f"{method} {config}: {failure}")
                print(f"{method} {config} FAILED: {failure}", file=sys.stderr)
    shape = (
        f"depth {','.join(map(str, args.depth))} (double, single blocks, T5 layers; FLUX.1: "
        f"{','.join(map(str, FLUX_DEPTH))})"
        if args.depth
        else "full depth"
    )
    size = rows[0]["size"] if rows else args.size
    print(
        f"preset={args.preset} device={args.device} dtype={args.dtype} steps={args.steps} size={size} "
        f"frames={args.frames} {shape}"
    )
    if not args.device.startswith("cuda"):
        print("CPU run: offload is dropped (it needs CUDA) and memory is the process's resident set")
    print_table(rows)
    for line in failed:
        print(f"FAILED: {line}")
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed (listed above)")


if __name__ == "__main__":
    main()

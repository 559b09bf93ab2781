"""Speed options against the default, measured in the same run: seconds per frame of a method with each option.

Each configuration runs in a fresh process and draws a one-character story twice: the first pass warms up
(compilation happens there), the second is timed. Ratios are against the default configuration.

    python benchmarks/speed_options.py --preset tiny-sd15 --steps 4 --frames 4                  # CPU
    python benchmarks/speed_options.py --preset sdxl-random --device cuda --dtype fp16 --steps 30 --frames 4
    python benchmarks/speed_options.py --preset tiny --method identitystory --steps 10 --frames 4  # its options

Options of the model (every method): channels-last, compile. Options of a method, measured with it:
identitystory's batched stage 1 (``--batch-size``) and PhotoMaker's LoRA fused for stage 2 (``fuse_lora``).
"""

from __future__ import annotations

import argparse
import json
import time

from harness import one_character_story, peak_memory_mb, run_worker

OPTIONS = {"default": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True}}
"""Model options: ModelSpec fields."""
METHOD_OPTIONS = {
    "identitystory": {
        "batch-size-4": ({}, {"batch_size": 4}),
        "fuse-lora": ({"fuse_lora": True}, {}),
    },
}
"""Method options: (method settings, generation settings) per option name."""
SMALL_DISCOVERY = {"identitystory": {"discovery_candidates": 12, "preview_images": 1}}
"""Discovery runs once per character before the timed passes: a small budget keeps the benchmark short."""


def worker(args: argparse.Namespace) -> dict:
    import torch

    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec
    from storycast.runs.draw import draw

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    spec_options = OPTIONS.get(args.option, {})
    option_settings, extra = METHOD_OPTIONS.get(args.method, {}).get(args.option, ({}, {}))
    settings = {**SMALL_DISCOVERY.get(args.method, {}), **option_settings}
    models = load_models(ModelSpec(source=args.preset, device=args.device, dtype=args.dtype, **spec_options))
    story = one_character_story(args.frames)
    generation = {"steps": args.steps, "width": args.size, "height": args.size, **extra}
    draw(story, args.method, models, generation=generation, method_settings=settings)  # warm-up (compilation)
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    draw(story, args.method, models, generation=generation, method_settings=settings)
    sync()
    return {
        "option": args.option,
        "applied": models.info.get("speed", {}) or {**option_settings, **extra},
        "seconds_per_frame": (time.perf_counter() - started) / args.frames,
        "peak_memory_mb": peak_memory_mb(models.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-sd15")
    parser.add_argument("--method", default="vanilla")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--option", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for option in [*OPTIONS, *METHOD_OPTIONS.get(args.method, {})]:
        arguments = [
            "--option", option, "--preset", args.preset, "--method", args.method, "--device", args.device,
            "--dtype", args.dtype, "--steps", str(args.steps), "--frames", str(args.frames),
            "--threads", str(args.threads),
        ]  # fmt: skip
        if args.size:
            arguments += ["--size", str(args.size)]
        rows.append(run_worker(__file__, arguments))
    print(f"preset={args.preset} method={args.method} device={args.device} dtype={args.dtype} steps={args.steps}")
    header = f"{'option':<16} {'s/frame':>9} {'peak MB':>9} {'time x':>7}  applied"
    print(header)
    print("-" * len(header))
    base = rows[0]["seconds_per_frame"]
    for row in rows:
        print(
            f"{row['option']:<16} {row['seconds_per_frame']:>9.3f} {row['peak_memory_mb']:>9.0f} "
            f"{row['seconds_per_frame'] / base:>7.2f}  {row['applied'] or '-'}"
        )


if __name__ == "__main__":
    main()

"""What StoryDiffusion costs per frame against vanilla, and whether memory stays flat with story length.

For each method and story length, a fresh process draws a one-character story (its first frame is the
identity frame, every other frame reads its bank) and reports UNet evaluations per frame (counted), wall
time per frame, peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set) and the size of the
token bank, next to the bank the authors' mask variant keeps (every token of every identity frame, at every
step and layer).

    python benchmarks/storydiffusion_cost.py --steps 50 --frames 10 100                 # tiny SDXL, CPU
    python benchmarks/storydiffusion_cost.py --preset sdxl-random --size 256 --steps 2 --frames 2 4
    python benchmarks/storydiffusion_cost.py --preset sdxl-random --device cuda --dtype fp16 --size 768 --steps 35

The ratios printed are against vanilla measured in the same run. Bars (the core issue): UNet evaluations
per frame 1.0x vanilla's; peak memory flat from 10 to 100 frames.
"""

from __future__ import annotations

import argparse
import json
import time

from harness import cost_parser, memory_growth, peak_memory_mb, print_table, run_worker

SCENES = (
    "reading in a library", "walking on a beach at sunset", "cooking in a small kitchen", "riding a bicycle in a park",
    "painting at an easel", "sitting in a café", "standing on a train platform", "hiking up a mountain trail",
    "playing a piano", "looking out of a rainy window",
)  # fmt: skip


def one_character_story(frames: int):
    """A story of ``frames`` frames of one woman in cycling scenes (written here, not read from ../shared)."""
    from storycast.story.parse import parse_story

    return parse_story(
        {
            "title": "benchmark",
            "style": "A photo of",
            "characters": [{"id": "mara", "description": "a young woman with short red hair", "class_word": "woman"}],
            "frames": [{"text": f"{{mara}} {SCENES[i % len(SCENES)]}"} for i in range(frames)],
        }
    )


def full_bank_bytes(models, story, identity_frames: int) -> int:
    """The bank of the authors' mask variant: every token of every identity frame, both guidance halves, every
    step and up-block self-attention layer, in the model's dtype."""
    from storycast.attention.layers import select_layers

    pipe = models.pipeline
    gen = story.settings
    height, width = gen.height // pipe.vae_scale_factor, gen.width // pipe.vae_scale_factor
    per_step = sum(
        (height >> layer.level) * (width >> layer.level) * layer.module.to_q.in_features
        for layer in select_layers(pipe.unet, kind="self", blocks=["up"])
    )
    return per_step * 2 * identity_frames * gen.steps * pipe.unet.dtype.itemsize


def worker(args: argparse.Namespace) -> dict:
    import torch

    from storycast.methods.base import RunContext
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec
    from storycast.pipelines.noise import count_unet_evaluations
    from storycast.runs.plan import plan_run

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    models = load_models(ModelSpec(source=args.preset, device=args.device, dtype=args.dtype))
    generation = {"steps": args.steps, "width": args.size, "height": args.size}
    settings = json.loads(args.method_settings) if args.method == "storydiffusion" else {}
    plan = plan_run(
        one_character_story(args.frames[0]), args.method, model=models, method_settings=settings, generation=generation
    )
    method = plan.method(models, plan.settings)
    context = RunContext()
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)
    method.prepare(plan.story, context)
    sync()
    started = time.perf_counter()
    with torch.no_grad(), count_unet_evaluations(models.pipeline.unet) as counter:
        for group in plan.groups:
            method.generate(plan.story, group.frames, context)
    sync()
    seconds = time.perf_counter() - started
    frames = len(plan.story)
    bank = getattr(method, "bank", None)
    identity = sum(len(g.frames) for g in plan.groups if g.group.role.startswith("identity"))
    return {
        "method": args.method,
        "frames": frames,
        "steps": plan.story.settings.steps,
        "evaluations_per_frame": counter.evaluations / frames,
        "seconds_per_frame": seconds / frames,
        "peak_memory_mb": peak_memory_mb(models.device),
        "bank_mb": bank.nbytes / 2**20 if bank is not None else 0.0,
        "full_bank_mb": full_bank_bytes(models, plan.story, identity) / 2**20 if bank is not None else 0.0,
    }


def main() -> None:
    parser = cost_parser(__doc__, "storydiffusion", "tiny, tiny-sd15, sdxl-random, sd15-random")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    for frames in args.frames:
        for method in ("vanilla", "storydiffusion"):
            arguments = [
                "--method", method, "--frames", str(frames), "--preset", args.preset, "--device", args.device,
                "--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads),
                "--method-settings", args.method_settings,
            ]  # fmt: skip
            if args.size:
                arguments += ["--size", str(args.size)]
            rows.append(run_worker(__file__, arguments))
    print(
        f"preset={args.preset} device={args.device} dtype={args.dtype} steps={args.steps} size={args.size or 'preset'}"
    )
    print_table(rows, "vanilla", extra=[("bank_mb", "bank MB", ".2f"), ("full_bank_mb", "all-token bank MB", ".2f")])
    growth = memory_growth(rows, "storydiffusion")
    if growth:
        print(growth)


if __name__ == "__main__":
    main()

"""What IdentityStory costs per frame against vanilla SDXL, and whether memory stays flat with story length.

For each method and story length, a fresh process draws a one-character story and reports UNet evaluations
per frame, wall time per frame and peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set).
Identity discovery runs before the timed frames and is reported on its own line: it is paid once per
character and then read from the identity library. One frame is also drawn with the authors' formulation
(``reference_redenoise``) to show the evaluations it spends.

    python benchmarks/identitystory_cost.py                                  # tiny models, CPU
    python benchmarks/identitystory_cost.py --preset sdxl-random --device cuda --dtype fp16 --steps 50
    python benchmarks/identitystory_cost.py --preset tiny-flux --steps 28    # FLUX + PuLID-FLUX (ours)

The ratios printed are against vanilla measured in the same run. Bars (issue 3): identitystory <= 1.9x
vanilla's UNet evaluations per single-character frame, peak memory <= 1.15x vanilla's, and flat from 10 to
100 frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from harness import cost_parser, memory_growth, peak_memory_mb, print_table, run_worker

ROOT = Path(__file__).resolve().parents[1]
BENCH_STORY = ROOT.parent / "shared" / "bench" / "ConsiStory-Human" / "single" / "story_000.json"


def build_story(frames: int, steps: int, size: int | None):
    """A one-character benchmark story (ConsiStory-Human single/story_000) cycled to ``frames`` frames."""
    from storycast.story.parse import load_story

    story = load_story(BENCH_STORY)
    cycle = [story.frames[i % len(story.frames)] for i in range(frames)]
    return dataclasses.replace(story, frames=tuple(cycle))


def worker(args: argparse.Namespace) -> dict:
    import torch

    from storycast.methods.base import RunContext
    from storycast.methods.registry import get_method
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec
    from storycast.pipelines.noise import count_evaluations
    from storycast.runs.plan import resolve_generation

    if args.device == "cpu":
        # Tiny models gain nothing from intra-op threads, and lose a lot when another process shares the cores.
        torch.set_num_threads(args.threads)
    models = load_models(ModelSpec(source=args.preset, device=args.device, dtype=args.dtype))
    method_class = get_method(args.method)
    settings = method_class.settings_class.from_mapping(json.loads(args.method_settings))
    method = method_class(models, settings)
    story = build_story(args.frames[0], args.steps, args.size)
    overrides = {"steps": args.steps, "width": args.size, "height": args.size}
    story = dataclasses.replace(story, settings=resolve_generation(story, models, method, overrides))
    context = RunContext(cache_dir=Path(args.cache))
    unet = models.backbone.denoiser
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)

    started = time.perf_counter()
    with count_evaluations(unet) as prepare_count:
        method.prepare(story, context)
    prepare_seconds = time.perf_counter() - started

    frames = list(range(len(story)))
    if args.reference:
        frames = frames[:1]
    sync()
    started = time.perf_counter()
    with count_evaluations(unet) as counter:
        for index in frames:
            if args.reference:
                reference_frame(method, story, index, context)
            else:
                method.generate(story, (index,), context)
    sync()
    seconds = time.perf_counter() - started
    return {
        "method": args.method + (" (reference formulation)" if args.reference else ""),
        "frames": len(frames),
        "steps": story.settings.steps,
        "evaluations_per_frame": counter.evaluations / len(frames),
        "seconds_per_frame": seconds / len(frames),
        "peak_memory_mb": peak_memory_mb(models.device),
        "prepare_evaluations": prepare_count.evaluations,
        "prepare_seconds": prepare_seconds,
    }


def reference_frame(method, story, index, context) -> None:
    """One frame with the authors' formulation (on FLUX: the naive full formulation), on fixed masks."""
    import torch

    from storycast.methods.identitystory import flux, flux_injection, injection, prompts
    from storycast.utils.torch_utils import make_generator

    backbone = method.backbone
    gen = story.settings
    resolved = method.resolved_settings(story)
    settings = resolved.injection
    characters = story.frame_characters(index)
    schedule = method._schedule(story, resolved)
    negative = story.negative_prompt(index)
    prompt = prompts.global_prompt(story, index, settings.prompt_style)
    size = {"width": gen.width, "height": gen.height}
    conditioning = backbone.encode([prompt], [negative], guidance=schedule.guidance, **size)
    initial = backbone.initial_latents(
        backbone.scheduler(gen.steps, **size), [make_generator(0, str(method.models.device))], **size
    )
    masks = torch.zeros(len(characters), gen.height, gen.width, dtype=torch.bool)
    masks[:, gen.height // 4 : 3 * gen.height // 4, gen.width // 4 : 3 * gen.width // 4] = True
    if method.is_flux:
        space = method.pulid
        regions = flux.regions(space, story, index, characters, method._identities, negative or "", schedule.guidance)
        latents, _ = flux_injection.reference_redenoise(
            space, conditioning, regions, masks, initial, schedule, resolved.flux.id_weight
        )
    else:
        regions = method._regions(story, index, characters, negative)
        _, latents = injection.reference_redenoise(
            backbone, method.adapter, conditioning, regions, masks, initial, schedule
        )
    backbone.decode(latents)


def run_config(args: argparse.Namespace, method: str, frames: int, cache: str, reference: bool = False) -> dict:
    arguments = [
        "--method", method, "--frames", str(frames), "--preset", args.preset, "--device", args.device,
        "--dtype", args.dtype, "--steps", str(args.steps), "--cache", cache, "--threads", str(args.threads),
        "--method-settings", args.method_settings if method == "identitystory" else "{}",
    ]  # fmt: skip
    if args.size:
        arguments += ["--size", str(args.size)]
    if reference:
        arguments.append("--reference")
    return run_worker(__file__, arguments)


def main() -> None:
    parser = cost_parser(__doc__, "identitystory", "tiny, sdxl-random, sdxl (real weights), tiny-flux or flux-random")
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        # Discovery once, so that every measured run reads the identity from the library.
        warm = run_config(args, "identitystory", 1, cache)
        for frames in args.frames:
            rows.append(run_config(args, "vanilla", frames, cache))
            rows.append(run_config(args, "identitystory", frames, cache))
        rows.append(run_config(args, "identitystory", 1, cache, reference=True))

    print(f"preset={args.preset} device={args.device} dtype={args.dtype} steps={args.steps}")
    print(f"identity discovery (once per character): {warm['prepare_evaluations']} UNet evaluations, "
          f"{warm['prepare_seconds']:.1f} s")  # fmt: skip
    print_table(rows, "vanilla")
    growth = memory_growth([r for r in rows if "reference" not in r["method"]], "identitystory")
    if growth:
        print(growth)


if __name__ == "__main__":
    main()

"""What the cost benchmarks share: one fresh process per measured configuration, peak memory, the table.

Each configuration runs in its own process so that its peak memory is its own (CUDA:
``max_memory_allocated``; CPU: the peak resident set). Rows are printed with their ratios to a baseline
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def cost_parser(description: str, method: str, presets: str) -> argparse.ArgumentParser:
    """The options every cost benchmark takes; ``method`` names the measured method (its settings' JSON)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=presets)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, help="image side (default: the preset's)")
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 100], help="story lengths")
    parser.add_argument("--method-settings", default="{}", help=f"{method} settings as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    parser.add_argument(
        "--depth",
        help="flux-random's depth D,S,T (double-stream blocks, single-stream blocks, T5 layers) where the 12B model "
        "does not fit (CPU runs); FLUX.1's widths are kept",
    )
    parser.add_argument("--method", default="vanilla", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


SCENES = (
    "reading in a library", "walking on a beach at sunset", "cooking in a small kitchen", "riding a bicycle in a park",
    "painting at an easel", "sitting in a café", "standing on a train platform", "hiking up a mountain trail",
    "playing a piano", "looking out of a rainy window",
)  # fmt: skip


def one_character_story(frames: int, references: Sequence[str] = ()) -> Any:
    """A story of ``frames`` frames of one woman in cycling scenes (written here, not read from ../shared)."""
    from storycast.story.parse import parse_story

    character = {"id": "mara", "description": "a young woman with short red hair", "class_word": "woman"}
    if references:
        character["references"] = list(references)
    return parse_story(
        {
            "title": "benchmark",
            "style": "A photo of",
            "characters": [character],
            "frames": [{"text": f"{{mara}} {SCENES[i % len(SCENES)]}"} for i in range(frames)],
        }
    )


def measure(
    args: argparse.Namespace,
    story: Any,
    settings: dict[str, Any],
    model_options: dict[str, Any] | None = None,
    *,
    warmup: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Draw ``story`` with ``args.method`` in this process: the common row (UNet evaluations, seconds and peak
    memory per frame) and the method object (for method-specific columns). Preparation is not timed.
    ``model_options``: further ``ModelSpec`` fields (compile, cache); ``warmup``: draw the story once, untimed,
    first (compilation happens there)."""
    import time

    import torch

    from storycast.methods.base import RunContext
    from storycast.models.loading import load_models
    from storycast.models.spec import ModelSpec
    from storycast.pipelines.noise import count_evaluations
    from storycast.runs.plan import plan_run

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    shrink_flux(getattr(args, "depth", None))
    spec = ModelSpec(source=args.preset, device=args.device, dtype=args.dtype, **(model_options or {}))
    models = load_models(spec)
    generation = {"steps": args.steps, "width": args.size, "height": args.size}
    plan = plan_run(story, args.method, model=models, method_settings=settings, generation=generation)
    method = plan.method(models, plan.settings)
    context = RunContext()
    sync = torch.cuda.synchronize if models.device.startswith("cuda") else (lambda: None)
    method.prepare(plan.story, context)
    if warmup:
        with torch.no_grad():
            for group in plan.groups:
                method.generate(plan.story, group.frames, context)
    sync()
    started = time.perf_counter()
    with torch.no_grad(), count_evaluations(models.backbone.denoiser) as counter:
        for group in plan.groups:
            method.generate(plan.story, group.frames, context)
    sync()
    seconds = time.perf_counter() - started
    frames = len(plan.story)
    row = {
        "method": args.method,
        "frames": frames,
        "steps": plan.story.settings.steps,
        "evaluations_per_frame": counter.evaluations / frames,
        "seconds_per_frame": seconds / frames,
        "peak_memory_mb": peak_memory_mb(models.device),
    }
    return row, (method, models, plan)


def shrink_flux(depth: str | None) -> None:
    """In this worker process, flux-random at depth ``"D,S,T"`` (double-stream blocks, single-stream blocks, T5
    layers) instead of FLUX.1's 19, 38 and 24, at full width: the 12B transformer and T5-XXL do not fit a 24 GB
    machine's memory, their blocks do. Nothing else changes."""
    if not depth:
        return
    import functools

    from storycast.models import flux_components

    double, single, t5 = (int(part) for part in depth.split(","))
    flux_components.random_flux_components = functools.partial(
        flux_components.random_flux_components, double_blocks=double, single_blocks=single, t5_layers=t5
    )


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_columns(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table: ``columns`` of (title, width), the first left-aligned, the others right-aligned."""
    lines = [[title for title, _ in columns], *rows]
    for number, cells in enumerate(lines):
        first, *rest = zip(cells, (width for _, width in columns), strict=True)
        print(" ".join([f"{first[0]:<{first[1]}}", *(f"{cell:>{width}}" for cell, width in rest)]))
        if number == 0:
            print("-" * (sum(width for _, width in columns) + len(columns) - 1))


def run_worker(script: str, arguments: Sequence[str]) -> dict[str, Any]:
    """Run ``script --worker ARGUMENTS`` in a fresh process; its last stdout line is the JSON result."""
    result = subprocess.run([sys.executable, script, "--worker", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"worker failed ({' '.join(arguments)}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: Sequence[dict[str, Any]], baseline: str, extra: Sequence[tuple[str, str, str]] = ()) -> None:
    """Rows of method, frames, UNet evaluations, seconds and peak memory per frame, with ratios to the ``baseline``
    method's row of the same length (or its first row). ``extra``: (key, header, format) columns."""
    header = (
        f"{'method':<38} {'frames':>6} {'evals/frame':>12} {'s/frame':>9} {'peak MB':>10}"
        + "".join(f" {title:>{len(title)}}" for _, title, _ in extra)
        + f" {'evals x':>8} {'time x':>7} {'mem x':>6}"
    )
    print(header)
    print("-" * len(header))
    base = {row["frames"]: row for row in rows if row["method"] == baseline}
    first = next(iter(base.values()))
    for row in rows:
        ref = base.get(row["frames"], first)
        cells = "".join(f" {format(row.get(key, float('nan')), fmt):>{len(title)}}" for key, title, fmt in extra)
        print(
            f"{row['method']:<38} {row['frames']:>6} {row['evaluations_per_frame']:>12.1f} "
            f"{row['seconds_per_frame']:>9.3f} {row['peak_memory_mb']:>10.0f}{cells} "
            f"{row['evaluations_per_frame'] / ref['evaluations_per_frame']:>8.2f} "
            f"{row['seconds_per_frame'] / ref['seconds_per_frame']:>7.2f} "
            f"{row['peak_memory_mb'] / ref['peak_memory_mb']:>6.2f}"
        )


def memory_growth(rows: Sequence[dict[str, Any]], method: str) -> str | None:
    """ "<method> peak memory, N vs M frames: r x" for the longest and shortest runs of ``method``."""
    runs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["frames"])
    if len(runs) < 2:
        return None
    growth = runs[-1]["peak_memory_mb"] / runs[0]["peak_memory_mb"]
    return f"{method} peak memory, {runs[-1]['frames']} vs {runs[0]['frames']} frames: {growth:.3f}x"


def compare_with_vanilla(
    script: str, args: argparse.Namespace, method: str, extra: Sequence[tuple[str, str, str]] = ()
) -> None:
    """Run vanilla and ``method`` for every story length of ``args.frames``, each in a fresh worker process of
    ``script``, and print the table with ratios to vanilla and the memory growth of ``method``."""
    rows = []
    for frames in args.frames:
        for name in ("vanilla", method):
            arguments = [
                "--method", name, "--frames", str(frames), "--preset", args.preset, "--device", args.device,
                "--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads),
                "--method-settings", args.method_settings,
            ]  # fmt: skip
            if args.size:
                arguments += ["--size", str(args.size)]
            if args.depth:
                arguments += ["--depth", args.depth]
            rows.append(run_worker(script, arguments))
    depth = f" depth={args.depth} (double, single blocks, T5 layers)" if args.depth else ""
    print(
        f"preset={args.preset} device={args.device} dtype={args.dtype} steps={args.steps} "
        f"size={args.size or 'preset'}{depth}"
    )
    print_table(rows, "vanilla", extra=extra)
    growth = memory_growth(rows, method)
    if growth:
        print(growth)


def all_token_bytes(models: Any, story: Any, frames: int, blocks: Sequence[str] = ("up",)) -> int:
    """What a -inf-masked formulation would keep of ``frames`` frames: every token of every step and shared layer
    (``blocks``' self-attention), every guidance half, in the model's dtype: a UNet layer's tokens before
    projection; a FLUX layer's image keys and values."""
    from storycast.attention.layers import select_layers

    backbone = models.backbone
    gen = story.settings
    _, height, width = backbone.latent_shape(gen.width, gen.height)
    per_step = 0
    for layer in select_layers(backbone.denoiser, kind="self", blocks=blocks):
        channels = 2 * layer.module.inner_dim if layer.is_joint else layer.module.to_q.in_features
        per_step += (height >> layer.level) * (width >> layer.level) * channels
    halves = backbone.guidance(gen.guidance_scale, getattr(gen, "true_cfg_scale", None)).halves
    return per_step * halves * frames * gen.steps * backbone.dtype.itemsize


def cost_main(
    doc: str,
    script: str,
    method: str,
    presets: str,
    worker: Any,
    extra: Sequence[tuple[str, str, str]],
    **defaults: Any,
) -> None:
    """The command line of a cost benchmark: the comparison, or (``--worker``) one measured configuration."""
    parser = cost_parser(doc, method, presets)
    parser.set_defaults(**defaults)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    compare_with_vanilla(script, args, method, extra=extra)

"""``storycast benchmark``: draw and score a benchmark split in one go (resumable)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from storycast.cli.common import (
    add_generation_arguments,
    add_language_argument,
    add_method_settings_argument,
    add_model_arguments,
    generation_from_args,
    long_work,
    model_spec_from_args,
    parse_assignments,
)
from storycast.cli.evaluate import add_eval_arguments, evaluator_from_args

HELP = "draw and score a benchmark split (ConsiStory-Human single / multi-2, or a folder of stories)"
EPILOG = """\
examples:
  storycast benchmark single --method vanilla --preset tiny --steps 1 --limit 2 --out runs/bench-tiny
  storycast benchmark single multi-2 --method identitystory --out runs/is --skip qalign
  storycast benchmark my_stories/ --method vanilla --preset sd15 --out runs/mine --eval-preset 1prompt1story
  storycast benchmark vistorybench --split lite --method storydiffusion --out runs/vistory \
      --judge-url https://api.openai.com/v1 --judge-model gpt-4.1

SUITE is a ConsiStory-Human split (single, multi-2, multi-3; found under --bench-root, $STORYCAST_BENCH,
the storycast cache where `storycast download consistory-human` puts it, or ../shared/bench/ConsiStory-Human),
vistorybench (ViStoryBench's stories, where `storycast download vistorybench` puts them; --split lite for its 20
lite stories), or a folder of story files. Each story goes to OUT/<suite>/<story>/.
A ViStoryBench folder's frames are also written as its scorer reads them
(OUT/outputs/<method>/<mode>/<lang>/<timestamp>/<story>/shots/shot_NN.png), and a shot a method cannot take as it
is falls back (recorded per frame in manifest.json, `limits`).
ViStoryBench folders are scored with the vistorybench protocol (CSD, CIDS, aesthetics, Inception Score, OCCM, and
prompt alignment when --judge-url names a judge) unless --eval-preset says otherwise; a story that cannot be read
is reported (results.md, exit status 1) and the others are drawn.
Running the same command again skips stories already drawn and scored, and finishes the others.
With a tiny --preset the evaluation models are tiny too.

many GPUs or nodes (the stories are dealt to the processes; the main one writes the tables):
  torchrun --nproc_per_node 8 -m storycast benchmark single --method identitystory --out runs/is
  accelerate launch --num_processes 8 -m storycast benchmark single --method identitystory --out runs/is
  accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --num_processes 16 \
      -m storycast benchmark single --method identitystory --out /shared/runs/is
job arrays without communication (SLURM):
  storycast benchmark single --method vanilla --out runs/v --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  storycast benchmark single --method vanilla --out runs/v --merge       # once every shard is done"""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suites", nargs="+", metavar="SUITE", help="single, multi-2, ... or a folder of story files")
    parser.add_argument(
        "-m", "--method", default="vanilla", help="method to draw with (default: vanilla; see `storycast methods`)"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="benchmark folder")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N stories of each suite")
    add_language_argument(parser)
    parser.add_argument(
        "--split",
        choices=("full", "lite"),
        default="full",
        help="ViStoryBench folders: every story (full) or the benchmark's 20 lite stories (lite)",
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        metavar="DIR",
        help="ViStoryBench folders: where the images go as ViStoryBench's scorer reads them "
        "(DIR/<method>/<mode>/<lang>/<timestamp>/<story>/shots/shot_NN.png; default OUT/outputs)",
    )
    parser.add_argument(
        "--outputs-mode",
        metavar="NAME",
        help="ViStoryBench folders: the <mode> folder of that tree (default img_ref or text_only, as the method reads "
        "the reference images or not)",
    )
    parser.add_argument("--bench-root", type=Path, help="folder holding the ConsiStory-Human splits")
    add_method_settings_argument(parser)
    add_model_arguments(parser)
    add_generation_arguments(parser, "generation (override the story files)")
    parser.add_argument("--no-storyboard", action="store_true", help="do not write each run's storyboard.png")
    parser.add_argument(
        "--overwrite", action="store_true", help="redraw every story (and replace runs of other settings)"
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="draw and score only this share of the stories (a job array's task, 0 <= I < N); no tables",
    )
    parser.add_argument(
        "--merge", action="store_true", help="draw nothing: the tables of the runs the shards finished"
    )
    add_eval_arguments(parser, standalone=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from storycast.evaluation.benchmark import (
        BenchmarkOptions,
        is_vistory_suite,
        resolve_suite,
        run_benchmark,
        select_split,
    )
    from storycast.evaluation.report import summary_table
    from storycast.models.presets import BASE_PRESETS
    from storycast.runs.shards import launched_processes, parse_shard

    log = logging.getLogger("storycast")
    helper = launched_processes() > 1 and os.environ.get("RANK", "0") != "0"
    if helper:  # logs and progress bars from the main process only
        log.setLevel(logging.WARNING)
        args.progress = False
    suites = [
        select_split(resolve_suite(name, args.bench_root, args.cache_dir, args.limit), args.split)
        for name in args.suites
    ]
    spec = model_spec_from_args(args)
    tiny = args.model is None and BASE_PRESETS.get(spec.source) is not None and BASE_PRESETS[spec.source].tiny
    generation = generation_from_args(args)
    options = BenchmarkOptions(
        out_dir=args.out,
        limit=args.limit,
        language=args.lang,
        cache_dir=args.cache_dir,
        command=shlex.join(["storycast", *sys.argv[1:]]) if sys.argv else None,
        storyboard=not args.no_storyboard,
        overwrite=args.overwrite,
        shard=parse_shard(args.shard),
        merge=args.merge,
        outputs=args.outputs,
        outputs_mode=args.outputs_mode,
    )
    with long_work(args.progress) as bars:
        # ViStoryBench folders are scored with their benchmark's protocol unless --eval-preset says otherwise.
        default = "vistorybench" if any(is_vistory_suite(s) for s in suites) else None
        evaluator = evaluator_from_args(
            args, tiny=tiny, device=spec.aux_device or spec.device, progress=bars, default_preset=default
        )
        result = run_benchmark(
            suites,
            args.method,
            spec,
            evaluator,
            options,
            method_settings=parse_assignments(args.settings),
            generation=generation,
            progress=bars,
        )
    if helper or options.shard != (0, 1):
        if options.shard != (0, 1) and not helper:
            log.info("shard %s done; when every shard is, build the tables with --merge", args.shard)
        return 1 if result.failed else 0
    print("\n".join(summary_table(result.evaluation.results)))
    for failure in result.failed:
        log.error("not drawn: %s: %s", failure["story"], failure["reason"])
    log.info(
        "%d stor(ies) drawn, %d scored, %d already finished -> %s",
        len(result.drawn),
        len(result.scored),
        len(result.finished),
        ", ".join(str(p) for p in result.evaluation.paths.values()),
    )
    return 1 if result.failed else 0

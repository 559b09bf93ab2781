"""``storycast generate``: draw a story into a run folder."""

from __future__ import annotations

import argparse
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

HELP = "draw a story: frames, storyboard sheet and manifest (resumable)"
EPILOG = """\
examples:
  storycast generate examples/lighthouse.yaml --preset tiny --out runs/demo
  storycast generate story_000.json --method vanilla --preset sdxl --steps 30 --out runs/s0
  storycast generate story.yaml --model ./my-sdxl-folder --batch-size 2 --out runs/mine

Running the same command again skips the frames already drawn; --overwrite redraws them.

one long story over the GPUs of a machine (its groups split when none reads another's output):
  torchrun --nproc_per_node 8 -m storycast generate long_story.yaml --method vanilla --out runs/long

a folder of stories (each into OUT/<story>/), over many GPUs or job-array tasks:
  storycast generate stories/ --method storydiffusion --out runs/all
  torchrun --nproc_per_node 8 -m storycast generate stories/ --method storydiffusion --out runs/all
  storycast generate stories/ --out runs/all --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"""


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "story", type=Path, help="story file (.yaml/.json, ours or ConsiStory-Human), or a folder of them"
    )
    parser.add_argument(
        "-m", "--method", default="vanilla", help="method to draw with (default: vanilla; see `storycast methods`)"
    )
    parser.add_argument("-o", "--out", type=Path, help="run folder (default: runs/<story name>-<method>)")
    add_method_settings_argument(parser)
    add_language_argument(parser)
    add_model_arguments(parser)
    add_generation_arguments(parser, "generation (override the story file)")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--overwrite", action="store_true", help="redraw every frame (and replace a run of other settings)"
    )
    out.add_argument("--no-storyboard", action="store_true", help="do not write storyboard.png")
    out.add_argument("--shard", metavar="I/N", help="with a folder: only this share of its stories (0 <= I < N)")
    out.add_argument("--columns", type=int, help="frames per storyboard row")
    out.add_argument(
        "--cache-dir", type=Path, help="storycast cache (default: $STORYCAST_CACHE or ~/.cache/storycast)"
    )
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from storycast.story.parse import load_story

    log = logging.getLogger("storycast")
    if args.story.is_dir():
        return _generate_folder(args, log)
    if args.shard is not None:
        from storycast.errors import SettingsError

        raise SettingsError(
            f"--shard {args.shard} splits a folder of stories, but {args.story} is one story. Fix: pass the folder, "
            f"or leave --shard out."
        )
    from storycast.runs.shards import launched_processes

    story = load_story(args.story, language=args.lang)
    if launched_processes() > 1:
        return _generate_split(args, log, story)
    with long_work(args.progress) as bars:  # SIGTERM anywhere in the command is a clean interrupt
        return _generate(args, bars, log, story)


def _generate_split(args: argparse.Namespace, log: Any, story: Any) -> int:
    """One story over the processes ``torchrun`` / ``accelerate launch`` started: each draws its share of the
    groups (when no group reads another's output), then the main process writes the manifest and storyboard."""
    import dataclasses
    import logging

    from storycast.runs.plan import plan_run
    from storycast.runs.runner import RunOptions, execute_plan, independent_groups
    from storycast.runs.shards import current_share

    share, state = current_share()
    if not share.main:
        log.setLevel(logging.WARNING)  # logs and progress bars from the main process only
        args.progress = False
    spec = model_spec_from_args(args)
    if state is not None and spec.device in ("auto", "cuda"):
        spec = dataclasses.replace(spec, device=str(state.device))  # each process on its own GPU
    out_dir = args.out or Path("runs") / f"{args.story.stem}-{args.method}"
    settings, generation = parse_assignments(args.settings), generation_from_args(args)

    def planned(overwrite: bool) -> Any:
        return plan_run(story, args.method, model=spec, method_settings=settings, generation=generation,
                        out_dir=out_dir, overwrite=overwrite)  # fmt: skip

    plan = planned(args.overwrite)
    plan.check_folder(args.overwrite)
    options = RunOptions(
        out_dir=out_dir, overwrite=args.overwrite, storyboard=not args.no_storyboard, columns=args.columns,
        cache_dir=args.cache_dir, command=shlex.join(["storycast", *sys.argv[1:]]) if sys.argv else None,
    )  # fmt: skip
    models: Any = spec
    with long_work(args.progress) as bars:
        if independent_groups(plan):
            models = execute_plan(plan, None, spec, options, progress=bars, share=share).loaded_models or spec
        elif share.main:
            log.warning(
                "the groups of '%s' with %s read each other's output (anchors, identity frames), so the main "
                "process draws them all; the story's groups are split only for methods whose groups are independent",
                args.story, args.method,
            )  # fmt: skip
        assert state is not None
        state.wait_for_everyone()
        if share.main:
            # Planned again: the frames every process drew are found, and the manifest gets all their records.
            result = execute_plan(planned(False), None, models, dataclasses.replace(options, overwrite=False),
                                  progress=bars)  # fmt: skip
            log.info("drew %d frame(s) over %d processes -> %s", len(plan.frames_to_draw), share.processes,
                     result.out_dir)  # fmt: skip
    return 0


def _generate_folder(args: argparse.Namespace, log: Any) -> int:
    """Every story file of a folder into OUT/<relative path>/, dealt over the launched processes and shards;
    every story is read and planned before any model loads."""
    import dataclasses
    import logging
    import os

    from storycast.errors import SettingsError
    from storycast.runs.plan import plan_run
    from storycast.runs.runner import RunOptions, execute_plan
    from storycast.runs.shards import current_share, launched_processes, parse_shard
    from storycast.story.parse import load_story

    folder: Path = args.story
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file())
    if not files:
        raise SettingsError(
            f"'{folder}' holds no story files (.yaml, .yml, .json). Fix: point at a story or a folder."
        )
    out_root = args.out or Path("runs") / f"{folder.name}-{args.method}"
    if launched_processes() > 1 and os.environ.get("RANK", "0") != "0":
        log.setLevel(logging.WARNING)  # logs and progress bars from the main process only
        args.progress = False
    stories = [load_story(path, language=args.lang) for path in files]  # every file checked before any work
    spec = model_spec_from_args(args)
    settings, generation = parse_assignments(args.settings), generation_from_args(args)
    plans = [
        plan_run(
            story, args.method, model=spec, method_settings=settings, generation=generation,
            out_dir=out_root / path.relative_to(folder).with_suffix(""), overwrite=args.overwrite,
        )
        for story, path in zip(stories, files, strict=True)
    ]  # fmt: skip
    for plan in plans:
        plan.check_folder(args.overwrite)
    share, state = current_share(parse_shard(args.shard))
    if state is not None and spec.device in ("auto", "cuda"):
        spec = dataclasses.replace(spec, device=str(state.device))  # each process on its own GPU
    models: Any = spec
    command = shlex.join(["storycast", *sys.argv[1:]]) if sys.argv else None
    with long_work(args.progress) as bars:
        for number in share.mine(len(plans)):
            plan = plans[number]
            assert plan.out_dir is not None
            options = RunOptions(
                out_dir=plan.out_dir, overwrite=args.overwrite, storyboard=not args.no_storyboard,
                columns=args.columns, cache_dir=args.cache_dir, command=command,
            )  # fmt: skip
            result = execute_plan(plan, None, models, options, progress=bars)
            models = result.loaded_models or models  # loaded once, for the first story with frames to draw
            log.info("%s: drew %d frame(s) -> %s", files[number].name, len(result.drawn), result.out_dir)
    if state is not None:
        state.wait_for_everyone()
    return 0


def _generate(args: argparse.Namespace, bars: Any, log: Any, story: Any) -> int:
    from storycast.runs.runner import RunOptions, generate_story

    spec = model_spec_from_args(args)
    out_dir = args.out or Path("runs") / f"{args.story.stem}-{args.method}"
    options = RunOptions(
        out_dir=out_dir,
        overwrite=args.overwrite,
        storyboard=not args.no_storyboard,
        columns=args.columns,
        cache_dir=args.cache_dir,
        command=shlex.join(["storycast", *sys.argv[1:]]) if sys.argv else None,
    )
    generation = generation_from_args(args)
    # Planned and checked before the model loads; the model loads only if a frame needs drawing.
    result = generate_story(
        story,
        args.method,
        spec,
        options,
        method_settings=parse_assignments(args.settings),
        generation=generation,
        progress=bars,
    )
    kept = f", {len(result.kept)} kept from before" if result.kept else ""
    log.info("drew %d frame(s)%s -> %s", len(result.drawn), kept, result.out_dir)
    if result.storyboard_path:
        log.info("storyboard: %s", result.storyboard_path)
    return 0

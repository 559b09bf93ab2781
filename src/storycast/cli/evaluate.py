"""``storycast evaluate``: score runs with a paper's protocol, or compare evaluated folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.cli.common import parse_assignments
from storycast.models.presets import BASE_PRESETS

if TYPE_CHECKING:
    from storycast.evaluation.evaluator import Evaluator
    from storycast.evaluation.vistory_judge import JudgeOptions
    from storycast.methods.base import ProgressCallback

HELP = "score runs (CLIP-T, CLIP-I, Face-Sim, ...) with a paper's protocol; compare evaluated folders"
EPILOG = """\
examples:
  storycast evaluate runs/demo --preset tiny
  storycast evaluate runs/bench --eval-preset identitystory --skip qalign
  storycast evaluate runs/bench --eval-preset 1prompt1story --clip-model ./clip-b32 --clip-i-model ./clip-b16
  storycast evaluate --compare runs/vanilla runs/identitystory --out report/
  storycast evaluate --list-presets

RUN_DIR is one run (it has manifest.json) or a folder of runs at any depth. Each run gets scores.json
and a contact sheet scores.png; the folder gets results.json, results.md and the chart results.png.
Scores already up to date are reused, and features are cached by image hash, so rescoring is cheap."""

TINY_PRESETS = tuple(sorted(name for name, preset in BASE_PRESETS.items() if preset.tiny))


def add_eval_arguments(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    """Flags of the scoring protocol and of the evaluation models, shared by ``evaluate`` and ``benchmark``.

    ``standalone`` (``evaluate``) names the device flags ``--device``/``--dtype``; ``benchmark`` has those for
    the generator and gets ``--eval-device``/``--eval-dtype``.
    """
    from storycast.evaluation.presets import DEFAULT_EVAL_PRESET, EVAL_PRESETS, METRIC_GROUPS, METRICS

    metrics = ", ".join([*METRICS, *METRIC_GROUPS])
    protocol = parser.add_argument_group("evaluation protocol")
    default = f"vistorybench for runs of ViStoryBench stories, else {DEFAULT_EVAL_PRESET}"
    protocol.add_argument(
        "--eval-preset",
        default=None,
        metavar="NAME",
        help=f"the paper whose protocol to follow: {', '.join(EVAL_PRESETS)} (default: {default})",
    )
    protocol.add_argument(
        "--with", dest="with_metrics", action="append", metavar="METRIC", help=f"add a metric ({metrics})"
    )
    protocol.add_argument("--skip", dest="skip_metrics", action="append", metavar="METRIC", help="leave a metric out")
    protocol.add_argument(
        "--eval-set",
        action="append",
        metavar="KEY=VALUE",
        help="change one protocol field, e.g. --eval-set face_missing=zero (see --list-presets)",
    )
    models = parser.add_argument_group("evaluation models")
    models.add_argument("--clip-model", metavar="ID|FOLDER", help="CLIP for CLIP-T/CLIP-T-C (and CLIP-I)")
    models.add_argument("--clip-i-model", metavar="ID|FOLDER", help="CLIP for CLIP-I when the protocol uses another")
    models.add_argument("--dino-model", metavar="ID|FOLDER", help="DINO for DINO-I")
    models.add_argument(
        "--face-models",
        metavar="FOLDER|URL",
        help="folder with the insightface pack, or the URL of its .zip (default ~/.insightface/models)",
    )
    models.add_argument("--qalign-model", metavar="ID|FOLDER", help="OneAlign for Q-Align (CUDA only)")
    vistory = "ViStoryBench: "
    models.add_argument("--csd-model", metavar="FILE|URL", help=vistory + "CSD weights (csd_vit-large.pth)")
    models.add_argument(
        "--aesthetic-model",
        metavar="FILE|URL",
        help=vistory + "Aesthetic Predictor V2.5 head (aesthetic_predictor_v2_5.pth)",
    )
    models.add_argument(
        "--siglip-model",
        metavar="ID|FOLDER",
        help=vistory + "SigLIP under that head (google/siglip-so400m-patch14-384)",
    )
    models.add_argument(
        "--inception-model",
        metavar="FILE|URL",
        help=vistory + "Inception-v3 weights (inception_v3_google-0cc3c7bd.pth)",
    )
    prefix = "" if standalone else "eval-"
    models.add_argument(
        f"--{prefix}device",
        dest="eval_device",
        default=None,
        metavar="DEVICE",
        help="where the evaluation models run: auto, cpu, cuda, cuda:N, mps"
        + (" (default: auto)" if standalone else " (default: --aux-device, else the generator's --device)"),
    )
    models.add_argument(
        f"--{prefix}dtype",
        dest="eval_dtype",
        choices=("fp32", "fp16", "bf16", "auto"),
        default="fp32",
        help="evaluation model dtype (default fp32: the same numbers on every machine)",
    )
    models.add_argument(
        "--eval-batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)"
    )
    add_judge_arguments(parser)
    output = parser.add_argument_group("evaluation output")
    output.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="storycast cache: features, identities (default: $STORYCAST_CACHE or ~/.cache/storycast)",
    )
    output.add_argument("--no-feature-cache", action="store_true", help="do not keep features on disk")
    output.add_argument("--no-pictures", action="store_true", help="no contact sheets or charts")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal)",
    )


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """``--judge-url``/``--judge-model``: the vision-language judge of ViStoryBench's prompt alignment."""
    from storycast.evaluation.vistory_judge import API_KEY_VARIABLES, DEFAULT_MODEL

    judge = parser.add_argument_group("prompt-alignment judge (ViStoryBench)")
    judge.add_argument(
        "--judge-url",
        metavar="URL",
        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://localhost:8000/v1; its key is "
        f"read from {' or '.join(API_KEY_VARIABLES)} (without a URL, prompt alignment is skipped)",
    )
    judge.add_argument("--judge-model", default=DEFAULT_MODEL, metavar="NAME", help=f"default {DEFAULT_MODEL}")


def judge_options_from_args(args: argparse.Namespace) -> JudgeOptions:
    """The judge the flags name; answers are cached under ``<cache>/judge`` unless --no-feature-cache."""
    from storycast.evaluation.vistory_judge import JudgeOptions
    from storycast.utils.environment import default_cache_dir

    cache = None if args.no_feature_cache else Path(args.cache_dir or default_cache_dir()) / "judge"
    options = JudgeOptions(url=args.judge_url, model=args.judge_model, cache_dir=str(cache) if cache else None)
    options.validate()
    return options


def evaluator_from_args(
    args: argparse.Namespace,
    *,
    tiny: bool,
    device: str,
    progress: ProgressCallback,
    default_preset: str | None = None,
) -> Evaluator:
    """The Evaluator the flags describe (``default_preset`` when --eval-preset is not given; else the default)."""
    from storycast.evaluation.evaluator import Evaluator, ExtractorOptions
    from storycast.evaluation.presets import DEFAULT_EVAL_PRESET, resolve_preset
    from storycast.utils.torch_utils import resolve_device

    preset = resolve_preset(
        args.eval_preset or default_preset or DEFAULT_EVAL_PRESET,
        tiny=tiny,
        gpu=resolve_device(args.eval_device or device).startswith("cuda"),
        add=args.with_metrics or (),
        remove=args.skip_metrics or (),
        overrides=parse_assignments(args.eval_set, "--eval-set"),
    )
    options = ExtractorOptions(
        tiny=tiny,
        clip_model=args.clip_model,
        clip_i_model=args.clip_i_model,
        dino_model=args.dino_model,
        face_models=args.face_models,
        qalign_model=args.qalign_model,
        csd_model=args.csd_model,
        aesthetic_model=args.aesthetic_model,
        siglip_model=args.siglip_model,
        inception_model=args.inception_model,
        judge=judge_options_from_args(args),
        device=args.eval_device or device,
        dtype=args.eval_dtype,
        batch_size=args.eval_batch_size,
        local_files_only=bool(getattr(args, "local_files_only", False)),
    )
    return Evaluator(
        preset,
        options,
        cache_dir=args.cache_dir,
        feature_cache=not args.no_feature_cache,
        pictures=not args.no_pictures,
        progress=progress,
    )


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="*", metavar="RUN_DIR", help="a run folder or a folder of runs")
    parser.add_argument(
        "--preset",
        choices=TINY_PRESETS,
        help="tiny random-weight extractors (offline; the protocol is kept, Q-Align is left out)",
    )
    parser.add_argument("--force", action="store_true", help="rescore runs whose scores.json is up to date")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="put evaluated folders side by side (their results.json)",
    )
    parser.add_argument(
        "-o", "--out", type=Path, help="with --compare: where the comparison goes (default: comparison)"
    )
    parser.add_argument("--list-presets", action="store_true", help="print the protocols and their fields")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the Hub")
    add_eval_arguments(parser, standalone=True)
    parser.set_defaults(handler=run)


def _print_presets() -> None:
    from storycast.evaluation.presets import EVAL_PRESETS

    for preset in EVAL_PRESETS.values():
        print(f"{preset.name}: {preset.description}")
        for key, value in preset.to_dict().items():
            if key not in ("name", "description", "sources", "caveats"):
                print(f"    {key} = {value!r}")
        for caveat in preset.caveats:
            print(f"    caveat: {caveat}")


def run(args: argparse.Namespace) -> int:
    import logging

    from storycast.cli.progress import ProgressBars
    from storycast.errors import SettingsError

    log = logging.getLogger("storycast")
    if args.list_presets:
        _print_presets()
        return 0
    if args.compare:
        from storycast.evaluation.evaluator import compare
        from storycast.evaluation.report import comparison_table

        if args.runs:
            raise SettingsError("give run folders or --compare, not both. Fix: evaluate first, then compare.")
        document, written = compare(args.compare, args.out or Path("comparison"), pictures=not args.no_pictures)
        print("\n".join(comparison_table(document)))
        log.info("comparison: %s", ", ".join(str(p) for p in written.values()))
        return 0
    if not args.runs:
        raise SettingsError("no run folder given. Fix: storycast evaluate RUN_DIR (or --compare DIR DIR ...).")
    if args.out:
        raise SettingsError("--out goes with --compare; scores are written into the run folders.")

    from storycast.evaluation.report import summary_table

    bars = ProgressBars(args.progress)
    try:
        evaluator = evaluator_from_args(
            args, tiny=args.preset is not None, device="auto", progress=bars, default_preset=_default_preset(args.runs)
        )
        for path in args.runs:
            result = evaluator.evaluate(path, force=args.force)
            bars.close()
            print("\n".join(summary_table(result.results)))
            done = f"{len(result.scored)} scored, {len(result.reused)} up to date"
            left = f", {len(result.skipped)} unfinished left out" if result.skipped else ""
            log.info("%s: %s%s -> %s", path, done, left, ", ".join(str(p) for p in result.paths.values()))
    finally:
        bars.close()
    return 0


def _default_preset(paths: list[Path]) -> str | None:
    """'vistorybench' when every run under ``paths`` was drawn from ViStoryBench stories (as `storycast benchmark`
    scores a ViStory folder by default, so `storycast evaluate` on its output keeps that protocol), else None."""
    from storycast.errors import RunFolderError
    from storycast.evaluation.runfolders import MANIFEST_NAME, find_runs, read_json

    formats = set()
    for path in paths:
        try:
            runs = find_runs(path)
        except RunFolderError:
            return None  # the evaluator says what is wrong with the folder
        for run, _ in runs:
            story = (read_json(run / MANIFEST_NAME) or {}).get("story") or {}
            formats.add(story.get("source_format"))
    return "vistorybench" if formats == {"vistory"} else None

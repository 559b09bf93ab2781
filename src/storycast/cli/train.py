"""``storycast train storynizor``: train Storynizor on a data set built by ``storycast data build``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "train a trained method (storynizor) on a data set of character sets"
EPILOG = """\
examples:
  storycast train storynizor --data data/mine --out ckpt/stage1 --preset sd15 --set stage=1 --max-steps 100000
  storycast train storynizor --data data/mine --out ckpt/stage2 --preset sd15 --set init=ckpt/stage1
  storycast train storynizor --data data/mine --out ckpt/stage2 --resume          # continue from the latest checkpoint
  storycast train storynizor --data data/tiny --out ckpt/tiny --preset tiny-sd15 --max-steps 20 --set resolution=64
  accelerate launch -m storycast train storynizor --data data/mine --out ckpt/s2 --preset sd15 --config train.yaml
  torchrun --nproc_per_node 8 -m storycast train storynizor --data data/mine --out ckpt/s2 --preset sd15

Settings come from --config FILE (YAML, flat or nested names) and then --set NAME=VALUE; `--list-settings` prints
each with its help and source. Draw with the result: storycast generate story.yaml --method storynizor --set weights=OUT"""


def add_parser(subparsers: Any, name: str) -> None:
    from storycast.cli.common import add_model_arguments

    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=("storynizor",), help="the method to train")
    parser.add_argument("--data", type=Path, help="a data set folder (storycast data build)")
    parser.add_argument("--out", "-o", type=Path, help="the run's folder: checkpoints and the export")
    parser.add_argument("--config", type=Path, help="a YAML file of training settings")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (the max_steps setting)")
    parser.add_argument(
        "--resume", nargs="?", const="latest", help="continue the run in --out: from the latest checkpoint, or PATH"
    )
    parser.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE", help="a training setting")
    parser.add_argument("--list-settings", action="store_true", help="print every training setting with its help")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def load_settings(config: Path | None, assignments: dict[str, Any], max_steps: int | None) -> Any:
    """Training settings: the config file's values, then ``--set``'s, then ``--max-steps``."""
    from storycast.errors import SettingsError
    from storycast.training.settings import StorynizorTrainSettings

    settings = StorynizorTrainSettings()
    if config is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(config).read_bytes()) or {}  # bytes: YAML reads UTF-8 and UTF-16 marks
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
            # ValueError: Python refuses to read an integer of more than 4300 digits.
            reason = type(err).__name__ if isinstance(err, (OSError, yaml.YAMLError)) else str(err).split(";")[0]
            raise SettingsError(
                f"--config {config} cannot be read ({reason}). Fix: a YAML mapping of settings."
            ) from None
        if not isinstance(data, dict):
            raise SettingsError(f"--config {config} must be a mapping of settings (name: value).")
        settings = settings.updated(data, where=str(config))
    settings = settings.updated(assignments, where="--set")
    if max_steps is not None:
        settings = settings.updated({"max_steps": max_steps}, where="--max-steps")
    return settings


def run(args: argparse.Namespace) -> int:
    from storycast.cli.common import model_spec_from_args, parse_assignments
    from storycast.errors import SettingsError

    if args.list_settings:
        from storycast.cli.methods import print_settings
        from storycast.training.settings import StorynizorTrainSettings

        print("training settings (--config FILE, --set NAME=VALUE):")
        print_settings(StorynizorTrainSettings)
        return 0
    if args.data is None or args.out is None:
        raise SettingsError("train needs --data DATA and --out OUT. Fix: storycast train storynizor --data D --out O")
    settings = load_settings(args.config, parse_assignments(args.settings), args.max_steps)
    import dataclasses

    from storycast.training.loop import train_storynizor

    spec = model_spec_from_args(args)
    if not (args.model or args.preset):
        spec = dataclasses.replace(spec, source="sd15")  # Storynizor's base model
    result = train_storynizor(args.data, args.out, settings, spec, resume=args.resume, progress=not args.no_progress)
    last = result.losses[-1]["loss"] if result.losses else float("nan")
    print(f"trained {result.steps} step(s), last loss {last:.4f} -> {result.out}")
    print(f"draw with it: storycast generate STORY --method storynizor --set weights={result.out}")
    return 0

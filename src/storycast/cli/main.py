"""``storycast``: generate, validate, convert and inspect stories from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from storycast.cli import (
    app,
    benchmark,
    convert,
    data,
    download,
    env,
    evaluate,
    export,
    generate,
    identities,
    methods,
    train,
    validate,
)
from storycast.version import __version__

COMMANDS = {
    "generate": generate,
    "validate": validate,
    "convert": convert,
    "methods": methods,
    "env": env,
    "evaluate": evaluate,
    "export": export,
    "benchmark": benchmark,
    "download": download,
    "identities": identities,
    "data": data,
    "train": train,
    "app": app,
}

DESCRIPTION = """\
Turn a written story into illustrations whose characters stay the same from frame to frame.

Quick start (offline, tiny random models, seconds on a CPU):
  storycast generate examples/lighthouse.yaml --preset tiny --out runs/demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storycast", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"storycast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="show only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(subparsers, name)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but an unknown option is reported by the (sub)command it was given to, with that
    command's usage and the closest of its options (argparse reports it at the top level, with the top-level usage)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = _chosen_parser(parser, args)
        unknown = next((extra for extra in extras if extra.startswith("-")), extras[0])
        message = f"unrecognized arguments: {' '.join(extras)}"
        if unknown.startswith("-"):
            import difflib

            options = [option for option in command._option_string_actions if option.startswith("--")]
            close = difflib.get_close_matches(unknown.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
        command.error(message)
    return args


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``args`` went through."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            return parser
        chosen = getattr(args, actions[0].dest, None) if actions[0].dest != argparse.SUPPRESS else None
        if chosen is None or chosen not in actions[0].choices:
            return parser
        parser = actions[0].choices[chosen]


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("storycast")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if not verbose:
        # diffusers/transformers chatter (deprecations, hub retries) is noise for a CLI user. Their loggers read
        # these variables when they are first configured, so nothing of theirs is imported here (light commands
        # such as `validate` never import them at all).
        # torchao (the quant extra), when installed, reports native kernels it cannot load on this machine and
        # torch's pytree deprecations of its enums at import: it runs without them, so that is noise too.
        for name in ("diffusers", "transformers", "huggingface_hub", "torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    from storycast.errors import StorycastError

    try:
        # Inside the handler: an interrupt while the command starts is as clean as one while it works.
        parser = build_parser()
        args = parse_arguments(parser, argv)
        _configure_logging(args.verbose, args.quiet)
        return int(args.handler(args) or 0)
    except StorycastError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

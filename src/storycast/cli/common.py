"""Flags shared by several subcommands, and their translation into library objects."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from storycast.errors import SettingsError
from storycast.models.presets import BASE_PRESETS, FAMILIES
from storycast.models.spec import OFFLOAD_MODES, QUANTIZE_MODES, LoraSpec, ModelSpec
from storycast.utils.torch_utils import DTYPE_NAMES

if TYPE_CHECKING:
    from storycast.cli.progress import ProgressBars


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        choices=sorted(BASE_PRESETS),
        help="a named base model: sdxl, sd15, flux-dev, flux-schnell, or tiny / tiny-sd15 / tiny-flux (random "
        "weights, offline). Default: sdxl",
    )
    source.add_argument(
        "--model", metavar="ID|FOLDER|FILE", help="a Hub id, a diffusers folder or a single .safetensors file"
    )
    group.add_argument("--family", choices=FAMILIES, help="architecture of --model when it cannot be detected")
    group.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model/--preset")
    group.add_argument("--variant", help="weight variant to load, e.g. fp16")
    group.add_argument("--model-config", metavar="ID|FOLDER", help="diffusers configs for a single-file --model")
    group.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="weights dtype (auto: on CUDA fp16, bf16 for FLUX; else fp32)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    group.add_argument(
        "--aux-device",
        metavar="DEVICE",
        help="where GroundingDINO, SAM, PhotoMaker's vision tower and a benchmark's metric extractors run, e.g. "
        "cuda:1 or cpu (default: --device)",
    )
    group.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="CPU offload for small GPUs (CUDA only): model (each model on the GPU while it runs; T5 leaves it once "
        "prompts are encoded), sequential (layer by layer: least memory, slowest), group (the "
        "denoiser's blocks one at a time, the next one copied on a CUDA stream while the current one runs: near "
        "sequential's memory, less of its slowdown)",
    )
    group.add_argument(
        "--text-encoder-device",
        metavar="cpu|DEVICE",
        help="FLUX: run the text encoders (CLIP-L, T5-XXL: 9.5 GB in bf16) there, e.g. cpu, the denoiser on "
        "--device; same pixels on one device. Not with --offload model or sequential",
    )
    group.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="the denoiser's weights in fewer bits (torchao: pip install 'storycast[quant]'): int8 (half of bf16's "
        "memory; CPU and CUDA), fp8 (CUDA compute capability >= 8.9, or CPU), int4 (a quarter; CUDA, --dtype bf16). "
        "Pixels change a little: a quantized model draws other frames",
    )
    group.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    group.add_argument("--vae-slicing", action="store_true", help="decode one image of a batch at a time")
    group.add_argument("--local-files-only", action="store_true", help="never contact the Hub")
    group.add_argument(
        "--channels-last", action="store_true", help="UNet in channels-last layout (speed; same output; not FLUX)"
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="compile the denoiser's repeated blocks (the UNet's transformer blocks, FLUX's double- and "
        "single-stream blocks; speed; same output; the first frame, and a method's first processors, slower)",
    )
    group.add_argument(
        "--cache",
        metavar="none|KIND[:VALUE]",
        default="none",
        help="FLUX: a lossy step cache (diffusers' hooks) that skips work of some steps, reset for every draw: "
        "first-block[:THRESHOLD] (0.05), pab[:SKIP] (2), faster[:SKIP] (2), taylorseer[:INTERVAL] (5), "
        "mag[:THRESHOLD] (0.06). Pixels change, so it names the run; vanilla and storydiffusion take it "
        "(storydiffusion's identity frames draw uncached)",
    )
    group.add_argument(
        "--lora",
        action="append",
        metavar="SOURCE[@SCALE]",
        help="a LoRA (Hub id, folder or .safetensors) active in every pass, e.g. a style: style.safetensors@0.8",
    )


def model_spec_from_args(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(
        source=args.model or args.preset or "sdxl",
        family=args.family,
        revision=args.revision,
        variant=args.variant,
        config=args.model_config,
        dtype=args.dtype,
        device=args.device,
        aux_device=getattr(args, "aux_device", None),
        offload=args.offload,
        text_encoder_device=getattr(args, "text_encoder_device", None),
        quantize=getattr(args, "quantize", "none"),
        vae_tiling=args.vae_tiling,
        vae_slicing=args.vae_slicing,
        local_files_only=args.local_files_only,
        loras=tuple(LoraSpec.parse(text) for text in args.lora or ()),
        channels_last=getattr(args, "channels_last", False),
        compile=getattr(args, "compile", False),
        cache=getattr(args, "cache", "none"),
    )


def parse_assignments(items: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (values converted later by the settings class)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{flag} {item!r}: expected KEY=VALUE. Fix: e.g. {flag} sweet_spot_step=10")
        values[key.strip()] = value.strip()
    return values


def add_method_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        metavar="KEY=VALUE",
        help="a method setting, e.g. --set sweet_spot_step=10 (repeatable)",
    )


def add_language_argument(parser: argparse.ArgumentParser) -> None:
    """``--lang``: the language ViStoryBench stories (``story.json``) are read in."""
    parser.add_argument(
        "--lang",
        choices=("en", "ch"),
        default="en",
        help="language ViStoryBench stories (story.json) are read in: en (default) or ch; other files as written",
    )


def add_generation_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """Generation settings that override the story files (``generation_from_args`` reads them back)."""
    gen = parser.add_argument_group(title)
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument(
        "--guidance-scale",
        type=float,
        help="classifier-free guidance (SD); the guidance value FLUX.1-dev takes as input; 0 for FLUX.1-schnell",
    )
    gen.add_argument(
        "--true-cfg-scale",
        type=float,
        help="FLUX only: classifier-free guidance over the negative prompt on top of the embedded guidance (> 1)",
    )
    gen.add_argument("--seed", type=int, help="base seed: frame i uses seed+i unless it sets its own")
    gen.add_argument(
        "--seed-policy",
        choices=("per-frame", "same"),
        help="per-frame: frame i from seed+i (default); same: every frame from seed (the IdentityStory authors')",
    )
    gen.add_argument("--negative-prompt")
    gen.add_argument("--batch-size", type=int, help="frames drawn together by per-frame methods")


def generation_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "width", "height", "steps", "guidance_scale", "seed", "negative_prompt", "batch_size", "seed_policy",
        "true_cfg_scale",
    )  # fmt: skip
    return {key: getattr(args, key) for key in keys}


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def long_work(show_progress: bool | None) -> Iterator[ProgressBars]:
    """Progress bars for a long command, and SIGTERM turned into Ctrl-C inside it: a killed run records
    its stop in the manifest like an interrupted one, and the same command resumes it."""
    from storycast.cli.progress import ProgressBars

    previous_handler = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    bars = ProgressBars(show_progress)
    try:
        yield bars
    finally:
        bars.close()
        signal.signal(signal.SIGTERM, previous_handler)

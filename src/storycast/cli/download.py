"""``storycast download``: fetch the ConsiStory-Human and ViStoryBench benchmarks, and model weights for later
offline runs."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from storycast.evaluation import bench_data, vistory_data

HELP = "fetch a benchmark (ConsiStory-Human, ViStoryBench; checked) or model weights, for offline runs"
BENCHMARKS = (bench_data.NAME, vistory_data.NAME)
EPILOG = f"""\
examples:
  storycast download consistory-human                  # into the storycast cache, where `storycast benchmark` looks
  storycast download consistory-human --from IdentityStory/bench     # a local copy, checked the same way
  storycast download consistory-human --split single --to data/bench # then: storycast benchmark single --bench-root data/bench
  storycast download vistorybench                      # ViStoryBench's 80 stories from the Hub: storycast benchmark vistorybench
  storycast download vistorybench --from data/dataset  # a local copy (the Hub's layout, or a folder of numbered stories)
  storycast download sdxl photomaker clip dino         # into the Hugging Face cache ($HF_HOME), for offline runs
  storycast download flux-dev flux-schnell             # FLUX.1's diffusers folders (FLUX.1-dev is gated: accept
                                                       # its licence on its Hub page, then `hf auth login`)
  storycast download --list

{bench_data.NAME} is the bench/ folder of {bench_data.REPO} at commit {bench_data.COMMIT}, stored as single/,
multi-2/ and multi-3/. Every file is checked against the SHA-256 stored in storycast before it is written; files
already in place are kept, so the same command resumes an interrupted download.

{vistory_data.NAME} is the dataset {vistory_data.REPO_ID} on the Hugging Face Hub, stored as its numbered story folders.
storycast holds no checksums for it yet: the first install pins the commit it fetched, checks that every story reads
and every image decodes, and records each file's SHA-256 in {vistory_data.RECORD}; later runs check against that
record. --record-checksums prints the table to store in storycast (see docs/evaluation.md)."""

HUB_ERROR_MODULES = ("huggingface_hub", "requests", "httpx", "urllib3")
REFUSED_STATUS = (401, 403)
"""HTTP statuses of a download the Hub refuses: no login, or a gated repository whose licence was not accepted."""


@dataclass(frozen=True)
class HubItem:
    """One thing fetched from the Hugging Face Hub.

    Attributes:
        kind: 'pipeline' (the files a diffusers pipeline loads), 'model' (a transformers checkpoint folder) or
            'file' (one file).
        repo_id: Hub repository.
        path: The file ('file'), or the folder inside the repository ('model'; None for its top level).
    """

    kind: Literal["pipeline", "model", "file"]
    repo_id: str
    path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.repo_id}:{self.path}" if self.path else self.repo_id


@dataclass(frozen=True)
class ModelDownload:
    """Weights known by a short name (``storycast download NAME``)."""

    name: str
    description: str
    items: tuple[HubItem, ...]


def model_downloads() -> dict[str, ModelDownload]:
    """The model names ``storycast download`` knows, built from the presets the rest of storycast loads."""
    from storycast.adapters.ip_adapter import IP_ADAPTER_REPO
    from storycast.evaluation.presets import EVAL_PRESETS
    from storycast.models.presets import ADAPTERS, BASE_PRESETS, PLUS_FACE_WEIGHTS

    def pipeline(name: str) -> ModelDownload:
        preset = BASE_PRESETS[name]
        assert preset.repo_id is not None
        return ModelDownload(name, preset.description, (HubItem("pipeline", preset.repo_id),))

    def adapter(name: str) -> ModelDownload:
        ref = ADAPTERS[name]
        item = (
            HubItem("file", ref.repo_id, ref.filename)
            if ref.filename
            else HubItem("model", ref.repo_id, ref.subfolder)
        )
        return ModelDownload(name, ref.description, (item,))

    from storycast.adapters.pulid_flux import EVA_CLIP_FILE, EVA_CLIP_REPO, PULID_FLUX_FILE, PULID_REPO

    clip = dict.fromkeys(m for p in EVAL_PRESETS.values() for m in (p.clip_model, p.clip_i_model) if m)
    vistory = EVAL_PRESETS["vistorybench"]
    # Its files in ViStoryBench/VistoryBench_pretrain are named '<owner>/<repo>/<path in the repo>'.
    vistory_files = tuple(
        HubItem("file", "/".join(ref.split("/", 2)[:2]), ref.split("/", 2)[2])
        for ref in (vistory.adaface_model, vistory.facenet_model, vistory.csd_model, vistory.aesthetic_model)
    )
    dino = dict.fromkeys(p.dino_model for p in EVAL_PRESETS.values())
    entries = (
        pipeline("sdxl"),
        pipeline("sd15"),
        pipeline("flux-dev"),
        pipeline("flux-schnell"),
        adapter("photomaker"),
        adapter("photomaker-v2"),
        adapter("grounding-dino"),
        adapter("sam"),
        ModelDownload(
            "clip",
            "CLIP of the evaluation presets (CLIP-T, CLIP-T-C, CLIP-I)",
            tuple(HubItem("model", m) for m in clip),
        ),
        ModelDownload("dino", "DINO of the evaluation presets (DINO-I)", tuple(HubItem("model", m) for m in dino)),
        ModelDownload(
            "ip-adapter-plus-face",
            "IP-Adapter-Plus-Face for SD 1.5 and SDXL (Storynizor's ID-Injector before training)",
            tuple(HubItem("file", *ref.split(":", 1)) for ref in PLUS_FACE_WEIGHTS.values()),
        ),
        adapter("clip-vit-h"),
        ModelDownload(
            "ip-adapter-sdxl",
            "IP-Adapter for SDXL and its ViT-bigG image encoder (Story-Adapter)",
            (
                HubItem("file", IP_ADAPTER_REPO, "sdxl_models/ip-adapter_sdxl.safetensors"),
                HubItem("model", IP_ADAPTER_REPO, "sdxl_models/image_encoder"),
            ),
        ),
        ModelDownload(
            "pulid-flux",
            "PuLID-FLUX v0.9.1 and its EVA02-CLIP-L-14-336 tower (pulid, identitystory on FLUX; the antelopev2 face "
            "pack is a zip from insightface's release: --set face_models=)",
            (HubItem("file", PULID_REPO, PULID_FLUX_FILE), HubItem("file", EVA_CLIP_REPO, EVA_CLIP_FILE)),
        ),
        ModelDownload(
            "vistorybench-metrics",
            "ViStoryBench's scorer models: GroundingDINO-T, AdaFace, FaceNet, CSD, Aesthetic Predictor v2.5 and its "
            "SigLIP (Inception-v3 is fetched from its URL on first use)",
            (
                HubItem("model", vistory.detector_model),
                *vistory_files,
                HubItem("model", vistory.siglip_model),
            ),
        ),
        ModelDownload(
            "realvisxl",
            "RealVisXL V4.0, Story-Adapter's (and PhotoMaker v2's demo) base model: --model SG161222/RealVisXL_V4.0",
            (HubItem("pipeline", "SG161222/RealVisXL_V4.0"),),
        ),
    )
    return {entry.name: entry for entry in entries}


MODEL_FILE_SUFFIXES = (".json", ".txt", ".model")
"""Configs, tokenizer and processor files of a transformers checkpoint."""


def model_files(files: list[str], folder: str | None = None) -> list[str]:
    """The files ``from_pretrained`` reads from ``folder`` of a repository listing: configs, tokenizer and processor
    files, and the weights in one format, safetensors when the folder has them, else PyTorch ``.bin`` (the order in
    which transformers looks). Other formats (TensorFlow, Flax, ONNX) and other folders are left out."""
    prefix = f"{folder.strip('/')}/" if folder else ""
    here = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
    weights = [f for f in here if f.endswith(".safetensors")] or [f for f in here if f.endswith(".bin")]
    return sorted({*weights, *(f for f in here if f.endswith(MODEL_FILE_SUFFIXES))})


def fetch_item(item: HubItem, *, variant: str | None = None) -> Path:
    """Download ``item`` into the Hugging Face cache (or find it there) and return its local path.

    Raises:
        MissingWeightsError: The Hub cannot be reached, refuses the download (a gated repository: the message says
            to accept its licence and log in), or the repository has nothing to fetch.
    """
    from storycast.errors import MissingWeightsError

    try:
        if item.kind == "pipeline":
            from diffusers import DiffusionPipeline

            return Path(DiffusionPipeline.download(item.repo_id, variant=variant))
        if item.kind == "file":
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(item.repo_id, str(item.path)))
        from huggingface_hub import HfApi, snapshot_download

        wanted = model_files(HfApi().list_repo_files(item.repo_id), item.path)
        if not wanted:
            raise MissingWeightsError(
                f"Hub repository '{item.label}' has no config or weights files to fetch. Fix: check the repo id."
            )
        folder = Path(snapshot_download(item.repo_id, allow_patterns=wanted))
        return folder / item.path if item.path else folder
    except MissingWeightsError:
        raise
    except Exception as err:
        if not isinstance(err, (OSError, ValueError)) and not type(err).__module__.startswith(HUB_ERROR_MODULES):
            raise
        import os

        from storycast.models.checkpoints import first_line

        if refused_by_hub(err):
            raise MissingWeightsError(
                f"the Hugging Face Hub refused to give '{item.label}' ({first_line(err)}): the repository is gated. "
                f"Fix: accept its licence on https://huggingface.co/{item.repo_id} (signed in to the Hub), log in "
                f"here with `hf auth login` (or set HF_TOKEN to an access token of that account), and run the same "
                f"command again."
            ) from None
        offline = " unset HF_HUB_OFFLINE and" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise MissingWeightsError(
            f"could not download '{item.label}' from the Hugging Face Hub ({first_line(err)}). Fix:{offline} run the "
            f"same command where huggingface.co is reachable (or set HF_ENDPOINT to a mirror), or copy a Hugging Face "
            f"cache that holds it here and point HF_HOME at it."
        ) from None


def refused_by_hub(err: BaseException) -> bool:
    """Whether the Hub refused the download (a ``GatedRepoError``, or HTTP 401/403) anywhere in the chain of
    ``err``'s causes: diffusers raises its own error from the Hub's when it cannot read a repository's listing."""
    from huggingface_hub.errors import GatedRepoError

    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, GatedRepoError) or status in REFUSED_STATUS:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"{bench_data.NAME}, {vistory_data.NAME} or a model (see --list)"
    )
    parser.add_argument("--list", action="store_true", help="list what can be downloaded")
    bench = parser.add_argument_group(" and ".join(BENCHMARKS))
    bench.add_argument(
        "--to",
        type=Path,
        metavar="DIR",
        help="benchmark folder to fill (default: <storycast cache>/bench/ConsiStory-Human or .../ViStoryBench)",
    )
    bench.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="PATH",
        help="take the files from a local copy (offline): our layout (single/, ...) or the authors' bench/; for "
        "vistorybench the dataset as downloaded (holding ViStoryBench/) or a folder of numbered stories",
    )
    bench.add_argument(
        "--split", dest="splits", action="append", choices=bench_data.SPLITS, help="only this split (repeatable)"
    )
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over the files (default: on a terminal)",
    )
    vistory = parser.add_argument_group(vistory_data.NAME)
    vistory.add_argument(
        "--revision",
        help="dataset revision to fetch (default: the one an earlier install recorded, else main)",
    )
    vistory.add_argument(
        "--record-checksums",
        action="store_true",
        help="after the install, print the pinned revision and every file's SHA-256 as the Python table to store in "
        "storycast (for maintainers)",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--variant", help="weight variant of sdxl / sd15, e.g. fp16 (what fp16 runs load)")
    parser.set_defaults(handler=run)


def _check_names(names: list[str], known: list[str]) -> None:
    from storycast.errors import SettingsError

    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SettingsError(f"nothing called '{name}' to download. Fix: {hint}known names: {', '.join(known)}.")


def run(args: argparse.Namespace) -> int:
    from storycast.errors import SettingsError

    models = model_downloads()
    if args.list:
        _print_list(models)
        return 0
    if not args.names:
        raise SettingsError("name what to download. Fix: `storycast download --list` shows the names.")
    names = list(dict.fromkeys(args.names))
    _check_names(names, [*BENCHMARKS, *models])
    _check_bench_flags(args, names)
    if args.variant and not {"sdxl", "sd15"} & set(names):
        raise SettingsError("--variant applies to sdxl and sd15 only. Fix: name one of them, or drop it.")
    for name in names:
        if name == bench_data.NAME:
            _download_benchmark(args)
        elif name == vistory_data.NAME:
            _download_vistory(args)
        else:
            for item in models[name].items:
                path = fetch_item(item, variant=args.variant if item.kind == "pipeline" else None)
                print(f"{name}: {item.label} -> {path}")
    return 0


def _check_bench_flags(args: argparse.Namespace, names: list[str]) -> None:
    """Each benchmark flag only with the benchmark(s) it applies to."""
    from storycast.errors import SettingsError

    asked = [name for name in names if name in BENCHMARKS]
    for flags, owners in (
        ((("--to", args.to), ("--from", args.source)), BENCHMARKS),
        ((("--split", args.splits),), (bench_data.NAME,)),
        ((("--revision", args.revision), ("--record-checksums", args.record_checksums)), (vistory_data.NAME,)),
    ):
        given = [flag for flag, value in flags if value]
        if given and not set(owners) & set(asked):
            raise SettingsError(
                f"{', '.join(given)} apply to {' and '.join(owners)} only. Fix: name {'one' if len(owners) > 1 else 'it'}"
                ", or drop them."
            )
    if len(asked) > 1 and (args.to or args.source):
        raise SettingsError(
            f"--to and --from name one benchmark's folder, and {' and '.join(asked)} were both named. Fix: download "
            "them with one command each."
        )


def _install(args: argparse.Namespace, default: Path, install: Callable[..., Any], **options: Any) -> tuple[Path, Any]:
    """(target, result) of a benchmark's ``install`` into ``--to`` (else ``default``), with progress bars."""
    from storycast.cli.common import long_work

    target = args.to if args.to is not None else default
    with long_work(args.progress) as bars:
        return target, install(target, source=args.source, progress=bars, **options)


def _download_vistory(args: argparse.Namespace) -> None:
    import sys

    default = vistory_data.default_target()
    target, result = _install(args, default, vistory_data.install, revision=args.revision)
    origin = f"'{args.source}'" if args.source is not None else f"{vistory_data.REPO_ID}@{(result.revision or '')[:7]}"
    checked = len(result.written) + len(result.kept)
    against = (
        "match their stored SHA-256"
        if result.checked == "table"
        else f"read and decode; their SHA-256 are recorded in {vistory_data.RECORD} (storycast stores no table yet)"
    )
    # With --record-checksums the table goes to stdout alone, ready to paste; the summary to stderr.
    out = sys.stderr if args.record_checksums else sys.stdout
    print(
        f"{vistory_data.BENCH_NAME}: {checked} files {against} ({len(result.written)} written from {origin}, "
        f"{len(result.kept)} already there) -> {result.target}",
        file=out,
    )
    if Path(target).expanduser().resolve() != default.resolve():
        print(f"`storycast benchmark {target}` runs it.", file=out)
    if args.record_checksums:
        record = vistory_data.read_record(result.target)
        if not record.get("revision"):
            print(
                "The files came from a local copy, so the table names no revision: record it from a Hub download "
                "(without --from) to pin the commit it belongs to.",
                file=sys.stderr,
            )
        print(vistory_data.table_source(record.get("revision"), record.get("files") or {}), end="")


def _download_benchmark(args: argparse.Namespace) -> None:
    default = bench_data.default_target()
    target, result = _install(args, default, bench_data.install, splits=args.splits)
    origin = f"'{args.source}'" if args.source is not None else f"{bench_data.REPO}@{bench_data.COMMIT[:7]}"
    checked = len(result.written) + len(result.kept)
    print(
        f"{bench_data.BENCH_NAME}: {checked} files match their SHA-256 ({len(result.written)} written from {origin}, "
        f"{len(result.kept)} already there) -> {result.target}"
    )
    if Path(target).expanduser().resolve() != default.resolve():
        print(f"`storycast benchmark` finds it with --bench-root {target} (or STORYCAST_BENCH={target}).")


def _print_list(models: dict[str, ModelDownload]) -> None:
    counts = {split: 0 for split in bench_data.SPLITS}
    for path in bench_data.CHECKSUMS:
        counts[path.partition("/")[0]] += 1
    splits = ", ".join(f"{split} ({count})" for split, count in counts.items())
    width = max(len(name) for name in [*BENCHMARKS, *models]) + 2
    print(f"benchmarks (into {bench_data.default_target().parent}):")
    print(f"  {bench_data.NAME:<{width}}{bench_data.BENCH_NAME} stories: {splits}")
    print(f"  {'':<{width}}{bench_data.REPO}@{bench_data.COMMIT[:7]}, checked against stored SHA-256")
    from storycast.story.vistory import LITE_STORIES

    pinned = (
        f"@{vistory_data.REVISION[:7]}, checked against stored SHA-256"
        if vistory_data.REVISION and vistory_data.CHECKSUMS
        else " (dataset), pinned and recorded at first install (no stored SHA-256 yet)"
    )
    print(
        f"  {vistory_data.NAME:<{width}}{vistory_data.BENCH_NAME} stories: full ({len(vistory_data.STORIES)}), lite ({len(LITE_STORIES)})"
    )
    print(f"  {'':<{width}}{vistory_data.REPO_ID}{pinned}")
    print("models (into the Hugging Face cache, for offline runs):")
    for entry in models.values():
        print(f"  {entry.name:<{width}}{entry.description}")
        print(f"  {'':<{width}}{', '.join(item.label for item in entry.items)}")

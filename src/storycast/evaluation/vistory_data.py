"""ViStoryBench's stories, fetched from the Hugging Face Hub at one revision, checked, and stored where
``storycast benchmark vistorybench`` finds them.

Layout. The dataset repository ``ViStoryBench/ViStoryBench`` (MIT) holds the stories in its folder
``ViStoryBench/``: one numbered folder per story, ``NN/story.json`` and ``NN/image/<character>/`` (the authors'
``download_dataset.sh`` fetches the repository with ``snapshot_download(repo_type="dataset")`` and renames that
folder ``ViStory``; README "Dataset Downloading", vistorybench commit 514cc31). We store the numbered folders
themselves in ``<storycast cache>/bench/ViStoryBench`` (a ViStory folder: the suite ``storycast benchmark`` reads)
and leave the repository's other files (its card, ``.gitattributes``) out.

Checks. ``REVISION`` and ``CHECKSUMS`` are where the pinned commit and the SHA-256 of every file belong. Both are
empty: this module was written where the Hub could not be reached, and no digest storycast did not compute itself
is written here. Until a maintainer fills them (``storycast download vistorybench --record-checksums`` prints
both, ready to paste), an install pins itself: it resolves the revision once (``main`` unless ``revision`` is
given) to a commit, fetches every file at that commit, checks what can be checked without a table (every story
reads as the benchmark's loader reads it, every image decodes) and records the commit and each file's SHA-256 in
``RECORD`` inside the folder; later runs fetch the same commit and check the files against that record. With a
table, every file is checked against it before it is written, and a mismatch is refused.

Resume. A file already in place with the expected SHA-256 (the table's, else the record's, or the local copy's
own) is kept; every file is written atomically; nothing is deleted, and files that are not the dataset's are never
touched (a dataset file that does not match is replaced).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from storycast.errors import SettingsError, StoryError
from storycast.evaluation import bench_data
from storycast.evaluation.bench_data import BenchDataError, check_target, inside_target
from storycast.methods.base import ProgressCallback, ProgressEvent, no_progress
from storycast.utils.io import atomic_write_json, atomic_writer, sha256_file

logger = logging.getLogger(__name__)
T = TypeVar("T")

NAME = "vistorybench"
"""The name of the download (``storycast download vistorybench``) and of the suite (``storycast benchmark``)."""
BENCH_NAME = "ViStoryBench"
REPO_ID = "ViStoryBench/ViStoryBench"
REPO_TYPE = "dataset"
HUB_FOLDER = "ViStoryBench"
"""The stories' folder in the dataset repository."""
LOCAL_FOLDERS = (HUB_FOLDER, "ViStory")
"""Where a local copy may hold the numbered stories: the repository's folder, or as download_dataset.sh renames it."""
STORIES = tuple(f"{number:02d}" for number in range(1, 81))
"""The benchmark's 80 stories (README: "80 stories and 344 characters"), named as its folder tree shows them."""
REVISION: str | None = None
"""The dataset commit storycast pins. None: not recorded yet (see the module's docstring)."""
CHECKSUMS: dict[str, str] = {}
"""Path in our layout ('01/story.json', '01/image/<character>/00.jpg') -> SHA-256 at ``REVISION``. Empty: not
recorded yet."""
RECORD = ".storycast-download.json"
"""What an install fetched, kept in the benchmark folder: the commit, every file's SHA-256, whether it finished."""
RECORD_EVERY = 25
"""Files written between two saves of the record (it is saved at the end and on an interruption too)."""
HUB_ERROR_MODULES = ("huggingface_hub", "requests", "httpx", "urllib3")
COMMIT = re.compile(r"[0-9a-f]{40}")
SHOWN = 12
"""Names listed in an error message before '... and N more'."""


@dataclass
class InstallResult(bench_data.InstallResult):
    """What :func:`install` did (``target``, ``written``, ``kept`` as for ConsiStory-Human).

    Attributes:
        revision: The dataset commit the files come from (None for a local copy).
        checked: 'table' (against ``CHECKSUMS``) or 'record' (no table yet: read, decoded, and recorded).
    """

    revision: str | None = None
    checked: str = "table"


def default_target(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/bench/ViStoryBench``, beside the ConsiStory-Human folder."""
    return bench_data.default_target(cache_dir).parent / BENCH_NAME


def story_of(path: str) -> str | None:
    """The story a file of our layout belongs to ('01/image/Mara/00.png' -> '01'); None for anything else (a file
    outside a numbered folder, or a hidden one)."""
    head, _, rest = path.partition("/")
    if not (head.isdigit() and rest) or any(part.startswith(".") for part in path.split("/")):
        return None
    return head


def hub_path(path: str) -> str:
    """The repository's path of one of our files: '01/story.json' -> 'ViStoryBench/01/story.json'."""
    return f"{HUB_FOLDER}/{path}"


def from_hub_path(path: str) -> str | None:
    """Our path of a repository file, None when it is not a story file."""
    prefix = f"{HUB_FOLDER}/"
    ours = path[len(prefix) :]
    return ours if path.startswith(prefix) and story_of(ours) else None


def checksum_table(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every story file of a ViStory folder: how ``CHECKSUMS`` is made, and how tests make their own."""
    folder = Path(folder)
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {path: sha256_file(folder / path) for path in sorted(files) if story_of(path)}


def table_source(revision: str | None, table: Mapping[str, str]) -> str:
    """``REVISION`` and ``CHECKSUMS`` as Python, to paste into this module."""
    rows = "".join(f'    "{path}": "{digest}",\n' for path, digest in sorted(table.items()))
    return f"REVISION: str | None = {revision!r}\nCHECKSUMS: dict[str, str] = {{\n{rows}}}\n"


def stories_root(source: Path) -> Path:
    """The folder of a local copy that holds the numbered stories: the copy itself, or its ``ViStoryBench/`` (the
    repository's layout) or ``ViStory/`` folder.

    Raises:
        SettingsError: None of them holds a numbered folder with a story.json.
    """
    for folder in (source, *(source / name for name in LOCAL_FOLDERS)):
        if folder.is_dir() and any(p.name.isdigit() and (p / "story.json").is_file() for p in folder.iterdir()):
            return folder
    what = "is not a folder" if not source.is_dir() else "holds no ViStoryBench stories"
    raise SettingsError(
        f"--from '{source}' {what} (numbered folders holding story.json, in it or in its {HUB_FOLDER}/ folder). "
        f"Fix: pass the dataset {REPO_ID} as downloaded (its folder, holding {HUB_FOLDER}/) or its folder of "
        f"numbered stories."
    )


def read_record(folder: str | Path) -> dict[str, Any]:
    """The install record of a benchmark folder ({} when there is none or it cannot be read)."""
    path = Path(folder) / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("%s cannot be read (%s); its files are checked again", path, err)
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {}


def stories_ready(folder: str | Path, first: int | None = None) -> tuple[int, int]:
    """(files present, files expected) of the first ``first`` stories (all when None) of an install, from its
    record: equal when they are all there. (0, 0) for a folder without a record (not ours to judge)."""
    folder = Path(folder)
    record = read_record(folder)
    if not record:
        return 0, 0
    expected = [p for p in record.get("expected") or [] if isinstance(p, str) and story_of(p)]
    if first is not None:
        kept = set(sorted({story_of(p) for p in expected}, key=int)[:first])
        expected = [p for p in expected if story_of(p) in kept]
    present = sum(p in record["files"] and (folder / p).is_file() for p in expected)
    return present, len(expected)


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _hub(what: str, call: Callable[[], T]) -> T:
    """``call()``, a failure of the Hub or the network turned into one clean message."""
    try:
        return call()
    except Exception as err:
        if not isinstance(err, (OSError, ValueError)) and not type(err).__module__.startswith(HUB_ERROR_MODULES):
            raise
        from storycast.models.checkpoints import first_line

        raise BenchDataError(
            f"could not {what} ({first_line(err)}). Fix: run the same command again where huggingface.co is "
            f"reachable (files already fetched are kept; HF_ENDPOINT may name a mirror), or copy the dataset "
            f"{REPO_ID} here and pass --from FOLDER."
        ) from None


def resolve_revision(revision: str) -> str:
    """The commit of ``revision`` (a branch, tag or commit) of the dataset repository."""
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi

    info = _hub(
        f"look up revision '{revision}' of {REPO_ID}", lambda: HfApi().dataset_info(REPO_ID, revision=revision)
    )
    if not isinstance(info.sha, str) or not COMMIT.fullmatch(info.sha):
        raise BenchDataError(f"the Hub gave no commit for revision '{revision}' of {REPO_ID}. Fix: pass --revision.")
    return info.sha


def hub_files(commit: str) -> list[str]:
    """The story files of the dataset at ``commit``, in our layout."""
    from huggingface_hub import HfApi

    listing = _hub(
        f"list the files of {REPO_ID}@{commit[:7]}",
        lambda: HfApi().list_repo_files(REPO_ID, repo_type=REPO_TYPE, revision=commit),
    )
    return sorted(p for p in (from_hub_path(f) for f in listing) if p)


def hub_download(path: str, commit: str) -> Path:
    """One of our files, fetched at ``commit`` into the Hugging Face cache (or found there)."""
    from huggingface_hub import hf_hub_download

    return Path(
        _hub(
            f"download '{hub_path(path)}' from {REPO_ID}@{commit[:7]}",
            lambda: hf_hub_download(REPO_ID, hub_path(path), repo_type=REPO_TYPE, revision=commit),
        )
    )


def image_problem(path: Path) -> str | None:
    """Why a reference image cannot be used (it does not decode), or None."""
    from PIL import Image

    from storycast.story.vistory import IMAGE_SUFFIXES

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError) as err:  # PIL reports a damaged file with any of these
        return f"does not decode as an image: {err}"
    return None


def story_problems(folder: Path, stories: Sequence[str]) -> list[str]:
    """'NN: <problem>' for each story of ``folder`` the benchmark's loader would refuse (read in English)."""
    from storycast.story.parse import load_story

    problems = []
    for story in stories:
        try:
            load_story(folder / story / "story.json")
        except StoryError as err:
            problems.append(f"{story}: {str(err).splitlines()[0] if len(err.problems) == 1 else err}")
    return problems


def _file_problem(path: str, origin: Path, digest: str, table: Mapping[str, str]) -> str | None:
    """Why a fetched file is refused: another SHA-256 than the table's; without a table, an image that does not
    decode (a story that does not read is found once its folder is complete)."""
    if table:
        return None if digest == table[path] else f"SHA-256 {digest[:12]}…, expected {table[path][:12]}…"
    return image_problem(origin)


def _save_record(target: Path, record: Mapping[str, Any]) -> None:
    if target.is_dir():
        atomic_write_json(target / RECORD, dict(record))


def _copy(origin: Path, destination: Path) -> None:
    with origin.open("rb") as source, atomic_writer(destination) as handle:
        shutil.copyfileobj(source, handle, 1 << 20)


class _QuietHub:
    """The Hub's own progress bar per file off while ours counts the files (restored after)."""

    def __enter__(self) -> None:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        self.was_off = are_progress_bars_disabled()
        disable_progress_bars()

    def __exit__(self, *exc: object) -> None:
        from huggingface_hub.utils import enable_progress_bars

        if not self.was_off:
            enable_progress_bars()


def install(
    target: str | Path,
    *,
    source: str | Path | None = None,
    revision: str | None = None,
    checksums: Mapping[str, str] | None = None,
    stories: Sequence[str] | None = None,
    progress: ProgressCallback = no_progress,
) -> InstallResult:
    """Put the ViStoryBench stories into ``target`` (``target/NN/story.json``, ``target/NN/image/...``), checked.

    Args:
        target: The benchmark folder (``default_target()`` is where ``storycast benchmark vistorybench`` looks).
        source: A local copy to take the files from instead of the Hub (the repository's layout, or a folder of
            numbered stories).
        revision: The dataset revision to fetch (default: ``REVISION``, else the commit an earlier install of this
            folder recorded, else ``main``), resolved to a commit once.
        checksums: Our path -> SHA-256 of every file (default ``CHECKSUMS``). Empty: no table (see the docstring).
        stories: The stories the dataset must hold when there is no table (default ``STORIES``).
        progress: Receives a 'files' event per file.

    Raises:
        BenchDataError: The Hub cannot be reached, stories or files are missing, a file does not match its checksum
            or does not decode, or a story does not read. Files that passed are kept, so the same call resumes.
        SettingsError: ``target`` is a file, or ``source`` holds no stories.
    """
    table = dict(CHECKSUMS if checksums is None else checksums)
    target = Path(target).expanduser()
    check_target(target)
    root = stories_root(Path(source).expanduser()) if source is not None else None
    previous = read_record(target)
    commit: str | None = None
    copied: dict[str, str] = {}
    if root is not None:
        copied = {} if table else checksum_table(root)  # without a table, the copy's own digests are expected
        wanted = sorted(table or copied)
        where = f"'{root}'"
    else:
        commit = resolve_revision(revision or REVISION or previous.get("revision") or "main")
        wanted = sorted(table) if table else hub_files(commit)
        where = f"{REPO_ID}@{commit[:7]}"
    if not table:
        present = {story_of(p) for p in wanted}
        absent = [s for s in (STORIES if stories is None else stories) if s not in present]
        if absent:
            raise BenchDataError(
                f"{len(absent)} of the benchmark's stories are not in {where}: {_listed(absent)}. Fix: pass the "
                f"whole dataset {REPO_ID} (its {HUB_FOLDER}/ folder holds {len(STORIES)} numbered stories)."
            )
    if root is not None and not table:
        problems = story_problems(root, sorted({story_of(p) or "" for p in wanted}, key=int))
        if problems:
            raise BenchDataError(
                f"{len(problems)} stories in {where} do not read as the benchmark's loader reads them: "
                f"{'; '.join(problems[:SHOWN])}. Fix: take these stories from a fresh copy of {REPO_ID} (or "
                "download without --from); nothing was copied."
            )
    # The digests of a Hub install are trusted only for the commit they were recorded at.
    known = dict(previous.get("files") or {}) if commit is not None and previous.get("revision") == commit else {}
    result = InstallResult(target=target, revision=commit, checked="table" if table else "record")
    record: dict[str, Any] = {
        "kind": "storycast-download",
        "benchmark": BENCH_NAME,
        "repo": REPO_ID,
        "revision": commit,
        "source": str(root) if root is not None else "hub",
        "checked": result.checked,
        "complete": False,
        "expected": wanted,
        "files": {},
    }
    damaged: list[str] = []
    missing: list[str] = []
    progress(ProgressEvent("files", 0, len(wanted), BENCH_NAME))
    try:
        with _QuietHub():
            for number, path in enumerate(wanted, start=1):
                destination = inside_target(target, path)
                found = root / path if root is not None else None
                if found is not None and not found.is_file():
                    missing.append(path)
                    progress(ProgressEvent("files", number, len(wanted), BENCH_NAME))
                    continue
                expected = table.get(path) or copied.get(path) or known.get(path)
                if expected and destination.is_file() and sha256_file(destination) == expected:
                    result.kept.append(path)
                    record["files"][path] = expected
                    progress(ProgressEvent("files", number, len(wanted), BENCH_NAME))
                    continue
                if destination.is_file():
                    logger.warning("%s is not the dataset's file; replacing it", destination)
                origin = found if found is not None else hub_download(path, commit or "")
                digest = copied.get(path) or sha256_file(origin)
                problem = _file_problem(path, origin, digest, table)
                if problem:
                    logger.error("%s: %s", origin, problem)
                    damaged.append(f"{path} ({problem})")
                else:
                    _copy(origin, destination)
                    result.written.append(path)
                    record["files"][path] = digest
                    if len(result.written) % RECORD_EVERY == 0:
                        _save_record(target, record)
                progress(ProgressEvent("files", number, len(wanted), BENCH_NAME))
        problems = []
        if damaged:
            problems.append(f"{len(damaged)} file(s) from {where} were refused: {_listed(damaged)}")
        if missing:
            problems.append(f"{len(missing)} file(s) are not in {where}: {_listed(missing)}")
        if not problems and root is None:
            bad = story_problems(target, sorted({story_of(p) or "" for p in wanted}, key=int))
            if bad:
                problems.append(
                    f"{len(bad)} stories of {where} do not read as the benchmark's loader reads them: "
                    f"{'; '.join(bad[:SHOWN])}"
                )
        if problems:
            kept = len(result.written) + len(result.kept)
            raise BenchDataError(
                "; ".join(problems) + f". Fix: run the same command again (the {kept} good file(s) in '{target}' are "
                f"kept, the others fetched again), or pass --from a complete copy of {REPO_ID}"
                + (f" at commit {REVISION}" if REVISION else "")
                + "."
            )
        record["complete"] = True
    finally:
        _save_record(target, record)
    return result

"""The app's folder: uploads, run folders and downloads under one root, never a path a client chose.

Layout::

    ROOT/uploads/<uuid>.<ext>     photos and story files sent to the app (the client's file name is not used)
    ROOT/runs/<name>/             one run folder per drawing, as ``storycast generate --out`` writes
    ROOT/downloads/<name>.zip     archives made for download (a run, PNG pages)
    ROOT/.gradio/                 Gradio's own copies of what it receives and serves (unless $GRADIO_TEMP_DIR is set)

A run is named by the app (:func:`new_run_name`); a name from a request is checked against :data:`RUN_NAME`
and resolved inside ``ROOT/runs`` (:meth:`AppFolders.run_dir`), so ``../`` and links out of the root are
refused.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from storycast.errors import StorycastError
from storycast.runs.folder import MANIFEST_NAME

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A run folder's name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128."""
PHOTO_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tiff"}
"""Photo formats taken (by what PIL reads in the file, not by its name) and the suffix they are stored under."""
STORY_SUFFIXES = (".yaml", ".yml", ".json")
MAX_PHOTO_PIXELS = 40_000_000
"""Largest photo taken, in pixels (8K x 5K); larger ones are refused before they are decoded."""
SKIPPED_IN_ARCHIVE = (".workers",)


class AppRequestError(StorycastError):
    """A request the app refuses: a bad name, a path outside its folder, an upload of the wrong type or size."""


@dataclass(frozen=True)
class AppFolders:
    """The app's folders under ``root`` (made on first use)."""

    root: Path

    @classmethod
    def create(cls, root: str | Path) -> AppFolders:
        folders = cls(Path(root).resolve())
        for folder in (folders.uploads, folders.runs, folders.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        return folders

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def run_dir(self, name: str) -> Path:
        """The run folder called ``name`` inside ``ROOT/runs`` (it need not exist yet).

        Raises:
            AppRequestError: ``name`` is not a run name, or resolves outside ``ROOT/runs`` (through a link).
        """
        if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
            raise AppRequestError(
                f"{name!r} is not a run name. Fix: pick a run from the list (names use letters, digits, '.', '_', '-')."
            )
        return inside(self.runs, self.runs / name, what=f"run {name!r}")

    def run_names(self) -> list[str]:
        """The runs under ``ROOT/runs``, newest first (folders with a manifest)."""
        if not self.runs.is_dir():
            return []
        found = [p for p in self.runs.iterdir() if RUN_NAME.match(p.name) and (p / MANIFEST_NAME).is_file()]
        found = [p for p in found if p.resolve().is_relative_to(self.runs.resolve())]
        return [p.name for p in sorted(found, key=lambda p: (p / MANIFEST_NAME).stat().st_mtime, reverse=True)]

    def is_upload(self, path: str | Path) -> bool:
        """``path`` is a file the app stored in ``ROOT/uploads`` (what a story may name as a photo)."""
        try:
            resolved = Path(path).resolve()
        except (OSError, ValueError):
            return False
        return resolved.is_relative_to(self.uploads.resolve()) and resolved.is_file()


def inside(root: Path, path: Path, *, what: str = "the path") -> Path:
    """``path`` resolved (links followed), checked to lie inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise AppRequestError(f"{what} lies outside the app's folder {root}. Fix: use the app's own runs and files.")
    return resolved


def new_run_name(title: str, method: str, *, now: dt.datetime | None = None) -> str:
    """``<title>-<method>-<UTC time>-<8 hex>``: a fresh run folder name, unique among the app's runs (8 random hex
    digits: two drawings started in the same second share a name once in 4 billion; with 4, twenty names made in
    one second collided once in about 350)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:40] or "story"
    method_slug = re.sub(r"[^A-Za-z0-9]+", "-", method).strip("-").lower()[:24] or "method"
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{slug}-{method_slug}-{stamp}-{uuid.uuid4().hex[:8]}"


def _size_problem(path: Path, limit: int, what: str) -> None:
    size = path.stat().st_size
    if size > limit:
        raise AppRequestError(
            f"the {what} is {size / 2**20:.1f} MiB, over the app's limit of {limit / 2**20:.1f} MiB. Fix: send a "
            f"smaller file."
        )
    if size == 0:
        raise AppRequestError(f"the {what} is empty (0 bytes). Fix: send the file again.")


def _check_source(path: Path, sources: tuple[Path, ...]) -> Path:
    """The uploaded file as Gradio received it: a regular file inside one of its upload folders."""
    resolved = Path(path).resolve()
    if sources and not any(resolved.is_relative_to(Path(s).resolve()) for s in sources):
        raise AppRequestError("the upload is not a file the app received. Fix: upload the file again.")
    if not resolved.is_file():
        raise AppRequestError("the upload is missing or not a file. Fix: upload the file again.")
    return resolved


def store_photo(path: str | Path, folders: AppFolders, *, max_bytes: int, sources: tuple[Path, ...] = ()) -> Path:
    """Check an uploaded photo (size, then the image itself) and keep it as ``ROOT/uploads/<uuid>.<ext>``.

    Args:
        path: Where Gradio put the upload.
        folders: The app's folders.
        max_bytes: The size limit.
        sources: Folders uploads arrive in (Gradio's cache); a path elsewhere is refused (empty: not checked).

    Raises:
        AppRequestError: Over the size limit, empty, not an image we read, too many pixels, or damaged.
    """
    from PIL import Image, UnidentifiedImageError

    source = _check_source(Path(path), sources)
    _size_problem(source, max_bytes, "photo")
    try:
        with Image.open(source) as image:
            kind, size = image.format, image.size
            if kind not in PHOTO_SUFFIXES:
                raise AppRequestError(
                    f"the photo is a {kind} image. Fix: send a photo as {', '.join(PHOTO_SUFFIXES)}."
                )
            if size[0] * size[1] > MAX_PHOTO_PIXELS:
                raise AppRequestError(
                    f"the photo has {size[0]}x{size[1]} pixels, over {MAX_PHOTO_PIXELS:,}. Fix: send a smaller photo."
                )
            image.verify()
    except UnidentifiedImageError:
        raise AppRequestError(f"the file is not an image. Fix: send a photo ({', '.join(PHOTO_SUFFIXES)}).") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise AppRequestError(f"the photo cannot be read ({err}). Fix: send another copy of it.") from None
    return _keep(source, folders.uploads, PHOTO_SUFFIXES[kind])


def store_story_file(
    path: str | Path, folders: AppFolders, *, max_bytes: int, sources: tuple[Path, ...] = (), name: str = ""
) -> Path:
    """Check an uploaded story file (a YAML or JSON name, its size) and keep it as ``ROOT/uploads/<uuid>.<ext>``.

    ``name`` is the file name the client gave (only its ending is read; default: the upload's own name). The
    content is read later by :func:`storycast.story.parse.read_document`, with the CLI's limits.
    """
    source = _check_source(Path(path), sources)
    suffix = Path(name or source.name).suffix.lower()
    if suffix not in STORY_SUFFIXES:
        raise AppRequestError(
            f"a story file must be YAML or JSON ({', '.join(STORY_SUFFIXES)}), not {suffix or 'a file without an ending'}."
            " Fix: save the story as .yaml or .json."
        )
    _size_problem(source, max_bytes, "story file")
    return _keep(source, folders.uploads, ".json" if suffix == ".json" else ".yaml")


def _keep(source: Path, folder: Path, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}{suffix}"
    staging = folder / f".{target.name}.part"
    shutil.copyfile(source, staging)
    os.replace(staging, target)
    return target


def zip_run(run_dir: Path, folders: AppFolders) -> Path:
    """The whole run folder (frames, manifest, story, storyboard, exports, scores) as ``ROOT/downloads/<run>.zip``."""
    run_dir = inside(folders.runs, run_dir, what="the run")
    return zip_folder(run_dir, folders.downloads / f"{run_dir.name}.zip", top=run_dir.name)


def zip_folder(folder: Path, target: Path, *, top: str) -> Path:
    """``folder``'s files (links and temporary ``.part`` files left out) in ``target``, under ``top/``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(folder)
                if path.is_symlink() or not path.is_file() or path.name.endswith(".part"):
                    continue
                if relative.parts[0] in SKIPPED_IN_ARCHIVE:
                    continue
                archive.write(path, f"{top}/{relative.as_posix()}")
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target

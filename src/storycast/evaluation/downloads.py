"""Model packs fetched from a URL the user gives (face packs are zip files, not Hub repositories).

A pack is downloaded once into the storycast cache, keyed by its URL, and unpacked atomically: an
interrupted download leaves nothing that looks finished, and the next run starts it again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.utils.io import atomic_directory

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://", "file://")
CHUNK = 1 << 20


def is_url(source: str | Path | None) -> bool:
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def _download(url: str, path: Path, *, timeout: float, fix: str, unused: str) -> None:
    """``url`` into ``path``; a ``#sha256=HEX`` fragment (pip's syntax, not sent) is checked before returning
    (``unused``: what is not done with a file of another checksum, for the message).

    Raises:
        MissingWeightsError: The URL cannot be fetched (the message names it and ``fix``).
        ModelLoadError: What was fetched is not the file the checksum names.
    """
    url, _, fragment = url.partition("#")
    expected = fragment[len("sha256=") :].lower() if fragment.startswith("sha256=") else None
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as handle:
            shutil.copyfileobj(response, handle, CHUNK)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise MissingWeightsError(f"could not download '{url}' ({err}). Fix: {fix}") from None
    if expected is not None:
        from storycast.utils.io import sha256_file

        found = sha256_file(path)
        if found != expected:
            raise ModelLoadError(
                f"'{url}' is not the file its checksum names (sha256 {found}, expected {expected}); not {unused}. "
                f"Fix: check the URL and the #sha256= value, or {fix}"
            )


def _target(url: str, cache_dir: str | Path) -> Path:
    key = hashlib.sha256(url.partition("#")[0].encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / "downloads" / key


def fetch_zip(url: str, cache_dir: str | Path, *, setting: str = "--face-models", timeout: float = 60.0) -> Path:
    """The folder holding the unpacked zip at ``url``, downloading and unpacking it on first use.

    A ``#sha256=HEX`` fragment (pip's syntax) makes the download checked against that checksum before anything is
    unpacked; the fragment is not sent.

    Raises:
        MissingWeightsError: The URL cannot be fetched (the message names it and the local-folder fix).
        ModelLoadError: What was fetched is not a zip file, or not the one the checksum names.
    """
    target = _target(url, cache_dir)
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        archive = Path(scratch) / "pack.zip"
        fix = f"download and unzip it yourself, then pass {setting} /path/to/the/folder."
        _download(url, archive, timeout=timeout, fix=fix, unused="unpacked")
        if not zipfile.is_zipfile(archive):
            raise ModelLoadError(
                f"'{url}' is not a zip file. Fix: give the URL of the pack's .zip, or {setting} FOLDER."
            )
        with zipfile.ZipFile(archive) as pack, atomic_directory(target) as staging:
            for member in pack.namelist():
                # Refuse paths that would land outside the folder (absolute, or climbing with '..').
                if not (staging / member).resolve().is_relative_to(staging.resolve()):
                    raise ModelLoadError(f"'{url}' holds an unsafe path '{member}'; not unpacked.")
            pack.extractall(staging)
            (staging / ".complete").write_text(url + "\n", encoding="utf-8")
    return target


def fetch_file(url: str, cache_dir: str | Path, *, setting: str, timeout: float = 60.0) -> Path:
    """The file at ``url`` (a weights file), downloaded once into ``<cache_dir>/downloads/<key>/<its name>``.

    Raises:
        MissingWeightsError: The URL cannot be fetched (the message names it and ``setting``).
        ModelLoadError: The download is not the file a ``#sha256=`` fragment names.
    """
    name = url.partition("#")[0].rstrip("/").rpartition("/")[2] or "weights"
    path = _target(url, cache_dir) / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=path.parent) as scratch:
        partial = Path(scratch) / name
        _download(url, partial, timeout=timeout, fix=f"download it yourself and pass {setting} FILE.", unused="kept")
        partial.replace(path)  # whole or not at all: an interrupted download leaves nothing that looks finished
    return path

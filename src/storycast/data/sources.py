"""What a source folder holds, for ``storycast data build``: images, video frames, and what is known of them.

    SRC/
      characters.yaml        optional: class words, and the characters of images showing several
      mara/ 001.jpg ...      a sub-folder per character: its images (known identity, no clustering)
      mara/001.txt           optional sidecar caption (for a video: every frame of it)
      mara/001.mask.png      optional sidecar mask (white = the character); ``001.mask-tom.png`` per character
      scenes/tea.png         images listed in characters.yaml under ``images:`` show those characters
      loose.jpg              anything else: identities found by clustering

``characters.yaml``::

    characters:
      mara: {class_word: woman}
      tom: {class_word: man}
    images:
      scenes/tea.png: [mara, tom]

Videos (``.mp4 .mov .mkv .webm .avi``) are sampled every ``every_seconds`` through PyAV, at most
``max_frames`` frames each. Text files (captions, ``characters.yaml``) are read as UTF-8, with or without a
byte-order mark, or as UTF-16 with one; anything else is refused naming the file and the line.

The folder is listed once: a source of ten thousand images is scanned in one pass over its files, never one
directory listing per image.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storycast.errors import StorycastError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
SIDECAR_FILE = "characters.yaml"


class SourceError(StorycastError):
    """The source folder cannot be read as a builder's input."""


@dataclass(frozen=True)
class SourceItem:
    """One image of the source (a file, or a frame of a video).

    Attributes:
        path: The file.
        frame: The frame index for a video, else None.
        characters: The characters it shows when known (sub-folder or ``characters.yaml``), else None.
        caption: The sidecar caption, if any.
        masks: Character id (or "" for the only one) -> sidecar mask file.
    """

    path: Path
    frame: int | None = None
    characters: tuple[str, ...] | None = None
    caption: str | None = None
    masks: Mapping[str, Path] = field(default_factory=dict)

    def name(self, root: Path) -> str:
        relative = self.path.relative_to(root).as_posix()
        return relative if self.frame is None else f"{relative}#{self.frame}"


@dataclass(frozen=True)
class SourceFolder:
    """The scanned source: its items and the class word of every known character."""

    root: Path
    items: list[SourceItem]
    class_words: dict[str, str]


def read_text(path: Path, what: str) -> str:
    """The text of ``path``: UTF-8 (a byte-order mark is dropped), or UTF-16 when it starts with a byte-order mark.

    Raises:
        SourceError: The file cannot be read, or holds bytes that are not such text (Latin-1, UTF-16 without a
            byte-order mark, binary data), naming the file, the line and the fix.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SourceError(
            f"{what} {path} cannot be read ({err.strerror or err}). Fix: check its permissions."
        ) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, body = "utf-16", data  # the codec reads the byte order from the mark, and drops it
    else:
        encoding, body = "utf-8", data.removeprefix(codecs.BOM_UTF8)
    fix = "Fix: save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`, or your editor's 'save with encoding')."
    if encoding == "utf-8" and b"\x00" in body:  # text never holds NUL; UTF-16 without a byte-order mark does
        line = body[: body.index(b"\x00")].count(b"\n") + 1
        raise SourceError(
            f"{what} {path}, line {line}: holds NUL bytes, as UTF-16 without a byte-order mark does (or the file is "
            f"not text). {fix}"
        )
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as err:
        line = body[: err.start].decode(encoding, errors="replace").count("\n") + 1
        raise SourceError(
            f"{what} {path}, line {line}: byte {body[err.start : err.start + 1].hex()} at offset {err.start} is not "
            f"{encoding.upper()} text. {fix}"
        ) from None
    return text


def read_sidecar(root: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(class words, image -> characters) from ``characters.yaml``; empty when there is none."""
    import yaml

    path = root / SIDECAR_FILE
    if not path.is_file():
        return {}, {}
    try:
        data = yaml.safe_load(read_text(path, "the sidecar")) or {}
    except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer of more than 4300 digits
        raise SourceError(
            f"{path} cannot be read ({type(err).__name__}). Fix: write valid YAML (see `storycast data build --help`)."
        ) from None
    if not isinstance(data, dict) or set(data) - {"characters", "images"}:
        raise SourceError(
            f"{path}: the top level holds 'characters' and 'images' only. Fix: see `storycast data build --help`."
        )
    words: dict[str, str] = {}
    for name, entry in (data.get("characters") or {}).items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("class_word"), str)
            or not entry["class_word"].strip()
        ):
            raise SourceError(
                f"{path}: characters.{name} needs a class_word ('woman', 'dog'). Fix: add `class_word: ...`."
            )
        words[str(name)] = entry["class_word"].strip()
    listed: dict[str, tuple[str, ...]] = {}
    for image, names in (data.get("images") or {}).items():
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise SourceError(f"{path}: images.{image} must list character ids ([mara, tom]).")
        listed[str(image)] = tuple(names)
    return words, listed


def scan_source(root: str | Path) -> SourceFolder:
    """Every image and video under ``root`` with what is known of it (see the module docstring).

    Raises:
        SourceError: The folder does not exist, holds nothing to use, or its ``characters.yaml`` is invalid.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"source folder '{root}' does not exist. Fix: pass a folder of images and/or videos.")
    words, listed = read_sidecar(root)
    items: list[SourceItem] = []
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    except OSError as err:
        raise SourceError(f"source folder '{root}' cannot be read ({err}). Fix: check its permissions.") from None
    present = set(files)
    masks_of = sidecar_masks(files)
    for path in files:
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES or ".mask" in path.stem:
            continue
        relative = path.relative_to(root).as_posix()
        characters = listed.get(relative)
        if characters is None and path.parent != root:
            characters = (path.relative_to(root).parts[0],)  # a sub-folder per character
        caption_file = path.with_suffix(".txt")
        caption = read_text(caption_file, "the caption").strip() if caption_file in present else None
        masks = masks_of.get(path.with_suffix(""), {})
        if suffix in VIDEO_SUFFIXES:
            items.append(SourceItem(path, 0, characters, caption, {}))  # frames expanded when read
        else:
            items.append(SourceItem(path, None, characters, caption, masks))
    unknown = sorted({name for item in items for name in (item.characters or ())} - set(words))
    if not items:
        raise SourceError(
            f"source folder '{root}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or videos "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}). Fix: point at the folder that holds them."
        )
    return SourceFolder(root, items, {**dict.fromkeys(unknown, ""), **words})


def sidecar_masks(files: Iterable[Path]) -> dict[Path, dict[str, Path]]:
    """The sidecar masks among ``files``, by the image they belong to (its path without suffix): ``x.mask.png``
    is the only character's ("" key), ``x.mask-tom.png`` tom's."""
    found: dict[Path, dict[str, Path]] = {}
    for path in files:
        if path.suffix != ".png":
            continue
        stem = path.name[: -len(".png")]
        if stem.endswith(".mask"):
            image, character = stem[: -len(".mask")], ""
        elif ".mask-" in stem:
            image, _, character = stem.partition(".mask-")
        else:
            continue
        found.setdefault(path.with_name(image), {})[character] = path
    return found


def video_frames(path: Path, every_seconds: float, max_frames: int) -> Iterator[tuple[int, Any]]:
    """(frame index, PIL image) every ``every_seconds`` of a video, at most ``max_frames`` (PyAV decodes).

    Raises:
        SourceError: The file is not a readable video, naming it.
    """
    try:
        import av
    except ImportError as err:  # pragma: no cover - the data extra brings it
        from storycast.errors import ExtraNotInstalledError

        raise ExtraNotInstalledError("reading videos needs PyAV. Fix: pip install 'storycast[data]'.") from err
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25)
            step = max(1, round(every_seconds * rate))
            kept = 0
            for index, frame in enumerate(container.decode(stream)):
                if index % step:
                    continue
                yield index, frame.to_image()
                kept += 1
                if kept >= max_frames:
                    return
    except (av.FFmpegError, IndexError, OSError) as err:
        raise SourceError(
            f"{path} is not a readable video ({type(err).__name__}: {err}). Fix: re-encode it or remove it."
        ) from None

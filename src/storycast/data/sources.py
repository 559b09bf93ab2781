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
``max_frames`` frames each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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


def read_sidecar(root: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(class words, image -> characters) from ``characters.yaml``; empty when there is none."""
    import yaml

    path = root / SIDECAR_FILE
    if not path.is_file():
        return {}, {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
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
    for path in files:
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES or ".mask" in path.stem:
            continue
        relative = path.relative_to(root).as_posix()
        characters = listed.get(relative)
        if characters is None and path.parent != root:
            characters = (path.relative_to(root).parts[0],)  # a sub-folder per character
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.is_file() else None
        masks = {
            ("" if m.stem.endswith(".mask") else m.stem.split(".mask-", 1)[1]): m
            for m in path.parent.glob(f"{path.stem}.mask*.png")
        }
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

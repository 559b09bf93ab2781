"""What an export reads from a run folder: the title, each frame's file and caption, the method that drew them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storycast.errors import ExportError
from storycast.runs.folder import MANIFEST_NAME, STORY_NAME, RunFolder

PATH_FIELDS = {"characters": ("references",), "frames": ("masks", "control_image")}
"""Story fields naming files that an export does not need (the run's copy names them by absolute path, and
they may have moved since): left out before the story is read, so that a run exports wherever it lies."""

MISSING_SHOWN = 10
"""Missing frames named in a message; more are counted."""


@dataclass(frozen=True)
class RunContent:
    """A run folder's frames with their text.

    Attributes:
        path: The run folder.
        title: The story's title.
        frames: The frame images, in story order.
        captions: One caption per frame (:meth:`storycast.story.model.Story.caption`).
        size: Width and height of the first frame in pixels (the layouts use its shape).
        method: Name of the method that drew the run.
        status: The manifest's status ("complete", or "interrupted" for a run stopped after its last frame).
        redraw: How to draw missing frames again, for messages ("run `storycast generate ...` again").
    """

    path: Path
    title: str
    frames: tuple[Path, ...]
    captions: tuple[str, ...]
    size: tuple[int, int]
    method: str = "?"
    status: str = "complete"
    redraw: str = "rerun `storycast generate` with the run's --out"

    @property
    def aspect(self) -> float:
        return self.size[0] / self.size[1]

    def __len__(self) -> int:
        return len(self.frames)


def read_run(run_dir: str | Path) -> RunContent:
    """Read what an export needs from ``run_dir``, checking that every frame is there.

    Raises:
        ExportError: The folder is not a storycast run, its story copy is missing, or frames are missing.
        StoryError: Its ``story.yaml`` does not parse.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ExportError(f"'{path}' is not a folder. Fix: pass a run folder (the --out of `storycast generate`).")
    folder = RunFolder(path)
    if folder.previous is None:
        why = (
            f"its {MANIFEST_NAME} {folder.foreign_manifest}"
            if folder.foreign_manifest
            else f"it has no {MANIFEST_NAME}"
        )
        raise ExportError(
            f"'{path}' is not a storycast run folder ({why}). Fix: pass the --out folder of `storycast generate`."
        )
    manifest = folder.previous
    _check_manifest(folder.manifest_path, manifest, path)
    records = manifest.get("frames")
    if not isinstance(records, list) or not records:
        raise ExportError(f"'{folder.manifest_path}' lists no frames. Fix: draw the run with `storycast generate`.")
    story = _read_story(path)
    if len(story) != len(records):
        raise ExportError(
            f"'{path}': {MANIFEST_NAME} lists {len(records)} frames but {STORY_NAME} has {len(story)}. Fix: "
            f"{_redraw(manifest, path)}."
        )
    frames = tuple(_frame_path(path, index, record) for index, record in enumerate(records))
    missing = [(i, frame) for i, frame in enumerate(frames) if frame is None or not frame.is_file()]
    if missing:
        names = ", ".join(
            f"{i} ({frame.relative_to(path).as_posix() if frame is not None else 'not drawn'})"
            for i, frame in missing[:MISSING_SHOWN]
        ) + (f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else "")
        raise ExportError(
            f"'{path}' is missing {len(missing)} of its {len(frames)} frames: {names}. Fix: "
            f"{_redraw(manifest, path)} (it draws only what is missing), then export again."
        )
    size = image_size(frames[0], _redraw(manifest, path))
    return RunContent(
        path=path,
        title=str((manifest.get("story") or {}).get("title") or story.title),
        frames=frames,  # type: ignore[arg-type]
        captions=tuple(story.caption(i) for i in range(len(story))),
        size=size,
        method=str((manifest.get("method") or {}).get("name", "?")),
        status=str(manifest.get("status")),
        redraw=_redraw(manifest, path),
    )


def _read_story(path: Path) -> Any:
    from storycast.story.parse import parse_story, read_document

    story_path = path / STORY_NAME
    if not story_path.is_file():
        raise ExportError(
            f"'{path}' has no {STORY_NAME} (the story as drawn, which holds the captions). Fix: rerun `storycast "
            f"generate` with the same --out; it rewrites the file without redrawing finished frames."
        )
    data, lines = read_document(story_path)
    if isinstance(data, Mapping):
        data = {key: _without_paths(key, value) for key, value in data.items()}
    return parse_story(data, source=story_path, base_dir=path, lines=lines)


def _without_paths(key: str, value: Any) -> Any:
    fields = PATH_FIELDS.get(key)
    if not fields or not isinstance(value, list):
        return value
    return [
        {k: v for k, v in item.items() if k not in fields} if isinstance(item, Mapping) else item for item in value
    ]


MANIFEST_MAPPINGS = ("story", "method")
"""Manifest fields an export reads as mappings (the title, the method's name)."""


def _check_manifest(manifest_path: Path, manifest: Mapping[str, Any], run: Path) -> None:
    """Refuse a manifest whose fields an export reads have the wrong shape (a damaged or hand-edited file)."""
    for key in MANIFEST_MAPPINGS:
        value = manifest.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ExportError(
                f"'{manifest_path}': '{key}' is a {type(value).__name__}, not the mapping a run's manifest holds (the "
                f"file is damaged). Fix: {_redraw(manifest, run)} (finished frames are kept), then export again."
            )


def _frame_path(run: Path, index: int, record: Any) -> Path | None:
    if not isinstance(record, Mapping) or not isinstance(record.get("file"), str):
        return None
    if "\0" in record["file"]:
        raise ExportError(
            f"'{run / MANIFEST_NAME}': frame {index}'s file name holds a NUL character (the manifest is damaged). "
            f"Fix: redraw the run with `storycast generate`."
        )
    file = run / record["file"]
    if not file.resolve().is_relative_to(run.resolve()):
        raise ExportError(
            f"'{run / MANIFEST_NAME}': frame {index} points outside the run ({record['file']}). Fix: redraw the run "
            "with `storycast generate`."
        )
    return file


def image_size(path: Path, redraw: str) -> tuple[int, int]:
    """Width and height of a frame file (its header only).

    Raises:
        ExportError: It is not an image; the message says how to draw it again.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad files
        raise damaged_frame(path, err, redraw) from err


def damaged_frame(path: Path, err: BaseException, redraw: str) -> ExportError:
    """The error for a frame file that does not read as an image."""
    return ExportError(
        f"frame '{path}' cannot be read as an image ({type(err).__name__}: {err}). Fix: delete it and {redraw} to "
        "draw it again."
    )


def _redraw(manifest: Mapping[str, Any], path: Path) -> str:
    """How to draw the run's missing frames: the ``storycast generate`` command its manifest records, else the
    general form (a run drawn from Python records no command, or that of the program that drew it)."""
    command = manifest.get("command")
    if isinstance(command, str) and command.split()[:2] == ["storycast", "generate"]:
        return f"run `{command}` again"
    return f"rerun `storycast generate STORY --out {path}` with the run's settings"

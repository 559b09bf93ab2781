"""Load a checkpoint from a Hub id or a local folder, turning "not there" into an error that names the fix.

Shared by everything that loads auxiliary models through ``from_pretrained`` (detectors, segmenters,
metric extractors), so that every missing checkpoint is reported the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from storycast.errors import MissingWeightsError, ModelLoadError

T = TypeVar("T")


def looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a file-system path rather than a Hub id ('owner/name')."""
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for one-line error reports."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def missing_checkpoint_message(what: str, source: str, point_at: str, reason: str = "") -> str:
    reason = f" ({reason})" if reason else ""
    return (
        f"{what} checkpoint '{source}' is not on this machine and could not be downloaded{reason}. Fix: download it "
        f"where the Hub is reachable (`hf download {source}`) and copy the Hugging Face cache here (or set HF_HOME "
        f"to it), or {point_at} /path/to/folder (a folder written by save_pretrained)."
    )


def load_checkpoint(
    load: Callable[[str, bool], T],
    source: str | Path,
    *,
    what: str,
    point_at: str,
    local_files_only: bool = False,
) -> T:
    """Call ``load(source, local_files_only)`` and map failures to storycast errors.

    Args:
        load: Loads the model from a Hub id or folder, e.g. ``lambda s, l: CLIPModel.from_pretrained(s, local_files_only=l)``.
        source: Hub id ('openai/clip-vit-large-patch14') or local folder.
        what: What is loaded, for messages ('CLIP').
        point_at: How the user points at a local copy, completed by a path in messages
            ('pass --clip-model', 'set the detector setting to').
        local_files_only: Never touch the network (the Hugging Face cache still counts).

    Raises:
        MissingWeightsError: The folder does not exist, or the Hub id is neither cached nor downloadable.
        ModelLoadError: The folder exists but does not hold a loadable checkpoint.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return load(str(path), True)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(
                f"{what} folder '{source}' exists but could not be loaded ({first_line(err)}). Fix: {point_at} a "
                f"folder written by save_pretrained (config.json and the weights)."
            ) from None
    if looks_like_path(source):
        raise MissingWeightsError(
            f"{what} folder '{source}' does not exist. Fix: {point_at} the folder that holds the checkpoint, or a "
            f"Hub id (owner/name)."
        )
    try:
        return load(source, local_files_only)
    except OSError as err:
        raise MissingWeightsError(missing_checkpoint_message(what, source, point_at, first_line(err))) from None

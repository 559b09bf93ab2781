"""Find evaluation checkpoints (Hub id or local folder) and turn 'not there' into an error naming the fix."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from storycast.errors import MissingWeightsError, ModelLoadError

T = TypeVar("T")


def looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a file-system path rather than a Hub id ('owner/name')."""
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def missing_checkpoint_message(what: str, source: str, setting: str, reason: str = "") -> str:
    reason = f" ({reason})" if reason else ""
    return (
        f"{what} checkpoint '{source}' is not on this machine and could not be downloaded{reason}. Fix: download it "
        f"where the Hub is reachable (`hf download {source}`) and copy the Hugging Face cache here (or set HF_HOME "
        f"to it), or pass {setting} /path/to/folder (a folder written by save_pretrained)."
    )


def load_checkpoint(
    load: Callable[[str, bool], T],
    source: str | Path,
    *,
    what: str,
    setting: str,
    local_files_only: bool = False,
) -> T:
    """Call ``load(source, local_files_only)`` and map failures to storycast errors.

    Args:
        load: Loads the model from a Hub id or folder, e.g. ``lambda s, l: CLIPModel.from_pretrained(s, local_files_only=l)``.
        source: Hub id ('openai/clip-vit-large-patch14') or local folder.
        what: What is loaded, for messages ('CLIP').
        setting: The setting or flag that points at a local copy ('--clip-model'), named in the fix.
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
                f"{what} folder '{source}' exists but could not be loaded ({_reason(err)}). Fix: point {setting} "
                f"at a folder written by save_pretrained (config.json and the weights)."
            ) from None
    if looks_like_path(source):
        raise MissingWeightsError(
            f"{what} folder '{source}' does not exist. Fix: pass {setting} with the folder that holds the checkpoint, "
            f"or a Hub id (owner/name)."
        )
    try:
        return load(source, local_files_only)
    except OSError as err:
        raise MissingWeightsError(missing_checkpoint_message(what, source, setting, _reason(err))) from None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG inside the block (random-weight tiny models) and restore the caller's state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pil_image_processor_class(name: str) -> Any:
    """The PIL-backend image processor class ``name`` (transformers 5: ``<name>Pil``; 4.x: ``<name>``).

    Pinned to PIL so that a machine with torchvision does not silently switch to torchvision resizing
    (CLIP's PIL path reproduces OpenAI ``clip``'s preprocessing; metrics.md §4).
    """
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def load_pil_image_processor(source: str, local_files_only: bool) -> Any:
    """``AutoImageProcessor.from_pretrained`` pinned to the PIL backend on transformers 4 and 5."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only, **backend)

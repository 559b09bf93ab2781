"""Find feature-extractor checkpoints (Hub id or local folder) and turn 'not there' into an error naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storycast.models.checkpoints import load_checkpoint as shared_load_checkpoint

T = TypeVar("T")


def load_checkpoint(
    load: Callable[[str, bool], T],
    source: str | Path,
    *,
    what: str,
    setting: str,
    local_files_only: bool = False,
) -> T:
    """:func:`storycast.models.checkpoints.load_checkpoint` with the fix phrased as a flag (``--clip-model``)."""
    return shared_load_checkpoint(
        load, source, what=what, point_at=f"pass {setting}", local_files_only=local_files_only
    )


def pil_image_processor_class(name: str) -> Any:
    """The PIL-backend image processor class ``name`` (transformers 5: ``<name>Pil``; 4.x: ``<name>``).

    Pinned to PIL so that a machine with torchvision does not silently switch to torchvision resizing
    (CLIP's PIL path reproduces OpenAI ``clip``'s preprocessing; docs/metrics.md §4).
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


def load_state_dict_checked(module: Any, state: Any, *, what: str, source: str) -> None:
    """Load ``state`` into ``module`` strictly, after checking every key and shape, with an error that names them.

    Raises:
        ModelLoadError: Keys missing or unexpected, or a tensor of another shape (the file is another network or
            another size of this one).
    """
    from storycast.errors import ModelLoadError

    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in {what}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first: {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) of another shape (first: {wrong[0]})")
        raise ModelLoadError(
            f"{source} does not hold {what} weights: {'; '.join(parts)}. Fix: point at the official checkpoint "
            f"of {what}, or build the network with the size the file was saved from."
        )
    module.load_state_dict(state, strict=True)


def read_torch_weights(path: str | Path, *, what: str) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file, or of a ``.pt``/``.pth``/``.ckpt`` file read with
    ``torch.load(weights_only=True)`` (no code in a pickle runs).

    Raises:
        MissingWeightsError: No such file.
        ModelLoadError: The pickle needs more than tensors and plain containers to load.
    """
    import pickle

    import torch

    from storycast.errors import MissingWeightsError, ModelLoadError

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what} weights not found at {path}. Fix: download them there, or point at them.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as err:
        raise ModelLoadError(
            f"{path} cannot be read as plain tensors ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Fix: re-save its state dict as .safetensors where you trust the file, and point at that."
        ) from None

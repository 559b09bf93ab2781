"""Find feature-extractor checkpoints (Hub id or local folder) and turn 'not there' into an error naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storycast.models.checkpoints import first_line
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


def read_state_dict(path: str | Path, *, what: str, setting: str) -> dict[str, Any]:
    """Read a ``.pth``/``.pt``/``.bin`` (``torch.load``, tensors only) or ``.safetensors`` weight file.

    A training checkpoint that wraps its weights (``{"model_state_dict": ...}`` as CSD's ``checkpoint.pth``, or
    ``{"state_dict": ...}``) is unwrapped, and a ``module.`` prefix left by ``DataParallel`` is stripped.

    Raises:
        MissingWeightsError: No file at ``path``; the message names ``setting``.
        ModelLoadError: The file is not a state dict of tensors.
    """
    import torch

    from storycast.errors import MissingWeightsError, ModelLoadError

    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingWeightsError(
            f"{what} weights '{path}' do not exist. Fix: download the file (docs/metrics.md §9 and "
            f"docs/metrics-vistorybench.md name each) and pass {setting}{'' if setting.endswith('=') else ' '}"
            f"/path/to/it."
        )
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (pickle, zip, runtime); all mean "not loadable"
        raise ModelLoadError(
            f"{what} weights '{path}' could not be read ({first_line(err)}). Fix: pass {setting} a state-dict file "
            f"(.pth or .safetensors)."
        ) from None
    for wrapper in ("model_state_dict", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{what} weights '{path}' are not a state dict of tensors. Fix: pass {setting} the weight file itself."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_dict_checked(module: Any, state: dict[str, Any], *, what: str, source: str) -> None:
    """``module.load_state_dict(state)``, strictly, with every missing, unexpected or mis-shaped key named.

    Unlike a bare ``strict=False`` load (which leaves random weights in place without a word), nothing loads
    unless every key of ``module`` is in ``state`` with its shape. A module on the meta device (built without
    memory) is checked first and then takes the tensors of ``state``.

    Raises:
        ModelLoadError: Keys are missing or unexpected, or shapes differ; the message lists (up to 5 of) each.
    """
    import torch

    from storycast.errors import ModelLoadError

    expected = module.state_dict()
    # Batch-norm step counters are not weights; files saved before torch 0.4.1 lack them (torch fills them in).
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: expected {tuple(v.shape)}, got {tuple(state[k].shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" ... and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:5])}{more}")
    if problems:
        raise ModelLoadError(
            f"{what} weights '{source}' do not fit the {what} network: {'; '.join(problems)}. Fix: pass the "
            f"{what} checkpoint named in docs/metrics-vistorybench.md (its keys are the official ones)."
        )
    counters = {k: torch.zeros((), dtype=torch.long) for k in expected if k not in state}  # only step counters left
    # A module built on the meta device takes the file's tensors as they are (nothing allocated twice).
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict({**state, **counters}, strict=True, assign=on_meta)


def load_module_file(build: Callable[[], Any], path: str | Path, *, what: str, setting: str) -> Any:
    """Build a network on the meta device (no memory), then give it the weights of the file at ``path``.

    :func:`read_state_dict` then :func:`load_state_dict_checked`: refused with every missing, unexpected or
    mis-shaped key named before anything is allocated.
    """
    import torch

    state = read_state_dict(path, what=what, setting=setting)
    with torch.device("meta"):
        module = build()
    load_state_dict_checked(module, state, what=what, source=str(path))
    return module

"""What model to load and how to place it: one typed object, parsed once from the CLI or code."""

from __future__ import annotations

from dataclasses import dataclass

from storycast.errors import SettingsError
from storycast.models.presets import FAMILIES
from storycast.utils.torch_utils import DTYPE_NAMES

OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to load into the base model (a style, a character...).

    Attributes:
        source: Hub id, folder or ``.safetensors`` file (diffusers' ``load_lora_weights`` formats).
        scale: Strength (the authors of IdentityStory run style LoRAs at 0.8).
        weight_name: File inside a Hub repo or folder, when it holds several.
    """

    source: str
    scale: float = 1.0
    weight_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``SOURCE`` or ``SOURCE@SCALE`` (the command line's ``--lora``)."""
        source, sep, scale = text.rpartition("@")
        if sep:
            try:
                return cls(source=source, scale=float(scale))
            except ValueError:
                pass
        if not text.strip():
            raise SettingsError("--lora needs a Hub id, folder or file. Fix: --lora path/to/style.safetensors@0.8")
        return cls(source=text)


@dataclass(frozen=True)
class ModelSpec:
    """A base model and its placement.

    Attributes:
        source: A preset name (``sdxl``, ``sd15``, ``tiny``), a Hub id, a local diffusers folder
            (with ``model_index.json``) or a single ``.safetensors``/``.ckpt`` checkpoint.
        family: "sdxl" or "sd15"; detected from the source when ``None``.
        revision: Hub revision (branch, tag or commit) for Hub ids.
        variant: Weight variant to load ("fp16"); by default fp16 files are used for fp16 runs of
            presets that ship them.
        config: For single-file checkpoints: the Hub id or folder whose diffusers configs to use
            (default: the family's reference repository).
        dtype: "auto" (fp16 on CUDA, fp32 elsewhere), "fp32", "fp16" or "bf16".
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".
        aux_device: Where the auxiliary models run (GroundingDINO, SAM, PhotoMaker's vision tower, the metric
            extractors of a benchmark): a device as above; None: the base model's.
        offload: "none", "model" (whole models moved to the GPU when used) or "sequential"
            (layer by layer: least memory, slowest).
        vae_tiling: Decode large images tile by tile.
        vae_slicing: Decode a batch one image at a time.
        local_files_only: Never contact the Hub; use the local cache only.
        seed: Seed of the random weights of tiny presets.
        loras: LoRAs loaded into the base model and active in every pass.
        channels_last: The UNet in channels-last memory layout (a speed option; same output).
        compile: Compile the UNet's repeated blocks (a speed option; same output; falls back with a warning where
            torch cannot compile).
    """

    source: str = "sdxl"
    family: str | None = None
    revision: str | None = None
    variant: str | None = None
    config: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    aux_device: str | None = None
    offload: str = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    local_files_only: bool = False
    seed: int = 0
    loras: tuple[LoraSpec, ...] = ()
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if not self.source:
            raise SettingsError(
                "model source is empty. Fix: pass --preset NAME or --model HUB_ID|FOLDER|FILE (in Python: "
                "ModelSpec(source=...))."
            )
        if self.family is not None and self.family not in FAMILIES:
            raise SettingsError(f"model family '{self.family}' is not known. Fix: use one of {', '.join(FAMILIES)}.")
        if self.dtype not in DTYPE_NAMES:
            raise SettingsError(f"dtype '{self.dtype}' is not known. Fix: use one of {', '.join(DTYPE_NAMES)}.")
        if self.offload not in OFFLOAD_MODES:
            raise SettingsError(f"offload '{self.offload}' is not known. Fix: use one of {', '.join(OFFLOAD_MODES)}.")

"""What model to load and how to place it: one typed object, parsed once from the CLI or code."""

from __future__ import annotations

from dataclasses import dataclass

from storycast.errors import SettingsError
from storycast.models.presets import FAMILIES
from storycast.pipelines.step_cache import StepCache
from storycast.utils.torch_utils import DTYPE_NAMES

OFFLOAD_MODES = ("none", "model", "sequential", "group")
QUANTIZE_MODES = ("none", "int8", "fp8", "int4")


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
        offload: "none", "model" (whole models moved to the GPU when used, and back to the CPU when the next one
            runs: FLUX's T5 leaves the GPU when the transformer first runs, once the prompts are encoded),
            "sequential" (layer by layer: least memory, slowest) or "group" (diffusers' group offloading: the
            denoiser's blocks moved to the GPU one at a time as they run, the next one copied on a CUDA stream
            meanwhile; each text encoder whole while it encodes; the VAE stays on the GPU: near sequential's
            memory, less of its slowdown). Each needs CUDA: elsewhere the models load without offload, with a
            warning.
        text_encoder_device: Where the text encoders run (FLUX's CLIP-L and T5-XXL), e.g. "cpu" to keep T5's
            9.5 GB of bf16 weights off a small GPU: prompts are encoded there and the embeddings moved to
            ``device`` (on one device, the pixels of the default). None: with the rest. FLUX only; not with
            offload "model" or "sequential", which already keep the encoders on the GPU only while they encode.
        quantize: The denoiser's weights (FLUX's transformer, the UNet) in fewer bits, through torchao (the
            ``quant`` pip extra): "int8" (per-row int8 weights, half of bf16's memory; CPU and CUDA), "fp8"
            (per-row float8 e4m3 weights; CUDA compute capability 8.9 or newer, or the CPU) or "int4" (int4
            weights in groups of 128, a quarter of bf16's; CUDA with dtype bf16), computed in ``dtype``. The
            pixels change a little, so a quantized model draws other frames (it is part of the run's identity).
        vae_tiling: Decode large images tile by tile.
        vae_slicing: Decode a batch one image at a time.
        local_files_only: Never contact the Hub; use the local cache only.
        seed: Seed of the random weights of tiny presets.
        loras: LoRAs loaded into the base model and active in every pass.
        channels_last: The UNet in channels-last memory layout (a speed option; same output; FLUX's transformer,
            which has no convolutions, is left as it is).
        cache: A lossy step cache every draw runs with (FLUX only; :mod:`storycast.pipelines.step_cache`):
            "none", or ``KIND[:VALUE]`` with KIND one of first-block, pab, faster, taylorseer, mag (e.g.
            "first-block:0.08"); kept as ``KIND:VALUE``. Pixels change, so it is part of the run's identity; methods
            that have not declared themselves safe under a cache are refused it before loading.
        compile: Compile the denoiser's repeated blocks (the UNet's transformer blocks; FLUX's double- and
            single-stream blocks): a speed option, same output; falls back with a warning where torch cannot
            compile.
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
    text_encoder_device: str | None = None
    quantize: str = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    local_files_only: bool = False
    seed: int = 0
    loras: tuple[LoraSpec, ...] = ()
    channels_last: bool = False
    compile: bool = False
    cache: str = "none"

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
        if self.quantize not in QUANTIZE_MODES:
            raise SettingsError(
                f"quantize '{self.quantize}' is not known. Fix: use one of {', '.join(QUANTIZE_MODES)}."
            )
        if self.quantize != "none" and self.offload == "sequential":
            raise SettingsError(
                f"quantize '{self.quantize}' and offload 'sequential' do not go together: accelerate's layer-by-layer "
                f"offload cannot move torchao's quantized weights. Fix: use --offload group (or model) with --quantize."
            )
        step_cache = StepCache.parse(self.cache)
        object.__setattr__(self, "cache", step_cache.label if step_cache is not None else "none")
        if self.text_encoder_device is not None and self.offload in ("model", "sequential"):
            raise SettingsError(
                f"text_encoder_device '{self.text_encoder_device}' and offload '{self.offload}' both place the text "
                f"encoders: offload '{self.offload}' already keeps them on the GPU only while they encode. Fix: drop "
                f"--text-encoder-device, or use --offload none or group."
            )

"""Named models: base generators (with their usual defaults) and the adapter weights the methods use."""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("sdxl", "sd15")


@dataclass(frozen=True)
class FamilyDefaults:
    """Defaults of a model family, used where the story and the CLI say nothing.

    Attributes:
        outrank_method: Defaults that win over a method's preferred values (not over the story or the command
            line): the tiny presets keep their small size and few steps, so a method tuned for 50 steps at 768 px
            demos in seconds.
    """

    width: int
    height: int
    steps: int
    guidance_scale: float
    outrank_method: tuple[str, ...] = ()


@dataclass(frozen=True)
class BasePreset:
    """A base text-to-image model known by a short name.

    Attributes:
        name: The preset name (``--preset NAME``).
        family: Architecture: "sdxl" or "sd15".
        repo_id: Hugging Face Hub id (``None`` for presets built in code).
        description: One line for ``--help`` and ``storycast env``.
        defaults: Resolution, steps and guidance used when nothing else is set.
        fp16_variant: The repo ships ``*.fp16.safetensors`` files, loaded when the dtype is fp16.
        tiny: Built from configs in code with random weights (offline, for tests and demos).
        random: The real architecture with random weights, built in code (offline speed/memory benchmarks).
    """

    name: str
    family: str
    repo_id: str | None
    description: str
    defaults: FamilyDefaults
    fp16_variant: bool = False
    tiny: bool = False
    random: bool = False


SDXL_DEFAULTS = FamilyDefaults(width=1024, height=1024, steps=30, guidance_scale=5.0)
SD15_DEFAULTS = FamilyDefaults(width=512, height=512, steps=30, guidance_scale=7.5)
# Tiny models keep the real latent/pixel ratio (8) at 128 px, so every code path sees real shapes.
TINY_DEFAULTS = FamilyDefaults(
    width=128, height=128, steps=4, guidance_scale=5.0, outrank_method=("width", "height", "steps")
)

FAMILY_DEFAULTS = {"sdxl": SDXL_DEFAULTS, "sd15": SD15_DEFAULTS}
# Where single-file checkpoints take their diffusers configs from, per family.
FAMILY_CONFIG_REPO = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}

BASE_PRESETS: dict[str, BasePreset] = {
    preset.name: preset
    for preset in (
        BasePreset(
            "sdxl",
            "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "SDXL base 1.0 (IdentityStory's base model)",
            SDXL_DEFAULTS,
            fp16_variant=True,
        ),
        BasePreset(
            "sd15",
            "sd15",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "Stable Diffusion 1.5 (Storynizor's base model)",
            SD15_DEFAULTS,
            fp16_variant=True,
        ),
        BasePreset("tiny", "sdxl", None, "tiny random-weight SDXL architecture (offline)", TINY_DEFAULTS, tiny=True),
        BasePreset("tiny-sdxl", "sdxl", None, "same as 'tiny'", TINY_DEFAULTS, tiny=True),
        BasePreset(
            "tiny-sd15", "sd15", None, "tiny random-weight SD 1.5 architecture (offline)", TINY_DEFAULTS, tiny=True
        ),
        BasePreset(
            "sdxl-random",
            "sdxl",
            None,
            "full-size SDXL, random weights (offline benchmarks)",
            SDXL_DEFAULTS,
            random=True,
        ),
        BasePreset(
            "sd15-random",
            "sd15",
            None,
            "full-size SD 1.5, random weights (offline benchmarks)",
            SD15_DEFAULTS,
            random=True,
        ),
    )
}


@dataclass(frozen=True)
class WeightsRef:
    """Where a set of adapter or auxiliary weights lives on the Hub.

    Attributes:
        name: Short name used in settings (``photomaker``).
        repo_id: Hub repository.
        filename: File inside the repository (``None`` for a whole model folder).
        subfolder: Folder inside the repository.
        description: What it is and who uses it.
    """

    name: str
    repo_id: str
    filename: str | None
    subfolder: str | None
    description: str


ADAPTERS: dict[str, WeightsRef] = {
    ref.name: ref
    for ref in (
        WeightsRef("photomaker", "TencentARC/PhotoMaker", "photomaker-v1.bin", None, "PhotoMaker v1 (IdentityStory)"),
        WeightsRef("photomaker-v2", "TencentARC/PhotoMaker-V2", "photomaker-v2.bin", None, "PhotoMaker v2"),
        WeightsRef(
            "clip-vit-h",
            "h94/IP-Adapter",
            None,
            "models/image_encoder",
            "CLIP ViT-H/14 image encoder (Storynizor's ID-Injector)",
        ),
        WeightsRef("grounding-dino", "IDEA-Research/grounding-dino-base", None, None, "GroundingDINO Swin-B (masks)"),
        WeightsRef("sam", "facebook/sam-vit-huge", None, None, "SAM ViT-H (masks)"),
    )
}


VIT_H_ENCODER = "h94/IP-Adapter:models/image_encoder"
"""OpenCLIP ViT-H/14 as IP-Adapter ships it (``owner/name:subfolder``): the ID-Injector's image encoder."""
PLUS_FACE_WEIGHTS = {
    "sd15": "h94/IP-Adapter:models/ip-adapter-plus-face_sd15.safetensors",
    "sdxl": "h94/IP-Adapter:sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
}
"""The public IP-Adapter-Plus-Face files per model family (``owner/name:path``): the ID-Injector's architecture,
usable before any training; both read ViT-H/14 features."""


def get_base_preset(name: str) -> BasePreset:
    from storycast.errors import SettingsError

    try:
        return BASE_PRESETS[name]
    except KeyError:
        known = ", ".join(BASE_PRESETS)
        raise SettingsError(
            f"unknown preset '{name}'. Fix: use one of {known}, or --model HUB_ID|FOLDER|FILE."
        ) from None

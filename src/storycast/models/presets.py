"""Named models: base generators (with their usual defaults) and the adapter weights the methods use."""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("sdxl", "sd15", "flux")
"""The backbone families (``storycast.pipelines.families`` implements each; a test holds the two lists equal)."""
GUIDANCE_KINDS = ("cfg", "embedded", "none")
"""How a model is guided: classifier-free guidance over [uncond, cond] (the UNet families), a guidance value given
to a guidance-distilled model (FLUX.1-dev), or nothing (timestep-distilled FLUX.1-schnell)."""


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
        family: Architecture: "sdxl", "sd15" or "flux".
        repo_id: Hugging Face Hub id (``None`` for presets built in code).
        description: One line for ``--help`` and ``storycast env``.
        defaults: Resolution, steps and guidance used when nothing else is set.
        fp16_variant: The repo ships ``*.fp16.safetensors`` files, loaded when the dtype is fp16.
        tiny: Built from configs in code with random weights (offline, for tests and demos).
        random: The real architecture with random weights, built in code (offline speed/memory benchmarks).
        guidance: How the model is guided (one of ``GUIDANCE_KINDS``).
    """

    name: str
    family: str
    repo_id: str | None
    description: str
    defaults: FamilyDefaults
    fp16_variant: bool = False
    tiny: bool = False
    random: bool = False
    guidance: str = "cfg"


SDXL_DEFAULTS = FamilyDefaults(width=1024, height=1024, steps=30, guidance_scale=5.0)
SD15_DEFAULTS = FamilyDefaults(width=512, height=512, steps=30, guidance_scale=7.5)
# Tiny models keep the real latent/pixel ratio (8) at 128 px, so every code path sees real shapes.
TINY_DEFAULTS = FamilyDefaults(
    width=128, height=128, steps=4, guidance_scale=5.0, outrank_method=("width", "height", "steps")
)

# FLUX.1-dev's model card and diffusers' FLUX docs: 28 steps, guidance 3.5 at 1024 px; FLUX.1-schnell: 4 steps, no
# guidance (it is timestep-distilled; FluxPipeline ignores the value, storycast refuses one).
FLUX_DEV_DEFAULTS = FamilyDefaults(width=1024, height=1024, steps=28, guidance_scale=3.5)
FLUX_SCHNELL_DEFAULTS = FamilyDefaults(width=1024, height=1024, steps=4, guidance_scale=0.0)
TINY_FLUX_DEFAULTS = FamilyDefaults(
    width=128, height=128, steps=4, guidance_scale=3.5, outrank_method=("width", "height", "steps")
)
TINY_FLUX_SCHNELL_DEFAULTS = FamilyDefaults(
    width=128, height=128, steps=4, guidance_scale=0.0, outrank_method=("width", "height", "steps")
)

FAMILY_DEFAULTS = {"sdxl": SDXL_DEFAULTS, "sd15": SD15_DEFAULTS, "flux": FLUX_DEV_DEFAULTS}
"""Defaults of a model that is not a preset, by family (a FLUX model without guidance input: the schnell ones,
see :func:`defaults_for`)."""
# Where single-file checkpoints take their diffusers configs from, per family (FLUX: by guidance, see
# config_repo_for).
FAMILY_CONFIG_REPO = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "flux": "black-forest-labs/FLUX.1-dev",
}
FLUX_SCHNELL_REPO = "black-forest-labs/FLUX.1-schnell"


def defaults_for(family: str, guidance: str) -> FamilyDefaults:
    """The defaults of a non-preset model of ``family`` guided as ``guidance``."""
    if family == "flux" and guidance == "none":
        return FLUX_SCHNELL_DEFAULTS
    return FAMILY_DEFAULTS[family]


def config_repo_for(family: str, guidance: str) -> str:
    """Where a single-file checkpoint of ``family`` takes its configs (and FLUX its text encoders and VAE) from."""
    if family == "flux" and guidance == "none":
        return FLUX_SCHNELL_REPO
    return FAMILY_CONFIG_REPO[family]


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
            "flux-dev",
            "flux",
            "black-forest-labs/FLUX.1-dev",
            "FLUX.1 [dev] (guidance-distilled; non-commercial licence of Black Forest Labs)",
            FLUX_DEV_DEFAULTS,
            guidance="embedded",
        ),
        BasePreset(
            "flux-schnell",
            "flux",
            FLUX_SCHNELL_REPO,
            "FLUX.1 [schnell] (4 steps, no guidance; Apache-2.0)",
            FLUX_SCHNELL_DEFAULTS,
            guidance="none",
        ),
        BasePreset(
            "tiny-flux",
            "flux",
            None,
            "tiny random-weight FLUX.1-dev architecture (offline)",
            TINY_FLUX_DEFAULTS,
            tiny=True,
            guidance="embedded",
        ),
        BasePreset(
            "tiny-flux-schnell",
            "flux",
            None,
            "tiny random-weight FLUX.1-schnell architecture: no guidance input (offline)",
            TINY_FLUX_SCHNELL_DEFAULTS,
            tiny=True,
            guidance="none",
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
        BasePreset(
            "flux-random",
            "flux",
            None,
            "full-size FLUX.1-dev (12B transformer, T5-XXL), random weights (offline benchmarks)",
            FLUX_DEV_DEFAULTS,
            random=True,
            guidance="embedded",
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

"""Settings of ``identitystory``, with the authors' defaults (``main.py`` of Correr-Zhou/IdentityStory).

Groups: ``photomaker`` (the adapter on SDXL), ``pulid`` and ``flux`` (PuLID-FLUX, the adapter on FLUX: our
extension), ``discovery`` (Iterative Identity Discovery), ``injection`` (Re-denoising Identity Injection), ``masks``
(where the characters are) and ``controlnet``. Every leaf keeps
the flat name earlier versions used (``--set sweet_spot_step=10``, ``--set mask_provider=attention``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from storycast.adapters.controlnet import ControlNetSettings
from storycast.adapters.photomaker import PhotoMakerSettings
from storycast.adapters.pulid_flux import PuLIDFluxSettings
from storycast.masks.settings import MaskSettings
from storycast.settings import MethodSettings, ResolveContext, check_range, setting

if TYPE_CHECKING:
    from storycast.identity.discovery import DiscoveryBudget

SEARCH_NEGATIVE_PROMPT = "(asymmetry, worst quality, low quality, illustration, 3d, 2d, painting, cartoons, sketch)"
INJECTION_NEGATIVE_PROMPT = "noisy, blurry, soft, deformed, ugly"
RETRY_SEED_OFFSET = 3533  # the authors' seed change after a failed segmentation

# Smaller discovery budgets for the tiny presets, so that a whole story draws in seconds.
TINY_CANDIDATES = 12
TINY_SVD_RANK = 2


AUTHORS_STEPS = 50
"""T of the authors' injection and discovery (``sample_image``'s 50 steps, ``--search_num_inference_steps``)."""
AUTHORS_SWEET_SPOT = 10
"""s of the authors' injection (``main.py --start_timestep``) and their discovery's ``--start_merge_step``."""
SDXL_SWEET_SPOT_FRACTION = AUTHORS_SWEET_SPOT / AUTHORS_STEPS
"""s / T = 10 / 50 on SDXL: the authors' numbers as a fraction of the trajectory."""
FLUX_SWEET_SPOT_FRACTION = 0.4
"""s / T on FLUX (ours, docs/methods/identitystory.md "On FLUX"): FLUX.1's flow-matching schedule, shifted by
``mu`` = 1.15 at 1024 px, reaches the noise level of SDXL's step 10 of 50 (sigma 0.84 in flow terms) at 40 % of its
steps, where SDXL's scaled-linear schedule reaches it at 20 %."""
SWEET_SPOT_FRACTIONS = {"sdxl": SDXL_SWEET_SPOT_FRACTION, "flux": FLUX_SWEET_SPOT_FRACTION}


def step_at_fraction(fraction: float, num_steps: int) -> int:
    """The step ``round(fraction * num_steps)``, at least 1: a step of the authors' 50 carried to ``num_steps``
    (10 / 50 gives 10 at 50 steps, 6 at 28, 1 at 3)."""
    return max(1, round(fraction * num_steps))


def scaled_step(value: int | None, num_steps: int, fraction: float = SDXL_SWEET_SPOT_FRACTION) -> int:
    """``value`` if given, else the step at ``fraction`` of ``num_steps`` (:func:`step_at_fraction`)."""
    if value is not None:
        return value
    return step_at_fraction(fraction, num_steps)


@dataclass(frozen=True)
class DiscoverySettings(MethodSettings):
    """Iterative Identity Discovery (IdentityStory §3.2): candidates, ID embeddings, the iterative SVD filter."""

    candidates: int | None = setting(
        None, "Candidate images per discovery loop (m). None: 64 (the authors'); 12 on tiny models.",
        flat="discovery_candidates",
    )  # fmt: skip
    batch_size: int = setting(16, "Candidates drawn per batch (memory, not results).", flat="discovery_batch_size")
    steps: int | None = setting(
        None, "Denoising steps of candidates. None: 50 (the authors'); the generation steps on FLUX and tiny models.",
        flat="discovery_steps",
    )  # fmt: skip
    guidance_scale: float | None = setting(
        None, "Guidance of candidates. None: 5 (the authors'); the generation's guidance on FLUX.",
        flat="discovery_guidance_scale",
    )  # fmt: skip
    loops: int = setting(
        1, "Discovery loops in all; loops after the first draw candidates with the identity found so far.",
        flat="discovery_loops",
    )  # fmt: skip
    start_merge_step: int | None = setting(
        None, "The identity conditions candidates from the step after this one. None: 10 at 50 steps, T/5 otherwise "
        "(the authors' 10 of 50, on every family).",
        flat="discovery_start_merge_step",
    )  # fmt: skip
    seed: int = setting(0, "Seed of the candidates (part of the identity's library key).", flat="discovery_seed")
    negative_prompt: str = setting(
        SEARCH_NEGATIVE_PROMPT, "Negative prompt of the candidates (the authors').", flat="discovery_negative_prompt"
    )
    svd_rank: int | None = setting(None, "r of the SVD filter. None: 10 (the authors'); 2 on tiny models.")
    svd_keep_ratio: float = setting(0.6, "Rows kept per SVD iteration (the authors' 0.6: 64 -> 38 -> 22 -> 13).")
    svd_iterations: int = setting(3, "SVD filter iterations (the authors' 3).")
    preview_images: int = setting(4, "Images drawn with a found identity for its preview sheet.")
    freeu: bool | None = setting(
        None, "FreeU (s1=0.6, s2=0.4, b1=1.1, b2=1.2) while drawing candidates. None: on for SDXL, as the authors do; "
        "off on FLUX (FreeU scales a UNet's skip connections, which FLUX has not).",
    )  # fmt: skip

    def validate(self) -> None:
        for name in ("discovery_batch_size", "discovery_loops", "svd_iterations"):
            check_range(name, self.get(name), 1)
        for name in ("discovery_candidates", "discovery_steps", "svd_rank"):
            check_range(name, self.get(name), 1)
        check_range("preview_images", self.preview_images, 0)
        check_range("discovery_start_merge_step", self.start_merge_step, 0)
        if not 0 < self.svd_keep_ratio < 1:
            from storycast.errors import SettingsError

            raise SettingsError(f"svd_keep_ratio must be between 0 and 1, got {self.svd_keep_ratio}.")

    def check_rounds(self) -> None:
        """The SVD filter needs more rows than its rank in every round: known from the (resolved) budget, before any
        drawing.

        Raises:
            SettingsError: Naming the round that is left too few candidates, and the fix.
        """
        from storycast.errors import SettingsError
        from storycast.identity.svd_filter import kept_counts

        if self.candidates is None or self.svd_rank is None:
            return
        counts = kept_counts(self.candidates, self.svd_keep_ratio, self.svd_iterations)
        short = [(round_, rows) for round_, rows in enumerate(counts[:-1], start=1) if rows <= self.svd_rank]
        if short:
            raise SettingsError(
                f"discovery_candidates={self.candidates} leave {short[0][1]} candidate(s) in SVD round "
                f"{short[0][0]} (row counts {list(counts)}), not more than svd_rank={self.svd_rank}. Fix: more "
                f"discovery_candidates (the authors' 64), a smaller svd_rank, or fewer svd_iterations."
            )

    def resolve(self, context: ResolveContext) -> DiscoverySettings:
        tiny, flux = context.tiny, context.family == "flux"
        steps = self.steps or (context.generation.steps if tiny or flux else AUTHORS_STEPS)
        guidance = self.guidance_scale
        if guidance is None:
            guidance = context.generation.guidance_scale if flux else 5.0
        return dataclasses.replace(
            self,
            candidates=self.candidates or (TINY_CANDIDATES if tiny else 64),
            steps=steps,
            guidance_scale=guidance,
            svd_rank=self.svd_rank or (TINY_SVD_RANK if tiny else 10),
            start_merge_step=scaled_step(self.start_merge_step, steps),
            freeu=(not flux) if self.freeu is None else self.freeu,
        )

    def budget(self, width: int, height: int) -> DiscoveryBudget:
        """These settings, resolved, as the numbers of one discovery of ``width`` x ``height`` candidates."""
        from storycast.identity.discovery import DiscoveryBudget

        return DiscoveryBudget(
            candidates=self.candidates,
            batch_size=self.batch_size,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            loops=self.loops,
            start_merge_step=self.start_merge_step,
            svd_rank=self.svd_rank,
            svd_keep_ratio=self.svd_keep_ratio,
            svd_iterations=self.svd_iterations,
            preview_images=self.preview_images,
            negative_prompt=self.negative_prompt,
            freeu=self.freeu,
            seed=self.seed,
            width=width,
            height=height,
        )


@dataclass(frozen=True)
class InjectionSettings(MethodSettings):
    """Re-denoising Identity Injection (IdentityStory §3.3)."""

    sweet_spot_step: int | None = setting(
        None,
        "s, the step re-denoising starts from (0-based steps i with i + 1 >= s are redrawn). None: "
        "sweet_spot_fraction of the steps.",
    )
    sweet_spot_fraction: float | None = setting(
        None,
        "s as a fraction of the steps (round(fraction * T), kept within 1..T-1), used when sweet_spot_step is not "
        "set. None: 0.2 on SDXL (the authors' 10 of 50), 0.4 on FLUX (ours: where FLUX's shifted flow-matching "
        "schedule reaches the noise level of SDXL's step 10 of 50).",
    )
    max_dilation: int = setting(
        50,
        "Dilation of the progressive masks at the last step, in pixels at 1024 px (scaled with the image size); it "
        "grows linearly with the fraction ((i + 1) - s) / (T - s) of the re-denoised steps, on every family.",
    )
    identity_strength: float = setting(
        1.0, "How far the class token moves to the fused identity embedding (1 = the paper)."
    )
    fuse_mode: Literal["repeated", "once"] = setting(
        "repeated",
        "'repeated': the fuse is applied again at every injection step, as the authors' code does (their reported "
        "numbers come from it); 'once': applied once per frame.",
    )
    fuse_lora: bool = setting(
        False,
        "Speed option: PhotoMaker's LoRA merged into the UNet's weights for the whole of stage 2 (one matrix product "
        "per LoRA layer instead of three) and the weights put back after each frame; the same frames within the "
        "dtype's rounding (tested; benchmarks/speed_options.py measures it).",
    )
    prompt_style: Literal["auto", "story", "authors"] = setting(
        "auto",
        "Frame prompt of stage 1: 'story' (the story's prompt), 'authors' (style + 'a <description up to the class "
        "word> and a ...' + context, for several characters) or 'auto' (the authors' for multi-character benchmark "
        "stories).",
    )

    def validate(self) -> None:
        check_range("sweet_spot_step", self.sweet_spot_step, 1)
        if self.sweet_spot_fraction is not None and not 0 < self.sweet_spot_fraction < 1:
            from storycast.errors import SettingsError

            raise SettingsError(
                f"sweet_spot_fraction must be between 0 and 1 (exclusive), got {self.sweet_spot_fraction}. Fix: e.g. "
                f"0.2 (the authors' 10 of 50 steps)."
            )
        check_range("max_dilation", self.max_dilation, 0)
        check_range("identity_strength", self.identity_strength, 0)

    def resolve(self, context: ResolveContext) -> InjectionSettings:
        fraction = self.sweet_spot_fraction
        if fraction is None:
            fraction = SWEET_SPOT_FRACTIONS.get(context.family, SDXL_SWEET_SPOT_FRACTION)
        if self.sweet_spot_step is not None:
            return dataclasses.replace(self, sweet_spot_fraction=fraction)
        steps = context.generation.steps
        # s < T: with few steps the scaled default is capped so that at least the last step is re-denoised.
        step = max(1, min(step_at_fraction(fraction, steps), steps - 1))
        return dataclasses.replace(self, sweet_spot_step=step, sweet_spot_fraction=fraction)


@dataclass(frozen=True)
class FluxIdentitySettings(MethodSettings):
    """How IdentityStory reads PuLID-FLUX on FLUX (our extension; docs/methods/identitystory.md "On FLUX")."""

    id_weight: float = setting(
        1.0,
        "PuLID's id_weight in the identity passes of stage 2, discovery's later loops and previews (PuLID-FLUX's "
        "default 1, app_flux.py line 206 of ToTheBeginning/PuLID).",
        flat="id_weight",
    )
    face_models: str | None = setting(
        None,
        "Folder of insightface's antelopev2 pack, whose detector and ArcFace PuLID reads (default: "
        "~/.insightface/models/antelopev2; the tiny presets write tiny random stand-ins into the cache).",
        flat="face_models",
    )
    face_parsing: str | None = setting(
        None,
        "facexlib's BiSeNet weights (parsing_bisenet.pth, or its folder): the background, neck, clothes, ears and hat "
        "of each aligned face go white before EVA-CLIP, as PuLID does. None: the whole crop grey (as --method pulid; "
        "docs/methods/pulid.md).",
        flat="face_parsing",
    )
    offload_encoders: bool = setting(
        True,
        "Once every identity is known, move EVA02-CLIP and IDFormer to the CPU: drawing frames needs only PuLID's "
        "cross-attention modules.",
    )

    def validate(self) -> None:
        check_range("id_weight", self.id_weight, 0)


@dataclass(frozen=True)
class IdentityStorySettings(MethodSettings):
    """Settings of IdentityStory, one group per part."""

    photomaker: PhotoMakerSettings = setting(factory=PhotoMakerSettings, help="PhotoMaker v1, the identity adapter.")
    pulid: PuLIDFluxSettings = setting(
        factory=PuLIDFluxSettings, help="PuLID-FLUX, the identity adapter on FLUX (our extension)."
    )
    flux: FluxIdentitySettings = setting(factory=FluxIdentitySettings, help="PuLID-FLUX's use on FLUX.")
    discovery: DiscoverySettings = setting(factory=DiscoverySettings, help="Iterative Identity Discovery.")
    injection: InjectionSettings = setting(factory=InjectionSettings, help="Re-denoising Identity Injection.")
    masks: MaskSettings = setting(factory=MaskSettings, help="Character masks.")
    controlnet: ControlNetSettings = setting(factory=ControlNetSettings, help="Optional spatial control of stage 1.")

"""The protocol every backbone family implements: one seam between the methods and a diffusers pipeline.

A family (SD 1.5, SDXL, FLUX.1...) is bound to a loaded pipeline and its device, and answers every question a
method's sampling asks, so that a method never touches ``pipe.unet``, packs latents or scales them for decoding:

1. which diffusers pipeline class it loads, and how a checkpoint of it is recognised;
2. :meth:`Family.encode`: prompts to a :class:`~storycast.pipelines.conditioning.GuidancePair`;
3. :meth:`Family.guidance`: the generation settings' guidance as this family applies it;
4. :meth:`Family.scheduler`: a scheduler with its timesteps set for a number of steps and an image size;
5. :meth:`Family.latent_shape` and :meth:`Family.initial_latents`: the noise a seed gives, drawn as the stock
   pipeline draws it; latents are always (B, C, h, w) here, a family that packs them packs inside ``predict``;
6. :meth:`Family.predict` and :meth:`Family.guided_noise`: one denoiser evaluation, and the guided prediction;
7. :meth:`Family.decode`: latents to images;
8. :meth:`Family.attention_layers`: the denoiser's attention layers with their kind, level and block.

The shape follows k-diffusion's ``external.py`` (one model interface over eps-, v- and flow-predicting models) and
diffusers' modular pipelines (encoders, before-denoise, denoise and decoders as parts).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from storycast.pipelines.conditioning import GuidancePair, TextConditioning
from storycast.pipelines.guidance import Guidance

if TYPE_CHECKING:
    from storycast.attention.layers import AttentionLayer
    from storycast.pipelines.step_cache import StepCache


class Family(abc.ABC):
    """A backbone family bound to one loaded pipeline (see the module docstring).

    Args:
        pipe: The family's diffusers text-to-image pipeline.
        device: Where the models run (the pipeline's execution device; with CPU offload, the GPU).
    """

    name: ClassVar[str]
    """The family's name in presets, settings and manifests ("sd15", "sdxl", "flux")."""
    pipeline_class_name: ClassVar[str]
    """The diffusers text-to-image pipeline it loads."""
    pipeline_classes: ClassVar[tuple[str, ...]]
    """Pipeline class names recognised as this family (in a folder's ``model_index.json``, a pipeline's MRO)."""
    config_repo: ClassVar[str]
    """Where a single-file checkpoint of the family takes its diffusers configs from, by default."""
    denoiser_name: ClassVar[str]
    """The pipeline component that denoises ("unet" or "transformer")."""
    scheduler_kinds: ClassVar[tuple[str, ...]] = ("model",)
    """Samplers a setting may choose on this family; "model" keeps the model's own."""
    size_multiple: ClassVar[int] = 8
    """Width and height must be multiples of this (the VAE's downsampling, times any latent packing)."""
    auto_dtype: ClassVar[str] = "fp16"
    """The dtype of ``--dtype auto`` on CUDA."""
    needs_negative_prompts: ClassVar[bool] = True
    """Its default guidance reads negative prompts (classifier-free guidance)."""
    step_caches: ClassVar[bool] = False
    """Its denoiser takes diffusers' step caches (``enable_cache``: FLUX's transformer; a UNet does not)."""
    step_cache: StepCache | None = None
    """The lossy step cache every draw of this backbone runs with (``ModelSpec.cache``), None: none."""

    def __init__(self, pipe: Any, device: Any):
        self.pipe = pipe
        self.device = device

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def pipeline_class(cls) -> Any:
        import diffusers

        return getattr(diffusers, cls.pipeline_class_name)

    @classmethod
    @abc.abstractmethod
    def matches_checkpoint(cls, keys: Collection[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names holds this family's denoiser."""

    # -- the denoiser --------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer (what attention processors are installed on, and what evaluations count)."""
        return getattr(self.pipe, self.denoiser_name)

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def tokenizer(self) -> Any:
        """The tokenizer whose tokens index the per-token embeddings (``conditioning.embeds``)."""
        return self.pipe.tokenizer

    def attention_layers(self) -> list[AttentionLayer]:
        """Every attention layer of the denoiser, with its kind, level and block."""
        from storycast.attention.layers import attention_layers

        return attention_layers(self.denoiser)

    # -- sampling ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def guidance(self, guidance_scale: float, true_cfg_scale: float | None = None) -> Guidance:
        """The generation settings' guidance as this family applies it.

        Raises:
            ValueError: A guidance setting this family does not use (the planner says it earlier, naming the
                setting).
        """

    @abc.abstractmethod
    def encode(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str | None] | None,
        *,
        width: int,
        height: int,
        guidance: Guidance | None = None,
    ) -> GuidancePair:
        """The conditioning of ``prompts``, with unconditional rows from ``negative_prompts`` when ``guidance`` has
        two halves (``None``: the family's classifier-free default).

        A negative prompt that is None is no negative prompt: its row is the one the family's diffusers pipeline
        makes when called without one (SDXL: zeros where the model's config sets ``force_zeros_for_empty_prompt``;
        otherwise the empty prompt's embeddings). ``""`` is always encoded. ``negative_prompts=None``: the empty
        prompt for every row."""

    @abc.abstractmethod
    def scheduler(self, steps: int, *, width: int, height: int, kind: str = "model") -> Any:
        """A new scheduler with its timesteps set for ``steps`` steps of an image of this size (each trajectory
        needs its own: schedulers keep a step index)."""

    @abc.abstractmethod
    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(C, h, w) of one image's latents."""

    def image_size(self, latents: torch.Tensor) -> tuple[int, int]:
        """(width, height) in pixels of latents (B, C, h, w): what ``decode`` gives."""
        factor = self.pipe.vae_scale_factor
        return latents.shape[-1] * factor, latents.shape[-2] * factor

    def initial_latents(
        self, scheduler: Any, generators: Sequence[torch.Generator], *, width: int, height: int
    ) -> torch.Tensor:
        """Initial noise, one row per generator, drawn as diffusers' pipelines draw it (``randn_tensor`` with one
        generator per row), so a seed gives the stock pipeline's starting noise; scaled by the scheduler's initial
        sigma where it has one (flow-matching schedulers start from unit noise)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (len(generators), *self.latent_shape(width, height))
        noise = randn_tensor(shape, generator=list(generators), device=torch.device(self.device), dtype=self.dtype)
        return noise * getattr(scheduler, "init_noise_sigma", 1.0)

    @abc.abstractmethod
    def predict(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: TextConditioning,
        *,
        guidance: Guidance,
        attention_kwargs: dict[str, Any] | None = None,
        control: Any = None,
    ) -> torch.Tensor:
        """One denoiser evaluation of a batch of latents (B, C, h, w), already scaled by the scheduler."""

    def guided_noise(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: GuidancePair,
        guidance: Guidance,
        *,
        attention_kwargs: dict[str, Any] | None = None,
        control: Any = None,
    ) -> torch.Tensor:
        """The guided prediction of B latents: one denoiser call on [uncond x B, cond x B] rows for
        classifier-free guidance (the layout the attention processors' states assume), or on the B cond rows."""
        if conditioning.halves != guidance.halves:
            raise ValueError(
                f"the conditioning has {conditioning.halves} guidance half(s) and the guidance needs {guidance.halves}: "
                f"encode it with the same guidance"
            )
        batch = model_input if guidance.halves == 1 else torch.cat([model_input, model_input])
        noise = self.predict(
            batch,
            timestep,
            conditioning.batch(),
            guidance=guidance,
            attention_kwargs=attention_kwargs,
            control=control,
        )
        return guidance.combine(noise)

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Any]:
        """Latents (B, C, h, w) to PIL images, as the family's stock pipeline decodes them."""

"""IP-Adapter (SDXL, global image embeddings) attached to loaded models through diffusers' own loader, held off the
UNet between uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storycast.settings import MethodSettings, setting

if TYPE_CHECKING:
    from storycast.models.loading import LoadedModels

IP_ADAPTER_REPO = "h94/IP-Adapter"


@dataclass(frozen=True)
class IPAdapterSettings(MethodSettings):
    """IP-Adapter for SDXL, the global-embedding kind (``ip-adapter_sdxl``): one CLIP ViT-bigG image embedding
    projected to 4 tokens, attended by a decoupled branch of every cross-attention layer."""

    source: str = setting(
        "auto",
        f"IP-Adapter weights: a Hub id, a folder or a file. 'auto': {IP_ADAPTER_REPO} (the weights Story-Adapter's "
        "README downloads), or random weights of the same architecture for the tiny and random-weight presets.",
        flat="ip_adapter",
    )
    subfolder: str = setting(
        "sdxl_models", "Folder of the weights inside the Hub repo or folder (h94/IP-Adapter's SDXL folder).",
        flat="ip_adapter_subfolder",
    )  # fmt: skip
    file: str = setting(
        "ip-adapter_sdxl.safetensors",
        "Weight file (h94's safetensors copy of the ip-adapter_sdxl.bin Story-Adapter's run.py loads; the .bin is "
        "read too).",
        flat="ip_adapter_file",
    )
    image_encoder: str = setting(
        "auto",
        "CLIP image encoder: a Hub id ('owner/name' or 'owner/name:subfolder') or a folder. 'auto': the "
        "image_encoder folder beside the weights (h94/IP-Adapter:sdxl_models/image_encoder, OpenCLIP ViT-bigG/14, "
        "as Story-Adapter's run.py), or a random one for the tiny and random-weight presets.",
        flat="image_encoder",
    )

    def location(self) -> tuple[str, str, str]:
        """(Hub id or folder, subfolder, file) as ``load_ip_adapter`` reads them; a file given as ``source`` is
        read from its folder.

        Raises:
            MissingWeightsError: ``source`` is a path that does not exist, or a folder without the file.
        """
        from pathlib import Path

        from storycast.errors import MissingWeightsError
        from storycast.models.checkpoints import looks_like_path

        source = IP_ADAPTER_REPO if self.source == "auto" else self.source
        path = Path(source).expanduser()
        fix = (
            "Fix: set ip_adapter (--set ip_adapter=...) to the ip-adapter_sdxl file, a folder holding it, or a Hub id."
        )
        if path.is_file():
            return str(path.parent), "", path.name
        if path.is_dir():
            for subfolder in dict.fromkeys((self.subfolder, "")):
                if (path / subfolder / self.file).is_file():
                    return str(path), subfolder, self.file
            inside = f"{self.subfolder}/{self.file}" if self.subfolder else self.file
            raise MissingWeightsError(f"IP-Adapter folder '{source}' holds no {inside} (nor {self.file}). {fix}")
        if looks_like_path(source):
            raise MissingWeightsError(f"IP-Adapter weights '{source}' do not exist. {fix}")
        return source, self.subfolder, self.file

    def encoder_source(self) -> str:
        """Where the image encoder comes from: the setting, or for 'auto' the ``image_encoder`` folder beside the
        weights (``owner/name:subfolder`` on the Hub)."""
        from pathlib import Path

        if self.image_encoder != "auto":
            return self.image_encoder
        where, subfolder, _ = self.location()
        if Path(where).is_dir():
            beside = Path(where) / subfolder / "image_encoder"
            return str(beside if beside.is_dir() else Path(where) / "image_encoder")
        return f"{where}:{subfolder}/image_encoder" if subfolder else f"{where}:image_encoder"


@dataclass
class AttachedIPAdapter:
    """IP-Adapter loaded for some models by diffusers' own loader, and held off the UNet between uses.

    ``pipe.load_ip_adapter`` puts an ``IPAdapterAttnProcessor2_0`` on every cross-attention layer and an image
    projection the UNet then requires on every call, so right after loading the pipeline is put back as it was
    (other methods on these models never see the adapter); :meth:`enabled` installs the loaded processors and
    projection for a block. ``unload_ip_adapter`` is not what restores: it gives every layer a new processor
    made from its class without arguments, where the originals are put back here.

    Attributes:
        processors: The loaded IP-Adapter processors, by ``unet.attn_processors`` key (cross-attention layers).
        projection: The UNet's ``MultiIPAdapterImageProjection`` (one ``ImageProjection``: embedding -> 4 tokens).
        image_encoder: The CLIP vision tower whose ``image_embeds`` the projection reads.
        source: Where the weights came from (for manifests).
    """

    models: LoadedModels
    key: tuple[str, str]
    processors: dict[str, Any]
    projection: Any
    image_encoder: Any
    source: str

    @property
    def embedding_dim(self) -> int:
        return int(self.projection.image_projection_layers[0].image_embeds.in_features)

    def embed(self, images: list[Any], batch_size: int = 16) -> Any:
        """Global CLIP image embeddings (n, D) of PIL images (the encoder's ``image_embeds``, after the
        ``CLIPImageProcessor`` defaults IP-Adapter uses), computed where the encoder is (``--aux-device``) and
        returned on the models' device, in the encoder's dtype."""
        import torch

        from storycast.identity.image_embedding import clip_preprocess

        parameter = next(self.image_encoder.parameters())
        pixels = clip_preprocess(images, self.image_encoder.config.image_size)
        with torch.no_grad():
            chunks = [
                self.image_encoder(chunk.to(parameter.device, parameter.dtype)).image_embeds
                for chunk in pixels.split(batch_size)
            ]
        return torch.cat(chunks).to(self.models.device)

    def enabled(self, scale: float) -> Any:
        """A context manager: inside it the UNet has IP-Adapter's processors at ``scale`` (through diffusers'
        ``set_ip_adapter_scale``) and its image projection, and reads ``added_cond_kwargs["image_embeds"]``;
        after it the UNet is as it was."""
        import contextlib

        from storycast.attention.layers import install_processors

        @contextlib.contextmanager
        def block() -> Any:
            pipe = self.models.pipeline
            unet = pipe.unet
            for module in (*self.processors.values(), self.projection):
                module.to(device=unet.device, dtype=unet.dtype)
            previous = (unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
            handle = install_processors(unet, self.processors)
            unet.encoder_hid_proj = self.projection
            unet.config.encoder_hid_dim_type = "ip_image_proj"  # what load_ip_adapter sets
            try:
                pipe.set_ip_adapter_scale(scale)
                yield self
            finally:
                handle.remove()
                unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = previous

        return block()

    def detach(self) -> None:
        """Free the weights (the pipeline itself was restored when they were loaded)."""
        self.models.attachments.pop(self.key, None)
        self.processors = {}
        self.projection = self.image_encoder = None


def _load_clip_vision(source: str, *, local_files_only: bool) -> Any:
    from storycast.identity.image_encoder import load_image_encoder

    return load_image_encoder(
        source,
        local_files_only=local_files_only,
        what="IP-Adapter image encoder",
        point_at="set image_encoder (--set image_encoder=...) to",
    )


def attach_ip_adapter(models: LoadedModels, settings: IPAdapterSettings) -> AttachedIPAdapter:
    """IP-Adapter (SDXL, global image embeddings) on ``models`` through ``pipe.load_ip_adapter``, loaded once per
    loaded models and shared. The tiny and random-weight presets resolve "auto" to random weights of the
    architecture (:func:`~storycast.adapters.tiny.tiny_ip_adapter_weights`, a random CLIP vision tower), given to
    the same loader as a state dict.

    Raises:
        MissingWeightsError: The weights or the image encoder are not on this machine and cannot be downloaded.
        ModelLoadError: The file is not a global-embedding IP-Adapter, or it reads embeddings of another width
            than the image encoder gives.
    """
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection
    from diffusers.utils import logging as diffusers_logging

    from storycast.errors import MissingWeightsError, ModelLoadError
    from storycast.models.checkpoints import first_line, missing_checkpoint_message

    key = ("ip-adapter", f"{settings.source}|{settings.subfolder}|{settings.file}|{settings.image_encoder}")
    if key in models.attachments:
        return models.attachments[key]
    pipe, facts = models.pipeline, models.facts
    unet = pipe.unet
    synthetic = settings.source == "auto" and (facts.tiny or facts.random)
    if settings.image_encoder == "auto" and synthetic:
        from storycast.adapters.tiny import random_vit_bigg_image_encoder
        from storycast.identity.image_encoder import tiny_image_encoder

        seed = models.spec.seed
        encoder = tiny_image_encoder(seed) if facts.tiny else random_vit_bigg_image_encoder(seed)
    else:
        encoder = _load_clip_vision(settings.encoder_source(), local_files_only=models.spec.local_files_only)
    encoder = encoder.to(device=models.aux_device, dtype=unet.dtype)  # --aux-device
    if synthetic:
        from storycast.adapters.tiny import tiny_ip_adapter_weights

        weights: Any = tiny_ip_adapter_weights(unet, encoder.config.projection_dim, models.spec.seed)
        where, subfolder, file = weights, None, None
        source = "random (ip-adapter_sdxl layout)"
    else:
        where, subfolder, file = settings.location()
        source = f"{where}:{subfolder}/{file}" if subfolder else f"{where}:{file}"

    saved_processors = dict(unet.attn_processors)
    saved = (unet.encoder_hid_proj, unet.config.encoder_hid_dim_type, pipe.image_encoder, pipe.feature_extractor)
    verbosity = diffusers_logging.get_verbosity()
    try:
        # Our encoder registered first, so the loader neither loads one nor warns that it did not; and quiet: it
        # casts the UNet with ModelMixin.to, which warns about fp32 modules the UNet does not have.
        pipe.register_modules(image_encoder=encoder)
        diffusers_logging.set_verbosity_error()
        pipe.load_ip_adapter(
            where, subfolder=subfolder, weight_name=file, local_files_only=models.spec.local_files_only
        )
        processors = {
            name: processor
            for name, processor in unet.attn_processors.items()
            if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))
        }
        projection = unet.encoder_hid_proj
    except OSError as err:
        raise MissingWeightsError(
            missing_checkpoint_message(
                "IP-Adapter", source, "set ip_adapter (--set ip_adapter=...) to", first_line(err)
            )
        ) from None
    except (KeyError, ValueError, RuntimeError) as err:
        raise ModelLoadError(
            f"'{source}' could not be read as IP-Adapter weights for this UNet ({first_line(err)}). Fix: point "
            f"ip_adapter at an ip-adapter_sdxl file for an SDXL UNet."
        ) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        unet.set_attn_processor(saved_processors)
        unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = saved[0], saved[1]
        pipe.register_modules(image_encoder=saved[2], feature_extractor=saved[3])
    layer = projection.image_projection_layers[0]
    if not isinstance(layer, ImageProjection):
        raise ModelLoadError(
            f"'{source}' is an IP-Adapter of another kind ({type(layer).__name__}); this needs the global-embedding "
            f"IP-Adapter. Fix: --set ip_adapter_file=ip-adapter_sdxl.safetensors."
        )
    if layer.image_embeds.in_features != encoder.config.projection_dim:
        raise ModelLoadError(
            f"the IP-Adapter weights {source} read {layer.image_embeds.in_features}-wide image embeddings, the image "
            f"encoder gives {encoder.config.projection_dim}. Fix: set image_encoder (--set image_encoder=...) to the "
            f"encoder the weights were trained with (ip-adapter_sdxl: ViT-bigG/14, 1280; *_vit-h: ViT-H/14, 1024)."
        )
    attached = AttachedIPAdapter(models, key, processors, projection, encoder.eval(), source)
    models.attachments[key] = attached
    return attached

"""Adapters attached to loaded models: PhotoMaker, ControlNets, IP-Adapter. Each attaches once per loaded models
(methods share it through ``LoadedModels.attachments``) and has a ``detach()`` that undoes what attaching did.

The tiny and random-weight presets resolve their own adapter weights here ("auto" gives them random
weights of the right architecture), so methods never ask which preset they run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from storycast.settings import MethodSettings, check_range, setting

if TYPE_CHECKING:
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter
    from storycast.models.loading import LoadedModels

PHOTOMAKER_REPO = "TencentARC/PhotoMaker"
PHOTOMAKER_V2_REPO = "TencentARC/PhotoMaker-V2"
PHOTOMAKER_V1_FILE = "photomaker-v1.bin"
PHOTOMAKER_V2_FILE = "photomaker-v2.bin"


class Attachment(Protocol):
    """Something attached to loaded models."""

    def detach(self) -> None: ...


@dataclass(frozen=True)
class PhotoMakerSettings(MethodSettings):
    """PhotoMaker (identity conditioning through the class word's token): v1, or v2 where a method reads it."""

    source: str = setting(
        "auto",
        f"PhotoMaker weights: a Hub id, folder or file. 'auto': {PHOTOMAKER_REPO} ({PHOTOMAKER_V2_REPO} when the "
        f"file is {PHOTOMAKER_V2_FILE}), or random weights of the same architecture for the tiny and random-weight "
        "presets.",
        flat="photomaker",
    )
    file: str = setting(
        PHOTOMAKER_V1_FILE,
        f"File name inside a Hub repo or folder: {PHOTOMAKER_V1_FILE} (v1) or {PHOTOMAKER_V2_FILE} (v2; with "
        f"photomaker={PHOTOMAKER_V2_REPO} or auto). The version used is the file's, read from its keys.",
        flat="photomaker_file",
    )

    def validate(self) -> None:
        from storycast.errors import SettingsError

        official = {PHOTOMAKER_REPO.lower(): PHOTOMAKER_V1_FILE, PHOTOMAKER_V2_REPO.lower(): PHOTOMAKER_V2_FILE}
        expected = official.get(self.source.lower())
        if expected is not None and self.file in (PHOTOMAKER_V1_FILE, PHOTOMAKER_V2_FILE) and self.file != expected:
            right_repo = PHOTOMAKER_V2_REPO if self.file == PHOTOMAKER_V2_FILE else PHOTOMAKER_REPO
            raise SettingsError(
                f"photomaker={self.source} holds {expected}, not {self.file}. Fix: --set photomaker={right_repo} "
                f"(or auto) for {self.file}, or --set photomaker_file={expected}."
            )

    def expected_version(self) -> str:
        """The version these settings name, before anything is loaded: "v2" when the file (or a file given as
        ``source``) is named like ``photomaker-v2``, else "v1". What loads decides (its keys); methods check
        again then."""
        import re
        from pathlib import PurePath

        source = PurePath(self.source)
        name = source.name if source.suffix in (".bin", ".safetensors") else self.file
        return "v2" if re.search(r"v2", PurePath(name).stem, flags=re.IGNORECASE) else "v1"

    def location(self) -> str:
        """Where the weights come from for real presets: ``source``, or for 'auto' the official repo of the file."""
        if self.source != "auto":
            return self.source
        return PHOTOMAKER_V2_REPO if self.expected_version() == "v2" else PHOTOMAKER_REPO


@dataclass(frozen=True)
class ControlNetSettings(MethodSettings):
    """A ControlNet conditioning the base passes on each frame's ``control_image``."""

    source: str | None = setting(
        None,
        "A ControlNet for the base model (Hub id or folder; 'tiny' builds a random one for the tiny presets) that "
        "conditions the plain passes on each frame's control_image; frames without one draw unconditioned.",
        flat="controlnet",
    )
    scale: float = setting(
        0.8, "Conditioning scale of the ControlNet (IdentityStory's authors use 0.8).", flat="controlnet_scale"
    )

    def validate(self) -> None:
        check_range("controlnet_scale", self.scale, 0)


def _active_loras(models: LoadedModels) -> dict[str, float]:
    from storycast.models.loading import active_loras

    return active_loras(models)


def attach_photomaker(
    models: LoadedModels, settings: PhotoMakerSettings, *, versions: tuple[str, ...] = ("v1",)
) -> PhotoMakerAdapter:
    """PhotoMaker on ``models`` (SDXL), loaded on first use and shared by every method on these models.

    ``versions`` are the PhotoMaker versions the calling method reads (only ``photomaker`` reads v2); the tiny and
    random-weight presets get random weights of the version the settings name (:meth:`PhotoMakerSettings.
    expected_version`).

    Raises:
        ModelLoadError: The loaded weights are of a version the method does not read.
    """
    from storycast.identity.photomaker_adapter import PhotoMakerAdapter

    key = ("photomaker", f"{settings.source}:{settings.file}")
    if key in models.attachments:
        return _check_version(models.attachments[key], settings, versions)
    pipe = models.pipeline
    facts = models.facts
    if settings.source == "auto" and (facts.tiny or facts.random):
        from storycast.identity.photomaker import PhotoMakerConfig
        from storycast.identity.photomaker_v2 import PhotoMakerV2Config
        from storycast.models.tiny import tiny_photomaker_v2_weights, tiny_photomaker_weights

        # Random weights for random models: the tiny encoder, or the full-size one for the full-size random
        # presets that benchmarks measure (LoRA rank 64: the official file's size fits that rank).
        v2 = settings.expected_version() == "v2"
        kind = PhotoMakerV2Config if v2 else PhotoMakerConfig
        config = kind.tiny() if facts.tiny else kind.vit_l14()
        rank = 4 if facts.tiny else 64
        build = tiny_photomaker_v2_weights if v2 else tiny_photomaker_weights
        weights = build(pipe.unet, seed=models.spec.seed, rank=rank, config=config)
        adapter = PhotoMakerAdapter.load(
            pipe, weights, config=config, base_adapters=_active_loras(models), device=models.device,
            vision_device=models.aux_device,
        )  # fmt: skip
    else:
        adapter = PhotoMakerAdapter.load(
            pipe,
            settings.location(),
            weight_name=settings.file,
            local_files_only=models.spec.local_files_only,
            base_adapters=_active_loras(models),
            device=models.device,
            vision_device=models.aux_device,
        )
    models.attachments[key] = adapter
    return _check_version(adapter, settings, versions)


def _check_version(adapter: PhotoMakerAdapter, settings: PhotoMakerSettings, versions: tuple[str, ...]) -> Any:
    if adapter.version in versions:
        return adapter
    from storycast.errors import ModelLoadError

    raise ModelLoadError(
        f"the PhotoMaker weights '{settings.location()}' ({settings.file}) are PhotoMaker {adapter.version}, and this "
        f"method reads PhotoMaker {' or '.join(versions)} only. Fix: --set photomaker_file={PHOTOMAKER_V1_FILE} "
        f"--set photomaker=auto (or {PHOTOMAKER_REPO}); PhotoMaker v2 is read by --method photomaker."
    )


@dataclass
class AttachedControlNet:
    """A ControlNet held for loaded models; ``detach`` frees it."""

    model: Any
    models: LoadedModels
    key: tuple[str, str]

    def detach(self) -> None:
        self.models.attachments.pop(self.key, None)
        self.model = None


def attach_controlnet(models: LoadedModels, source: str) -> AttachedControlNet:
    """A ControlNet from a Hub id or folder, on the models' device and dtype; "tiny" makes a random one from the
    tiny UNet's config (tests, demos). Loaded once per loaded models."""
    import torch
    from diffusers import ControlNetModel

    key = ("controlnet", source)
    if key in models.attachments:
        return models.attachments[key]
    unet = models.pipeline.unet
    if source == "tiny":
        from storycast.models.tiny import tiny_components
        from storycast.utils.torch_utils import seeded

        # From a fresh tiny UNet: the live one may carry LoRA layers that from_unet cannot copy.
        with seeded(models.spec.seed + 20):
            fresh_unet = tiny_components(models.family, models.spec.seed)["unet"]
            controlnet = ControlNetModel.from_unet(fresh_unet, conditioning_channels=3)
            # from_unet zero-initialises the output convolutions (a fresh ControlNet changes nothing);
            # random ones make the tiny ControlNet's effect visible, as a trained one's is.
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                torch.nn.init.normal_(conv.weight, std=0.05)
    else:
        from storycast.models.checkpoints import load_checkpoint

        controlnet = load_checkpoint(
            lambda path, offline: ControlNetModel.from_pretrained(path, local_files_only=offline),
            source,
            what="ControlNet",
            point_at="set the controlnet setting (--set controlnet=...) to",
            local_files_only=models.spec.local_files_only,
        )
    attached = AttachedControlNet(controlnet.to(device=models.device, dtype=unet.dtype).eval(), models, key)
    models.attachments[key] = attached
    return attached


@dataclass
class AttachedInjector:
    """Storynizor's ID-Injector and its image encoder, held for loaded models; ``detach`` frees them (the
    identity branch itself is attention processors, installed per call with their own handle)."""

    injector: Any
    image_encoder: Any
    source: str
    models: LoadedModels
    key: tuple[str, str]
    lora: bool = False
    """The checkpoint's stage-2 LoRA is on the UNet (adapter ``storynizor``)."""

    def detach(self) -> None:
        self.models.attachments.pop(self.key, None)
        if self.lora:
            from storycast.identity.id_injector import LORA_ADAPTER

            unet = self.models.pipeline.unet
            unet.delete_adapters(LORA_ADAPTER)
            _restore_adapters(self.models)
            self.lora = False
        self.injector = self.image_encoder = None


def _restore_adapters(models: LoadedModels, extra: dict[str, float] | None = None) -> None:
    """The models' own LoRAs (and ``extra``) active at their scales; none: LoRA layers off."""
    active = {**_active_loras(models), **(extra or {})}
    unet = models.pipeline.unet
    if active:
        unet.set_adapters(list(active), list(active.values()))
    elif hasattr(unet, "disable_lora") and getattr(unet, "peft_config", None):
        unet.disable_lora()


def attach_id_injector(
    models: LoadedModels, weights: str, image_encoder: str, *, auto_weights: str
) -> AttachedInjector:
    """The ID-Injector of ``weights`` (``auto_weights`` for "auto") and its CLIP image encoder on ``models``,
    loaded once. The tiny and random-weight presets resolve "auto" to random weights of the architecture: an
    IP-Adapter-Plus file in the official layout (tiny) or the full-size geometry (random), read by the same
    loader as real files."""
    import torch

    from storycast.identity import image_encoder as encoders
    from storycast.identity.id_injector import InjectorConfig, build_injector, read_injector_weights

    key = ("id-injector", f"{weights}|{image_encoder}")
    if key in models.attachments:
        return models.attachments[key]
    unet = models.pipeline.unet
    facts = models.facts
    synthetic = weights == "auto" and (facts.tiny or facts.random)
    if image_encoder == "auto" and (facts.tiny or facts.random):
        encoder = (
            encoders.tiny_image_encoder(models.spec.seed) if facts.tiny else encoders.vit_h14_random(models.spec.seed)
        )
    else:
        encoder = None
    if synthetic:
        from storycast.models.tiny import tiny_ip_adapter_plus_weights

        assert encoder is not None
        if facts.tiny:
            state = tiny_ip_adapter_plus_weights(unet, encoder.config.hidden_size, models.spec.seed)
            loaded = read_injector_weights(state, unet)
            source = "random (tiny IP-Adapter-Plus layout)"
        else:
            from storycast.identity.id_injector import IDInjector
            from storycast.identity.resampler import ResamplerConfig
            from storycast.utils.torch_utils import seeded

            width = unet.config.cross_attention_dim
            geometry = ResamplerConfig(dim=width, heads=width // 64, output_dim=width)  # IP-Adapter-Plus's
            with seeded(models.spec.seed + 40):
                random_injector = IDInjector.for_unet(unet, InjectorConfig(geometry))
            loaded = read_injector_weights(random_injector.checkpoint_state(), unet)
            source = "random (IP-Adapter-Plus geometry)"
    else:
        source = auto_weights if weights == "auto" else weights
        loaded = read_injector_weights(source, unet, local_files_only=models.spec.local_files_only)
    injector = build_injector(loaded, unet)
    if encoder is None:
        named = image_encoder if image_encoder != "auto" else loaded.config.image_encoder
        from storycast.models.presets import VIT_H_ENCODER

        encoder = encoders.load_image_encoder(named or VIT_H_ENCODER, local_files_only=models.spec.local_files_only)
    features = encoder.config.hidden_size
    if features != injector.config.resampler.embedding_dim:
        from storycast.errors import ModelLoadError

        raise ModelLoadError(
            f"the ID-Injector weights {source} read {injector.config.resampler.embedding_dim}-wide image features, "
            f"the image encoder gives {features}. Fix: set image_encoder (--set injector.image_encoder=...) to the "
            f"encoder the weights were trained with (IP-Adapter-Plus: ViT-H/14, 1280)."
        )
    if loaded.lora:
        from storycast.identity.id_injector import LORA_ADAPTER, add_storynizor_lora

        geometry = loaded.config.extra["lora"]
        add_storynizor_lora(unet, int(geometry["rank"]), float(geometry["alpha"]), loaded.lora, source=source)
        torch.nn.Module.to(unet, device=models.device, dtype=unet.dtype)  # the new LoRA layers too, quietly
        _restore_adapters(models, {LORA_ADAPTER: 1.0})
    attached = AttachedInjector(
        injector.to(device=models.device, dtype=unet.dtype).eval(),
        encoder.to(device=models.device, dtype=unet.dtype).eval(),
        source,
        models,
        key,
        lora=bool(loaded.lora),
    )
    models.attachments[key] = attached
    return attached


def detach_all(models: LoadedModels) -> None:
    """Detach every adapter from ``models`` (the base pipeline is as loaded again)."""
    for attachment in list(models.attachments.values()):
        attachment.detach()
    models.attachments.clear()


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
    architecture (:func:`~storycast.models.tiny.tiny_ip_adapter_weights`, a random CLIP vision tower), given to
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
        from storycast.identity.image_encoder import tiny_image_encoder
        from storycast.models.tiny import random_vit_bigg_image_encoder

        seed = models.spec.seed
        encoder = tiny_image_encoder(seed) if facts.tiny else random_vit_bigg_image_encoder(seed)
    else:
        encoder = _load_clip_vision(settings.encoder_source(), local_files_only=models.spec.local_files_only)
    encoder = encoder.to(device=models.aux_device, dtype=unet.dtype)  # --aux-device
    if synthetic:
        from storycast.models.tiny import tiny_ip_adapter_weights

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

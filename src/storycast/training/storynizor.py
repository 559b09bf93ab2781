"""One Storynizor training step: batches from character sets, the trained forward pass, the loss.

Stage 1 trains the ID-Injector alone on single images, each its own reference under strong augmentation.
Stage 2 trains on groups of N frames of one character set drawn as one batch with AMSA, every frame conditioned
on another frame's reference of the same character (SRS), with the mask losses, and adds a LoRA on the up-block
self-attention. During training the masks AMSA and the injector use are the ground-truth ones (teacher forcing;
``docs/training.md`` says why), and the attention-mask term teaches the class words' maps to find them, which is
what the auto-masks read at inference.

Everything random in a step comes from the step's generator, derived from (seed, step, micro-batch, process):
a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storycast.attention.automask import AutoMaskState, install_automask_attention
from storycast.attention.character_masks import CharacterMasks, word_token_positions
from storycast.attention.injection import IdentityInjectionState, install_identity_injection
from storycast.data.format import CharacterSet
from storycast.pipelines.guidance import Guidance
from storycast.training.losses import attention_mask_alignment, diffusion_loss, masked_feature_consistency
from storycast.training.settings import StorynizorTrainSettings
from storycast.training.shuffle import drop_conditions, shuffled_references

MASK_LEVEL = 2
"""Resolution level of the class-word maps the alignment term trains (the method's default mask_level)."""


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    """The random stream of one micro-batch of one process (a fixed mix of the four numbers)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 10_007 + micro * 101 + process) % 2**63)


# -- batches --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What one forward pass needs, on the CPU.

    Attributes:
        pixels: (n, 3, R, R) images in [-1, 1].
        masks: (frame, character) -> (R, R) float mask in {0, 1}.
        characters: Per frame, the ids of the characters it shows.
        captions: Per frame, its caption ("" when the text is dropped).
        words: Character id -> class word.
        references: Reference images (PIL), one per (frame, character) that has one.
        reference_of: (frame, character) -> index in ``references``; the frames whose image is dropped map to a
            zero image instead (index -1).
        group: The frames are one group (stage 2: one timestep, shared attention).
    """

    pixels: torch.Tensor
    masks: dict[tuple[int, str], torch.Tensor]
    characters: list[tuple[str, ...]]
    captions: list[str]
    words: dict[str, str]
    references: list[Any] = field(default_factory=list)
    reference_of: dict[tuple[int, str], int] = field(default_factory=dict)
    group: bool = False


def square(image: Any, side: int, *, resample: Any = None) -> Any:
    """Shorter side to ``side``, centre crop (what diffusers' training scripts do at evaluation)."""
    from PIL import Image

    resample = resample if resample is not None else Image.Resampling.BICUBIC
    scale = side / min(image.size)
    resized = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))), resample)
    left, top = (resized.width - side) // 2, (resized.height - side) // 2
    return resized.crop((left, top, left + side, top + side))


def augmented(image: Any, generator: torch.Generator) -> Any:
    """Strong augmentation of a self-reference (stage 1): random resized crop 0.8-1.0, horizontal flip, colour
    jitter +-20 % (the research notes' recipe), drawn from ``generator``."""
    from PIL import Image, ImageEnhance

    draws = torch.rand(6, generator=generator).tolist()
    share = 0.8 + 0.2 * draws[0]
    width, height = image.size
    crop_w, crop_h = max(1, round(width * share)), max(1, round(height * share))
    left, top = round((width - crop_w) * draws[1]), round((height - crop_h) * draws[2])
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if draws[3] < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(0.8 + 0.4 * draws[4])
    return ImageEnhance.Color(image).enhance(0.8 + 0.4 * draws[5])


def _pixels(images: Sequence[Any], side: int) -> torch.Tensor:
    arrays = [np.asarray(square(image.convert("RGB"), side), dtype=np.float32) / 127.5 - 1.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _mask(mask: Any, side: int) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(
        np.asarray(square(mask.convert("L"), side, resample=Image.Resampling.NEAREST)) > 127
    ).float()


def group_batch(row: CharacterSet, settings: StorynizorTrainSettings, generator: torch.Generator) -> Batch:
    """Stage 2: N random frames of one set, each conditioned on another frame's reference of the same character
    (SRS), with IP-Adapter's conditioning drop."""
    from storycast.identity.reference_crops import mask_crop

    chosen = torch.randperm(len(row.images), generator=generator)[: settings.frames].tolist()
    images = [row.images[i] for i in chosen]
    characters = [tuple(row.image_characters[i]) for i in chosen]
    masks_pil = [dict(zip(row.image_characters[i], row.masks[i], strict=True)) for i in chosen]
    if settings.srs:
        sources = shuffled_references(characters, generator)
    else:
        sources = {(f, c): f for f, names in enumerate(characters) for c in names}
    drop_image, drop_text = drop_conditions(
        len(chosen), settings.drop.image, settings.drop.text, settings.drop.both, generator
    )
    batch = Batch(
        _pixels(images, settings.resolution),
        {(f, c): _mask(m, settings.resolution) for f, frame in enumerate(masks_pil) for c, m in frame.items()},
        characters,
        ["" if drop else row.captions[i] for i, drop in zip(chosen, drop_text, strict=True)],
        dict(row.characters),
        group=True,
    )
    for (frame, character), source in sorted(sources.items()):
        if drop_image[frame]:
            batch.reference_of[(frame, character)] = -1
            continue
        photo = images[source]
        if settings.reference_crop == "mask":
            mask = torch.from_numpy(np.asarray(masks_pil[source][character].convert("L").resize(photo.size)) > 127)
            photo = mask_crop(photo, mask) or photo
        batch.reference_of[(frame, character)] = len(batch.references)
        batch.references.append(photo)
    return batch


def image_batch(
    items: Sequence[tuple[CharacterSet, int]], settings: StorynizorTrainSettings, generator: torch.Generator
) -> Batch:
    """Stage 1: single images, each its own (augmented) reference, with the conditioning drop."""
    from storycast.identity.reference_crops import mask_crop

    drop_image, drop_text = drop_conditions(
        len(items), settings.drop.image, settings.drop.text, settings.drop.both, generator
    )
    images = [row.images[i] for row, i in items]
    batch = Batch(
        _pixels(images, settings.resolution),
        {},
        [tuple(row.image_characters[i]) for row, i in items],
        ["" if drop else row.captions[i] for (row, i), drop in zip(items, drop_text, strict=True)],
        {c: w for row, _ in items for c, w in row.characters},
    )
    for frame, (row, i) in enumerate(items):
        for character, mask in zip(row.image_characters[i], row.masks[i], strict=True):
            batch.masks[(frame, character)] = _mask(mask, settings.resolution)
            if drop_image[frame]:
                batch.reference_of[(frame, character)] = -1
                continue
            photo = row.images[i]
            if settings.reference_crop == "mask":
                inside = torch.from_numpy(np.asarray(mask.convert("L").resize(photo.size)) > 127)
                photo = mask_crop(photo, inside) or photo
            batch.reference_of[(frame, character)] = len(batch.references)
            batch.references.append(augmented(photo, generator))
    return batch


# -- the trained forward pass ---------------------------------------------------------------------------------


class StorynizorTrainable(nn.Module):
    """The UNet (frozen, with the stage-2 LoRA) and the ID-Injector, run with AMSA and the identity branch.

    Only this module goes through ``accelerator.prepare`` (its trainable parameters are synced across processes);
    the VAE, the text encoder and the image encoder stay outside, frozen.
    """

    def __init__(self, unet: nn.Module, injector: nn.Module, *, amsa: bool):
        super().__init__()
        self.unet = unet
        self.injector = injector
        self.amsa = amsa

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: Mapping[str, Any],
        features: torch.Tensor,
        zero_features: torch.Tensor,
        batch: Batch,
        positions: Sequence[Mapping[str, Sequence[int]]],
    ) -> tuple[torch.Tensor, dict[tuple[int, str], torch.Tensor]]:
        """The UNet's prediction and the class words' (differentiable) maps at ``MASK_LEVEL``, per (frame, character).
        ``text`` is the captions' conditioning as the UNet takes it (``TextConditioning.denoiser_inputs``: the
        hidden states, and SDXL's pooled embedding and size ids)."""
        frames = noisy.shape[0]
        latent_size = tuple(noisy.shape[-2:])
        tokens = self.injector.resampler(torch.cat([features, zero_features]))  # (refs + 1, q, D)
        zero = tokens[-1:]
        identity = {
            key: (zero if index < 0 else tokens[index : index + 1]) for key, index in batch.reference_of.items()
        }
        truth = CharacterMasks(batch.characters, latent_size)
        truth.set_fixed(
            {key: F.interpolate(m[None, None], size=latent_size, mode="area")[0, 0] for key, m in batch.masks.items()}
        )
        recorder = CharacterMasks(batch.characters, latent_size)
        store = recorder.record(positions, (latent_size[0] >> MASK_LEVEL, latent_size[1] >> MASK_LEVEL))
        injection = IdentityInjectionState(
            frames=frames, guidance=False, characters=batch.characters, identity=identity, character_masks=truth
        )
        amsa = AutoMaskState(frames=frames, guidance=False, character_masks=truth, dropout=0.0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                install_identity_injection(self.unet, injection, self.injector, store=store, record_level=MASK_LEVEL)
            )
            if self.amsa and batch.group:
                stack.enter_context(install_automask_attention(self.unet, amsa))
            prediction = self.unet(noisy, timesteps, **text).sample
        return prediction, recorder.recorded_maps()


@dataclass
class FrozenParts:
    """The frozen models a step uses outside the trained module."""

    vae: Any
    backbone: Any
    """The base model's family (``pipelines.families``): encodes the captions as sampling does (SDXL: both text
    encoders, the pooled embedding and the size ids)."""
    tokenizer: Any
    image_encoder: Any
    scheduler: Any
    """A ``DDPMScheduler`` with the base model's noise schedule."""


def training_loss(
    module: nn.Module,
    frozen: FrozenParts,
    batch: Batch,
    settings: StorynizorTrainSettings,
    generator: torch.Generator,
    device: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's loss and its terms (floats, for logging)."""
    from storycast.identity.image_encoder import patch_features

    dtype = next(frozen.vae.parameters()).dtype
    with torch.no_grad():
        pixels = batch.pixels.to(device, dtype)
        latents = frozen.vae.encode(pixels).latent_dist.sample(generator=generator) * frozen.vae.config.scaling_factor
        height, width = pixels.shape[-2:]
        text = frozen.backbone.encode(batch.captions, None, width=width, height=height, guidance=Guidance(None))
        text = text.cond.denoiser_inputs()
        references = batch.references or []
        if references:
            features, zero = patch_features(frozen.image_encoder, references)
            zero = zero[:1]
        else:
            blank = _blank_features(frozen.image_encoder)
            features, zero = blank[:0], blank
    frames = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    if settings.noise_offset:
        noise = noise + settings.noise_offset * torch.randn((frames, latents.shape[1], 1, 1), generator=generator).to(
            noise
        )
    count = frozen.scheduler.config.num_train_timesteps
    if batch.group:
        timesteps = torch.randint(0, count, (1,), generator=generator).repeat(frames)
    else:
        timesteps = torch.randint(0, count, (frames,), generator=generator)
    timesteps = timesteps.to(device)
    noisy = frozen.scheduler.add_noise(latents, noise, timesteps)
    words = [[batch.words[c] for c in names] for names in batch.characters]
    positions = [
        dict(zip(names, word_token_positions(frozen.tokenizer, caption, frame_words), strict=True))
        for names, caption, frame_words in zip(batch.characters, batch.captions, words, strict=True)
    ]
    prediction, maps = module(noisy, timesteps, text, features.to(device), zero.to(device), batch, positions)
    if frozen.scheduler.config.prediction_type == "v_prediction":
        target = frozen.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = diffusion_loss(prediction, target)
    terms = {"diffusion": float(loss.detach())}
    if batch.group and settings.loss.mask_alignment > 0 and maps:
        keys = sorted(maps)
        grid = maps[keys[0]].shape
        truth = torch.stack(
            [F.interpolate(batch.masks[k][None, None], size=grid, mode="area")[0, 0] for k in keys]
        ).to(device)
        alignment = attention_mask_alignment(torch.stack([maps[k] for k in keys]), truth)
        loss = loss + settings.loss.mask_alignment * alignment
        terms["mask_alignment"] = float(alignment.detach())
    if batch.group and settings.loss.perceptual > 0 and int(timesteps[0]) <= settings.loss.perceptual_max_timestep:
        perceptual = _perceptual(frozen, noisy, prediction, timesteps, batch, device)
        loss = loss + settings.loss.perceptual * perceptual
        terms["perceptual"] = float(perceptual.detach())
    terms["loss"] = float(loss.detach())
    return loss, terms


def _blank_features(encoder: Any) -> torch.Tensor:
    """The image encoder's features of one all-zero pixel tensor (the uncond identity)."""
    parameter = next(encoder.parameters())
    size = encoder.config.image_size
    pixels = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    return encoder(pixels, output_hidden_states=True).hidden_states[-2].float()


def _perceptual(
    frozen: FrozenParts,
    noisy: torch.Tensor,
    prediction: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Batch,
    device: Any,
) -> torch.Tensor:
    """Term (b): image-encoder patch features of the decoded x0-predictions, pooled inside each frame's mask of
    a character, pulled together over the frames showing it."""
    from storycast.identity.image_embedding import CLIP_MEAN, CLIP_STD

    alphas = frozen.scheduler.alphas_cumprod.to(device)[timesteps].float().view(-1, 1, 1, 1)
    if frozen.scheduler.config.prediction_type == "v_prediction":
        x0 = alphas.sqrt() * noisy - (1 - alphas).sqrt() * prediction
    else:
        x0 = (noisy - (1 - alphas).sqrt() * prediction) / alphas.sqrt()
    vae_dtype = next(frozen.vae.parameters()).dtype
    decoded = frozen.vae.decode((x0 / frozen.vae.config.scaling_factor).to(vae_dtype)).sample.float()
    encoder = frozen.image_encoder
    size = encoder.config.image_size
    pixels = (F.interpolate(decoded, size=(size, size), mode="bilinear", align_corners=False) + 1) / 2
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    hidden = encoder(((pixels - mean) / std).to(next(encoder.parameters()).dtype), output_hidden_states=True)
    patches = hidden.hidden_states[-2][:, 1:].float()  # the patch tokens, without CLS
    side = int(patches.shape[1] ** 0.5)
    terms = []
    for character in sorted({c for names in batch.characters for c in names}):
        frames = [f for f, names in enumerate(batch.characters) if character in names]
        weights = torch.stack(
            [
                F.interpolate(batch.masks[(f, character)][None, None], size=(side, side), mode="area").reshape(-1)
                for f in frames
            ]
        ).to(device)
        terms.append(masked_feature_consistency(patches[frames], weights))
    return torch.stack(terms).mean() if terms else patches.sum() * 0

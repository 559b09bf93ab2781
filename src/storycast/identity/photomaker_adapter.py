"""PhotoMaker (v1 or v2) attached to an SDXL pipeline: ID encoder, switchable UNet LoRA and the trigger word.

One UNet serves both the plain passes (LoRA off) and the identity passes (LoRA on): the LoRA is loaded
unfused through diffusers/peft and switched per call, so no second SDXL UNet is held in memory.

The pipeline's tokenizers are never changed: the trigger word lives in the adapter's own copy of
tokenizer 1, used only to find the class token of identity prompts (whose trigger is removed before
encoding). Base passes, and other methods on the same loaded models, never see the trigger token, so
"img" in a prompt ("an img badge", "imgur") is ordinary text everywhere. :meth:`PhotoMakerAdapter.detach`
removes the LoRA and the encoder again.

The version is the loaded file's (read from its keys): v1 gives one 2048-d ID embedding per photo
(:meth:`PhotoMakerAdapter.embed`, fused with :meth:`~PhotoMakerAdapter.fuse_identities`); v2 gives two ID tokens
per photo from its pixels and its ArcFace embedding (:meth:`~PhotoMakerAdapter.id_tokens`, fused with
:meth:`~PhotoMakerAdapter.fuse_identity_tokens`, one copy of the class token per ID token).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from storycast.errors import StorycastError
from storycast.identity.image_embedding import clip_preprocess, embed_images
from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder
from storycast.identity.photomaker_loading import (
    PHOTOMAKER_V1_FILE,
    build_photomaker_encoder,
    load_photomaker_state_dict,
)
from storycast.identity.photomaker_prompt import (
    TRIGGER_WORD,
    expand_class_tokens,
    find_class_tokens,
    remove_trigger_word,
)
from storycast.identity.photomaker_v2 import PhotoMakerV2IDEncoder
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.families.sdxl import SDXL, SDXLPromptEncoder
from storycast.utils.imports import require

ADAPTER_NAME = "photomaker"


class PhotoMakerAdapter:
    """PhotoMaker on a ``StableDiffusionXLPipeline``.

    Args:
        pipe: The SDXL pipeline (its UNet gets the LoRA).
        encoder: The ID encoder (v1 or v2), already on ``device``.
        has_lora: Whether the LoRA named ``photomaker`` was loaded into the UNet.
        trigger_word: PhotoMaker's trigger word.
        base_adapters: Other LoRAs (adapter name -> scale) that stay active in every pass, e.g. a style.
        device: Where prompts are encoded and identities fused (the models' device).
        vision_device: Where the CLIP vision tower embeds images (``--aux-device``; default ``device``).
    """

    def __init__(
        self,
        pipe: Any,
        encoder: PhotoMakerIDEncoder | PhotoMakerV2IDEncoder,
        *,
        has_lora: bool,
        trigger_word: str = TRIGGER_WORD,
        base_adapters: Mapping[str, float] | None = None,
        device: Any = None,
        vision_device: Any = None,
    ):
        self.pipe = pipe
        self.encoder = encoder
        self.has_lora = has_lora
        self.trigger_word = trigger_word
        self.base_adapters = dict(base_adapters or {})
        self.device = device if device is not None else pipe.unet.device
        self.vision_device = vision_device if vision_device is not None else self.device
        self.prompts = SDXLPromptEncoder(pipe, self.device)
        self.backbone = SDXL(pipe, self.device)
        """The SDXL pipeline PhotoMaker sits on, seen through its family (what its drawings sample with)."""
        # The adapter's own tokenizer with the trigger word; the pipeline's stay as they are.
        self.trigger_tokenizer = copy.deepcopy(pipe.tokenizer)
        if trigger_word not in self.trigger_tokenizer.get_vocab():
            self.trigger_tokenizer.add_tokens([trigger_word], special_tokens=True)
        self.trigger_token_id = self.trigger_tokenizer.convert_tokens_to_ids(trigger_word)
        self._lora_active = True
        self.set_lora(False)

    @classmethod
    def load(
        cls,
        pipe: Any,
        source: str | Path | Mapping[str, object],
        *,
        weight_name: str = PHOTOMAKER_V1_FILE,
        config: PhotoMakerConfig | None = None,
        local_files_only: bool = False,
        base_adapters: Mapping[str, float] | None = None,
        device: Any = None,
        vision_device: Any = None,
    ) -> PhotoMakerAdapter:
        """Load a PhotoMaker file (path, folder, Hub id or state dict) into ``pipe``; :meth:`detach` undoes it.

        The version (v1 or v2) is the file's, read from its keys; ``config`` is the encoder's geometry (default: the
        official one of that version; a :class:`~storycast.identity.photomaker_v2.PhotoMakerV2Config` for v2).
        """
        device = device if device is not None else pipe.unet.device
        weights = load_photomaker_state_dict(source, weight_name, local_files_only=local_files_only)
        encoder = build_photomaker_encoder(weights.id_encoder, config, dtype=pipe.unet.dtype)
        encoder.to(device=device)
        has_lora = bool(weights.lora_weights)
        if has_lora:
            require("peft", extra="lora", purpose="PhotoMaker's UNet LoRA")
            from diffusers.utils import logging as diffusers_logging

            # The file holds UNet weights only; diffusers would warn that the text encoders got none.
            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()
            try:
                pipe.load_lora_weights(dict(weights.lora_weights), adapter_name=ADAPTER_NAME)
            finally:
                diffusers_logging.set_verbosity(verbosity)
        adapter = cls(
            pipe, encoder, has_lora=has_lora, base_adapters=base_adapters, device=device, vision_device=vision_device
        )
        adapter._vision_to(adapter.vision_device)
        return adapter

    @property
    def version(self) -> str:
        """The loaded file's PhotoMaker version: "v1" or "v2"."""
        return self.encoder.version

    def detach(self) -> None:
        """Remove the LoRA from the UNet (the other LoRAs stay active) and drop the encoder."""
        if self.has_lora:
            self.set_lora(False)
            unet = self.pipe.unet
            unet.delete_adapters(ADAPTER_NAME)
            if self.base_adapters:
                unet.enable_lora()
                unet.set_adapters(list(self.base_adapters), list(self.base_adapters.values()))
            self.has_lora = False
        self.encoder.to("cpu")

    def set_lora(self, enabled: bool) -> None:
        """Switch the PhotoMaker LoRA on (identity passes) or off (plain SDXL passes)."""
        if not self.has_lora or enabled == self._lora_active:
            self._lora_active = enabled
            return
        unet = self.pipe.unet
        active = dict(self.base_adapters)
        if enabled:
            active[ADAPTER_NAME] = 1.0
        if active:
            unet.enable_lora()
            unet.set_adapters(list(active), list(active.values()))
        else:
            unet.disable_lora()
        self._lora_active = enabled

    @contextlib.contextmanager
    def lora(self, enabled: bool = True) -> Iterator[None]:
        """The LoRA switched on (or off) inside the block, and back as it was after it."""
        before = self._lora_active
        self.set_lora(enabled)
        try:
            yield
        finally:
            self.set_lora(before)

    @contextlib.contextmanager
    def fused_lora(self) -> Iterator[None]:
        """The LoRA on inside the block, merged into the UNet's weights (with the base adapters active beside it),
        so each LoRA layer runs one matrix product instead of three; the original weights are put back exactly
        after it (copied back, not un-merged, which would leave fp16 rounding in the weights every time).

        A speed option (identitystory's ``fuse_lora``): the output equals :meth:`lora` within the dtype's rounding.
        """
        if not self.has_lora:
            with self.lora(True):
                yield
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        unet = self.pipe.unet
        with self.lora(True):
            active = [ADAPTER_NAME, *self.base_adapters]
            layers = [
                m for m in unet.modules() if isinstance(m, BaseTunerLayer) and set(m.active_adapters) & set(active)
            ]
            originals = [m.get_base_layer().weight.detach().to("cpu", copy=True) for m in layers]
            unet.fuse_lora(adapter_names=active)
            try:
                yield
            finally:
                with torch.no_grad():
                    for layer, weight in zip(layers, originals, strict=True):
                        layer.get_base_layer().weight.copy_(weight)
                        layer.merged_adapters.clear()

    @torch.no_grad()
    def embed(self, images: Sequence[Any]) -> torch.Tensor:
        """PhotoMaker v1: ID embeddings (n, D) of images, float32 (the candidates of identity discovery, or user
        photos), computed on the vision tower's device and returned on the models'."""
        if not isinstance(self.encoder, PhotoMakerIDEncoder):
            raise StorycastError(
                "these PhotoMaker weights are v2, whose ID embedding of a photo needs its ArcFace embedding too "
                "(PhotoMakerAdapter.id_tokens); this step reads v1 embeddings. Fix: use PhotoMaker v1 "
                "(--set photomaker_file=photomaker-v1.bin --set photomaker=TencentARC/PhotoMaker)."
            )
        self._vision_to(self.vision_device)
        return embed_images(self.encoder, images).to(self.device)

    @torch.no_grad()
    def id_tokens(self, images: Sequence[Any], face_embeddings: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """PhotoMaker v2: ID tokens (n, num_tokens, D), float32 on the models' device, of n photos (PIL) and their
        raw ArcFace embeddings (n, 512) (:meth:`storycast.identity.photomaker_faces.PhotoMakerFaces.embed`).

        The photos are CLIP-preprocessed whole (``CLIPImageProcessor()``, as the official pipeline), not cut to
        the face; the vision tower runs on its device (``--aux-device``).
        """
        if not isinstance(self.encoder, PhotoMakerV2IDEncoder):
            raise StorycastError(
                "id_tokens needs PhotoMaker v2 weights; these are v1. Fix: --set photomaker_file=photomaker-v2.bin "
                "--set photomaker=TencentARC/PhotoMaker-V2, or use embed() for v1."
            )
        if len(images) != len(face_embeddings):
            raise ValueError(f"got {len(images)} photos but {len(face_embeddings)} ArcFace embeddings.")
        self._vision_to(self.vision_device)
        pixels = clip_preprocess(images, self.encoder.config.image_size)
        chunks = [
            self.encoder.embed(p, f).float()
            for p, f in zip(pixels.split(batch_size), face_embeddings.split(batch_size), strict=True)
        ]
        return torch.cat(chunks).to(self.device)

    def park_vision_tower(self) -> None:
        """Move the CLIP vision tower to the CPU until images are embedded again.

        Once the identities are known, drawing frames needs only the small fuse module; parking the
        0.3 B-parameter tower (and v2's 0.2 B-parameter ArcFace branch) keeps PhotoMaker's GPU memory to its LoRA
        and fuse MLP.
        """
        self._vision_to(torch.device("cpu"))

    def _vision_to(self, device: torch.device) -> None:
        modules = [self.encoder.vision_model, self.encoder.visual_projection, self.encoder.visual_projection_2]
        if isinstance(self.encoder, PhotoMakerV2IDEncoder):
            modules.append(self.encoder.qformer_perceiver)
        for module in modules:
            module.to(device)

    def class_token_position(self, prompt_with_trigger: str) -> int:
        """Position of the class token (the word before the trigger) in the encoded prompt, tokenizer 1."""
        tokenizer = self.trigger_tokenizer
        ids = tokenizer(prompt_with_trigger, truncation=True, max_length=tokenizer.model_max_length).input_ids
        tokens = find_class_tokens(
            ids,
            self.trigger_token_id,
            max_length=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return tokens.positions[0]

    @torch.no_grad()
    def encode(
        self, prompts_with_trigger: Sequence[str], negative_prompts: Sequence[str], *, width: int, height: int
    ) -> tuple[GuidancePair, list[int]]:
        """Conditioning of identity prompts (trigger removed) and each prompt's class-token position."""
        positions = [self.class_token_position(p) for p in prompts_with_trigger]
        cleaned = [remove_trigger_word(p, self.trigger_word) for p in prompts_with_trigger]
        return self.prompts(cleaned, negative_prompts, width=width, height=height), positions

    def fuse_identities(
        self,
        plain: GuidancePair,
        triggered: Sequence[Mapping[str, str]],
        identities: Mapping[str, torch.Tensor],
    ) -> GuidancePair | None:
        """``plain``'s cond embeddings with each named character's identity fused into its class token.

        Args:
            plain: The text-only conditioning of the rows (trigger words removed).
            triggered: Per row, character id -> the row's prompt with the trigger after that character's class
                word (which locates its class token).
            identities: Character id -> its (2048,) ID embedding.

        Returns None when no row names a character with an identity (the plain conditioning serves).
        """
        if not any(triggered):
            return None
        embeds = plain.cond.embeds.clone()
        for number, row in enumerate(triggered):
            for character, prompt in row.items():
                position = self._character_position(character, prompt)
                identity = identities[character].to(embeds.device)[None]
                embeds[number : number + 1] = self.fuse(embeds[number : number + 1], [position], identity)
        return GuidancePair(plain.uncond, plain.cond.replace(embeds=embeds))

    def _character_position(self, character: str, prompt_with_trigger: str) -> int:
        try:
            return self.class_token_position(prompt_with_trigger)
        except ValueError:
            raise StorycastError(
                f"the class word of '{character}' must come within the tokenizer's 77 tokens for PhotoMaker "
                f"to attach its identity: '{prompt_with_trigger}'. Fix: shorten the frame's text or the description."
            ) from None

    @torch.no_grad()
    def fuse_identity_tokens(
        self,
        plain: GuidancePair,
        prompt: str,
        triggered: Mapping[str, str],
        identities: Mapping[str, torch.Tensor],
    ) -> GuidancePair | None:
        """PhotoMaker v2's conditioning of one row: ``plain`` (the text-only conditioning of ``prompt``) with a cond
        half encoded from ``prompt`` with each named character's class token repeated once per ID token of its
        identity, each copy fused with its own token (the official ``encode_prompt_with_trigger_word`` followed by
        the ID encoder's fuse). The cond's pooled embedding is that prompt's, as the official pipeline uses after
        the merge step; the uncond half is ``plain``'s.

        Args:
            plain: The text-only conditioning of ``prompt`` (one row).
            prompt: The frame's prompt, without trigger words.
            triggered: Character id -> ``prompt`` with the trigger after that character's class word.
            identities: Character id -> its ID tokens (K, D): 2 per reference photo, photo by photo.

        Returns None when ``triggered`` names nobody.
        """
        if not triggered:
            return None
        characters = list(triggered)
        positions = [self._character_position(c, triggered[c]) for c in characters]
        tokens = [identities[c].reshape(-1, identities[c].shape[-1]) for c in characters]
        try:
            embeds, pooled, spans = self._encode_expanded(prompt, positions, [len(t) for t in tokens])
        except ValueError as err:
            raise StorycastError(f"PhotoMaker v2 cannot attach the identities to '{prompt}': {err}") from None
        mask = torch.zeros(1, embeds.shape[1], dtype=torch.bool)
        for span in spans:
            mask[0, span] = True
        order = sorted(range(len(characters)), key=lambda k: spans[k][0])  # fuse_class_tokens reads tokens in order
        id_embeds = torch.cat([tokens[k] for k in order]).unsqueeze(0).to(embeds.device)
        fused = self.encoder.fuse(embeds, id_embeds, mask)
        cond = plain.cond.replace(embeds=fused.to(plain.cond.embeds.dtype), pooled=pooled.to(plain.cond.pooled.dtype))
        return GuidancePair(plain.uncond, cond)

    @torch.no_grad()
    def _encode_expanded(
        self, prompt: str, positions: Sequence[int], repeats: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Per-token embeddings (1, 77, D) and pooled embedding (1, P) of ``prompt`` with the class tokens at
        ``positions`` repeated (:func:`expand_class_tokens`), encoded as diffusers' SDXL ``encode_prompt`` encodes
        ids (penultimate hidden states of both encoders, pooled output of encoder 2); and the copies' positions.

        The positions are found with tokenizer 1; SDXL's two tokenizers share CLIP's BPE, so they hold for both.
        """
        pipe = self.pipe
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        hidden, pooled, spans = [], None, None
        for tokenizer, text_encoder in pairs:
            if tokenizer is None or text_encoder is None:
                continue
            ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
            expanded = expand_class_tokens(
                ids, positions, repeats, max_length=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id
            )
            spans = spans if spans is not None else expanded.positions
            input_ids = torch.tensor([expanded.input_ids], device=_execution_device(text_encoder))
            out = text_encoder(input_ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        if pooled is None or spans is None:
            raise StorycastError("PhotoMaker needs an SDXL pipeline with its second text encoder (the pooled one).")
        dtype = pipe.text_encoder_2.dtype
        embeds = torch.cat([h.to(self.device) for h in hidden], dim=-1).to(dtype)
        return embeds, pooled.to(self.device, dtype), spans

    @torch.no_grad()
    def fuse(
        self, embeds: torch.Tensor, positions: Sequence[int], identities: torch.Tensor, strength: float = 1.0
    ) -> torch.Tensor:
        """``embeds`` (B, 77, D) with row b's class token moved to fuse(text, identities[b]).

        ``strength`` 1 replaces the token's embedding by the fused one (PhotoMaker); other values move it
        part of the way (or beyond): ``text + strength * (fused - text)``.
        """
        out = embeds.clone()
        for row, (position, identity) in enumerate(zip(positions, identities, strict=True)):
            fused = self.encoder.fuse(embeds[row : row + 1], identity.reshape(-1), [position])
            if strength != 1.0:
                fused = embeds[row : row + 1] + strength * (fused - embeds[row : row + 1])
            out[row : row + 1] = fused
        return out


def _execution_device(module: Any) -> torch.device:
    """Where ``module`` runs (diffusers' offload hooks move it there), as diffusers' ``encode_prompt`` asks."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers
        return next(module.parameters()).device
    return get_module_execution_device(module)

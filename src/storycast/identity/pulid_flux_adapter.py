"""PuLID-FLUX on a loaded FLUX transformer: its weights, the EVA02-CLIP tower, the ID tokens of reference photos, and
the ID branch (:mod:`storycast.identity.pulid_flux_branch`) attached for a draw.

Nothing stays attached between draws: :meth:`PuLIDFluxAdapter.branch` hooks the CA modules after FLUX's blocks and
the handle it returns removes them, so other methods on the same loaded models draw plain FLUX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from storycast.identity.eva_clip import EvaVisionConfig, EvaVisionTower, load_eva_vision_tower
from storycast.identity.pulid_faces import PuLIDFace, eva_pixels
from storycast.identity.pulid_flux import PULID_FLUX_FILE, PuLIDFlux, PuLIDFluxConfig, load_pulid_flux
from storycast.identity.pulid_flux_branch import PuLIDFluxBranch


class PuLIDFluxAdapter:
    """PuLID-FLUX's encoder, CA modules and EVA tower for one FLUX transformer.

    Args:
        transformer: The ``FluxTransformer2DModel`` the branch hooks.
        pulid: The loaded :class:`PuLIDFlux` (its config's block counts are the transformer's).
        eva: The EVA02-CLIP vision tower.
        device: Where the encoder and CA modules run (the transformer's device).
        vision_device: Where the EVA tower runs (``--aux-device``; default ``device``).
    """

    def __init__(
        self, transformer: Any, pulid: PuLIDFlux, eva: EvaVisionTower, *, device: Any, vision_device: Any = None
    ):
        self.transformer = transformer
        self.pulid = pulid.to(device)
        self.vision_device = vision_device if vision_device is not None else device
        self.eva = eva.to(self.vision_device)
        self.device = device

    @classmethod
    def load(
        cls,
        transformer: Any,
        source: str | Path | Mapping[str, torch.Tensor],
        eva_source: str | Path | Mapping[str, object],
        *,
        weight_name: str = PULID_FLUX_FILE,
        config: PuLIDFluxConfig | None = None,
        eva_config: EvaVisionConfig | None = None,
        local_files_only: bool = False,
        device: Any = None,
        vision_device: Any = None,
    ) -> PuLIDFluxAdapter:
        """PuLID-FLUX (a file, folder, Hub id or state dict) and the EVA tower, in the transformer's dtype, each
        checked by key and shape before loading; ``config`` defaults to the official geometry on this transformer's
        block counts and width."""
        c = transformer.config
        width = c.num_attention_heads * c.attention_head_dim
        config = (config or PuLIDFluxConfig.official()).for_transformer(c.num_layers, c.num_single_layers, width)
        dtype = transformer.dtype
        pulid = load_pulid_flux(
            source, config=config, weight_name=weight_name, local_files_only=local_files_only, dtype=dtype
        )
        eva = load_eva_vision_tower(eva_source, config=eva_config, local_files_only=local_files_only, dtype=dtype)
        device = device if device is not None else transformer.device
        return cls(transformer, pulid, eva, device=device, vision_device=vision_device)

    def branch(self) -> PuLIDFluxBranch:
        """The ID branch hooked on the transformer; a handle (``with adapter.branch() as branch: ...`` detaches it)."""
        c = self.pulid.config
        return PuLIDFluxBranch.attach(
            self.transformer, self.pulid.pulid_ca, double_interval=c.double_interval, single_interval=c.single_interval
        )

    @torch.no_grad()
    def id_tokens(self, faces: Sequence[PuLIDFace]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ID tokens (K, D), negative ID tokens (K, D)) of one identity's photos, on the models' device.

        Per photo, ``get_id_embedding``: the EVA embedding L2-normalised, [ArcFace, it] the ID condition, IDFormer
        over it and the five hidden states; with several photos the tokens are averaged (our extension: PuLID-FLUX
        reads one photo). The negative tokens (true CFG's, ``cal_uncond``) are IDFormer's of zeros.
        """
        if not faces:
            raise ValueError("id_tokens needs at least one photo's face")
        # The encoders are shared on the loaded models; a method may have parked them on the CPU once its identities
        # were known (identitystory's offload_encoders): bring them home before reading faces again.
        self.eva.to(self.vision_device)
        self.pulid.pulid_encoder.to(self.device)
        tower = self.eva
        parameter = next(tower.parameters())
        pixels = eva_pixels(torch.stack([f.face for f in faces]), tower.config.image_size)
        embedding, hidden = tower(pixels.to(parameter.device, parameter.dtype))
        embedding = embedding / embedding.norm(2, dim=1, keepdim=True)
        dtype = next(self.pulid.parameters()).dtype
        arcface = torch.stack([f.arcface for f in faces]).to(self.device, dtype)
        condition = torch.cat([arcface, embedding.to(self.device, dtype)], dim=-1)
        hidden = [h.to(self.device, dtype) for h in hidden]
        tokens = self.pulid.id_tokens(condition, hidden).float().mean(0)
        uncond = self.pulid.uncond_id_tokens(condition[:1], [h[:1] for h in hidden]).float()[0]
        return tokens, uncond

    def detach(self) -> None:
        """Nothing is left attached between draws (the branch's handle removes its hooks); the encoders go to the
        CPU."""
        self.pulid.to("cpu")
        self.eva.to("cpu")

"""Decoupled identity cross-attention: IP-Adapter's image branch (``IPAttnProcessor2_0``), per character and
inside that character's mask (Storynizor's ID-Injector, "into specific locations").

On every cross-attention layer: out = attn(Q, K_text, V_text) + scale * sum_c M_c * attn(Q, K_c, V_c), with
K_c = to_k_ip(tokens_c), V_c = to_v_ip(tokens_c), tokens_c the identity tokens of character c (the
resampler's output; in the uncond half, those of a zero image, as IP-Adapter does), and M_c the mask of c
in the frame (:class:`~storycast.attention.character_masks.CharacterMasks`). A frame gets the branches of the
characters it names only. With no mask yet (the first step) or unmasked injection, M_c = 1: the public
IP-Adapter's behaviour. The text attention is untouched, and the branch is added before ``to_out``, where
IP-Adapter adds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from storycast.attention.character_masks import CharacterMasks
from storycast.attention.state import AttentionState
from storycast.attention.token_maps import TokenMapProcessor, TokenMapStore


@dataclass
class IdentityInjectionState(AttentionState):
    """Per-call state of identity injection (see :class:`~storycast.attention.state.AttentionState`).

    Attributes:
        characters: Per frame, the ids of the characters it names.
        identity: Character id -> (halves, n, D) identity tokens ([uncond, cond] with guidance); a (frame,
            character) key gives one frame its own tokens (training: each frame conditioned on another's reference).
        scale: Weight of the identity branch (0: the plain UNet).
        character_masks: Where each character is; None for unmasked injection.
    """

    characters: Sequence[Sequence[str]] = ()
    identity: Mapping[str | tuple[int, str], torch.Tensor] = field(default_factory=dict)
    scale: float = 1.0
    character_masks: CharacterMasks | None = None

    def begin_step(self, index: int, timestep: torch.Tensor) -> None:
        super().begin_step(index, timestep)
        if self.character_masks is not None:
            self.character_masks.refresh()


class IdentityInjection(TokenMapProcessor):
    """The text cross-attention plus each named character's masked identity branch.

    Args:
        state: The call's :class:`IdentityInjectionState`.
        to_k_ip: This layer's identity key projection (bias-free).
        to_v_ip: Its value projection.
        store: Records the class words' maps on this layer too (the masks' resolution), or None.
    """

    state: IdentityInjectionState

    def __init__(
        self,
        state: IdentityInjectionState,
        to_k_ip: torch.nn.Module,
        to_v_ip: torch.nn.Module,
        store: TokenMapStore | None = None,
    ):
        super().__init__(store, state)
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip

    def output_branch(
        self, attn: Any, query: torch.Tensor, hidden: torch.Tensor, attended: torch.Tensor
    ) -> torch.Tensor | None:
        state = self.state
        if state.scale == 0 or not state.identity:
            return None
        state.check_batch(query.shape[0])
        total = torch.zeros_like(attended)
        for frame, characters in enumerate(state.characters):
            rows = [state.row(half, frame) for half in range(state.halves)]
            for character in characters:
                tokens = state.identity.get((frame, character), state.identity.get(character))
                if tokens is None:
                    continue
                out = self._identity_attention(attn, query[rows], tokens.to(query.device, query.dtype))
                weight = self._mask(frame, character, query.shape[1], query.device)
                if weight is not None:
                    out = out * weight.to(out.dtype)[None, :, None]
                total[rows] += state.scale * out
        return total

    def _identity_attention(self, attn: Any, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """attn(Q, to_k_ip(tokens), to_v_ip(tokens)) for (halves, N, inner) queries and (halves, n, D) tokens."""
        halves = query.shape[0]
        key = self.to_k_ip(tokens)
        value = self.to_v_ip(tokens)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(halves, -1, attn.heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        return out.transpose(1, 2).reshape(halves, -1, attn.heads * head_dim)

    def _mask(self, frame: int, character: str, tokens: int, device: Any) -> torch.Tensor | None:
        masks = self.state.character_masks
        if masks is None or not masks.ready:
            return None
        mask = masks.mask(frame, character, tokens, device)
        # A character whose word is not in the prompt has no mask: its branch adds nothing there.
        return torch.zeros(tokens, dtype=torch.bool, device=device) if mask is None else mask


def install_identity_injection(
    unet: Any,
    state: IdentityInjectionState,
    injector: Any,
    *,
    store: TokenMapStore | None = None,
    record_level: int | None = None,
) -> Any:
    """The identity branch on every cross-attention layer of ``injector`` (an
    :class:`~storycast.identity.id_injector.IDInjector`); layers at ``record_level`` also record into ``store``.
    Returns the restoring handle."""
    from storycast.attention.layers import install_processors, select_layers

    processors = {}
    for layer in select_layers(unet, kind="cross"):
        to_k_ip, to_v_ip = injector.projections(layer.name)
        recorder = store if store is not None and layer.level == record_level else None
        processors[layer.processor_key] = IdentityInjection(state, to_k_ip, to_v_ip, recorder)
    return install_processors(unet, processors)

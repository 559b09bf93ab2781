"""EVA02-CLIP-L-14-336's vision tower in torch, as PuLID reads it: the image embedding and the hidden states that feed
IDFormer; keys as the official checkpoint's ``visual.*`` (``QuanSun/EVA-CLIP`` ``EVA02_CLIP_L_336_psz14_s6B.pt``).

transformers has no EVA02-CLIP. The architecture is PuLID's ``eva_clip/eva_vit_model.py`` with
``model_configs/EVA02-CLIP-L-14-336.json`` (1aa2fc7d; facts only, the code is our own): 336 px, 14 px patches, width
1024, 24 blocks of 16 heads of 64; a class token and learned absolute positions; in every block (pre-norm, LayerNorm
eps 1e-6, no layer scale) attention with separate q/k/v projections (biases on q and v only), 2-D rotary positions on
the patch tokens (not the class token) and a LayerNorm on the heads' output before ``proj`` ("sub-LN"), then a SwiGLU
MLP (``w1``, ``w2`` 1024 -> 2730, ``silu(w1 x) * w2 x``, LayerNorm ``ffn_ln``, ``w3``). The embedding is
``head(norm(x)[:, 0])`` (1024 -> 768; ``global_average_pool`` is off). With ``return_hidden`` the tower also returns
the tokens entering blocks 4, 8, 12, 16 and 20 (``0 < idx <= 20 and idx % 4 == 0``): IDFormer's five feature scales.

The rotary tables (``VisionRotaryEmbeddingFast``: 16 frequencies ``10000^(-2i/32)`` over positions ``arange(24) / 24
x 16`` (``pt_hw_seq_len`` 16, interpolated to the 24 x 24 grid), pairs interleaved, the row half then the column
half of each head) are computed, not loaded: the checkpoint's ``rope.freqs_*`` buffers, where present, are skipped,
as EVA's loader does with ``RoPE=1`` and its ``strict=False`` load.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from storycast.errors import ModelLoadError

EVA_CLIP_REPO = "QuanSun/EVA-CLIP"
EVA_CLIP_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""The tower's ``image_mean`` / ``image_std``: EVA's pretrained config gives none, so ``OPENAI_DATASET_MEAN/STD``."""


@dataclass(frozen=True)
class EvaVisionConfig:
    """Geometry of the EVA02 vision tower; :meth:`l14_336` is EVA02-CLIP-L-14-336's."""

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    head_width: int = 64
    mlp_ratio: float = 2.6667
    embed_dim: int = 768
    pt_hw_seq_len: int = 16
    hidden_every: int = 4
    hidden_last: int = 20

    @classmethod
    def l14_336(cls) -> EvaVisionConfig:
        return cls()

    @classmethod
    def tiny(cls) -> EvaVisionConfig:
        """A toy tower (28 px, 2 x 2 patches, width 24, 6 blocks) whose 5 hidden states enter blocks 1..5."""
        return cls(image_size=28, patch_size=14, width=24, layers=6, head_width=8, embed_dim=16, pt_hw_seq_len=2,
                   hidden_every=1, hidden_last=5)  # fmt: skip

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def hidden_blocks(self) -> list[int]:
        """Blocks whose input is returned as a hidden state: 4, 8, 12, 16, 20."""
        return list(range(self.hidden_every, self.hidden_last + 1, self.hidden_every))


def rotary_tables(config: EvaVisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid^2, head_width) cos and sin of EVA02's 2-D rotary positions (see the module docstring)."""
    dim = config.head_width // 2
    frequencies = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    positions = torch.arange(config.grid) / config.grid * config.pt_hw_seq_len
    angles = torch.einsum("i,f->if", positions, frequencies).repeat_interleave(2, dim=-1)  # (grid, dim)
    rows = angles[:, None, :].expand(-1, config.grid, -1)
    columns = angles[None, :, :].expand(config.grid, -1, -1)
    table = torch.cat([rows, columns], dim=-1).reshape(config.grid**2, -1)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): EVA's ``rotate_half`` on interleaved pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


class EvaAttention(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        width = config.width
        self.heads = config.heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.inner_attn_ln = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(self.k_proj(x))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        # Rotary positions on the patch tokens; the class token keeps its own.
        q, k = (torch.cat([t[:, :, :1], t[:, :, 1:] * cos + rotate_pairs(t[:, :, 1:]) * sin], dim=2) for t in (q, k))
        out = F.scaled_dot_product_attention(q, k.to(v.dtype), v).transpose(1, 2).flatten(2)
        return self.proj(self.inner_attn_ln(out))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(width, hidden)
        self.w2 = nn.Linear(width, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=1e-6)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EvaBlock(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=1e-6)
        self.attn = EvaAttention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=1e-6)
        self.mlp = SwiGLU(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)


class EvaVisionTower(nn.Module):
    """``forward(pixels (B, 3, S, S))`` -> (embedding (B, embed_dim), [hidden (B, 1 + grid^2, width)] x 5)."""

    def __init__(self, config: EvaVisionConfig | None = None):
        super().__init__()
        self.config = config = config or EvaVisionConfig.l14_336()
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid**2 + 1, config.width))
        self.blocks = nn.ModuleList(EvaBlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head = nn.Linear(config.width, config.embed_dim)
        cos, sin = rotary_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(f"the EVA tower takes {size} x {size} images, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed.proj(pixels.to(self.pos_embed.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        hidden, wanted = [], set(self.config.hidden_blocks)
        for number, block in enumerate(self.blocks):
            if number in wanted:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x)[:, 0]), hidden


def eva_visual_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The vision tower's part of an EVA-CLIP checkpoint: ``visual.*`` keys unprefixed (a ``model`` / ``module`` /
    ``state_dict`` wrapper and a ``module.`` prefix unwrapped, as EVA's loader does), rotary buffers dropped. A dict
    already unprefixed (no ``visual.`` key) is taken as the tower's own."""
    for wrapper in ("model", "module", "state_dict"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in checkpoint.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return {k: v for k, v in state.items() if "rope.freqs_" not in k and isinstance(v, torch.Tensor)}


def load_eva_vision_tower(
    source: str | Path | Mapping[str, object],
    *,
    config: EvaVisionConfig | None = None,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> EvaVisionTower:
    """The EVA02 vision tower from the official ``.pt`` (a file, a folder holding it, the Hub repo
    ``QuanSun/EVA-CLIP``) or a state dict, checked key by key and shape by shape before loading.

    Raises:
        MissingWeightsError: The file is not there and cannot be downloaded.
        ModelLoadError: It cannot be read, or a key or shape differs (named with the fix).
    """
    from storycast.identity.pulid_flux import resolve_weight_file

    if isinstance(source, Mapping):
        checkpoint, name = source, "<state dict>"
    else:
        path = resolve_weight_file(
            source, EVA_CLIP_FILE, what="EVA02-CLIP", repo=EVA_CLIP_REPO, local_files_only=local_files_only
        )
        checkpoint, name = _read_torch(path), str(path)
    state = eva_visual_state_dict(checkpoint)
    with torch.device("meta"):
        model = EvaVisionTower(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    wrong = [
        f"'visual.{k}' is {tuple(state[k].shape)}, expected {s}"
        for k, s in expected.items()
        if k in state and tuple(state[k].shape) != s
    ]
    if missing or wrong:
        problem = f"missing keys {['visual.' + k for k in missing[:5]]}" if missing else "; ".join(wrong[:5])
        raise ModelLoadError(
            f"{name} is not the EVA02-CLIP-L-14-336 vision tower PuLID reads: {problem}. Fix: pass {EVA_CLIP_FILE} "
            f"from {EVA_CLIP_REPO}."
        )
    model = EvaVisionTower(config)
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model.to(dtype).eval().requires_grad_(False)


def _read_torch(path: Path) -> Mapping[str, object]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(
            f"could not read '{path}' as a torch checkpoint of tensors ({type(err).__name__}). Fix: download "
            f"{EVA_CLIP_FILE} again from {EVA_CLIP_REPO}."
        ) from err
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"'{path}' holds a {type(loaded).__name__}, not a state dict. Fix: pass {EVA_CLIP_FILE}.")
    return loaded

"""PuLID-FLUX's modules (ToTheBeginning/PuLID v0.9.1): the ID encoder ``IDFormer`` and the cross-attention modules
``PerceiverAttentionCA`` inserted between FLUX's blocks, with the official weight file's key names.

Architecture (``pulid/encoders_transformer.py`` at 1aa2fc7d; facts only, the code is our own):

- ``IDFormer``: a perceiver resampler. The ID condition (B, 1280) = [ArcFace embedding (512), the L2-normalised
  EVA02-CLIP-L image embedding (768)] goes through ``id_embedding_mapping`` (Linear 1280->1024, LN, LeakyReLU,
  Linear 1024->1024, LN, LeakyReLU, Linear 1024->5x1024) to 5 ID tokens. 32 learned ``latents`` followed by those 5
  tokens are the queries; 10 layers of [``PerceiverAttention`` (keys and values over [context, latents]), FFN],
  2 per EVA feature scale: scale i's 577 hidden states go through ``mapping_i`` (Linear 1024->1024, LN, LeakyReLU,
  Linear, LN, LeakyReLU, Linear 1024->1024) and the context of its 2 layers is [ID tokens, mapped features]. The
  first 32 latents times ``proj_out`` (1024 x 2048) are the 32 ID tokens (B, 32, 2048).
- ``PerceiverAttentionCA`` (dim 3072 = FLUX's width, 16 heads of 128, kv_dim 2048): queries from FLUX's image
  tokens (LayerNorm ``norm2``), keys and values from the ID tokens (LayerNorm ``norm1``, one ``to_kv``), no biases;
  scores scaled by ``dim_head^-1/2`` (split as ``dim_head^-1/4`` on each side), softmax in float32.
- ``pulid/pipeline_flux.py``: ``double_interval = 2``, ``single_interval = 4``; the count of CA modules is
  ceil(19 / 2) + ceil(38 / 4) = 20, one after double blocks 0, 2, ..., 18 and one after single blocks 0, 4, ..., 36
  (``flux/model.py``: ``i % interval == 0``), used in that order.

The weight file ``guozinan/PuLID`` ``pulid_flux_v0.9.1.safetensors`` holds ``pulid_encoder.<IDFormer key>`` and
``pulid_ca.<n>.<PerceiverAttentionCA key>`` (``PuLIDPipeline.load_pretrain`` splits the first dot and loads each part
strictly); :class:`PuLIDFlux` has exactly those two children, so its ``state_dict`` is the file's layout.
:func:`load_pulid_flux` checks every key and shape before anything is loaded and names the file, the key and the fix.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.identity.resampler import PerceiverAttention, feed_forward

PULID_REPO = "guozinan/PuLID"
PULID_FLUX_FILE = "pulid_flux_v0.9.1.safetensors"
FEATURE_SCALES = 5
"""EVA hidden-state scales IDFormer reads (``for i in range(5)``), each feeding ``depth / 5`` layers."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class PuLIDFluxConfig:
    """Geometry of PuLID-FLUX; :meth:`official` is v0.9.1's (``encoders_transformer.py``, ``pipeline_flux.py``).

    Attributes:
        dim, depth, dim_head, heads, num_id_token, num_queries, output_dim, ff_mult: ``IDFormer``'s arguments.
        id_dim: Width of the ID condition: ArcFace (512) + EVA02-CLIP image embedding (768).
        vit_width: Width of the EVA hidden states ``mapping_i`` reads (1024).
        mapping_width: Hidden width of the mapping MLPs (1024).
        ca_dim, ca_dim_head, ca_heads: ``PerceiverAttentionCA``'s ``dim`` (FLUX's width), ``dim_head``, ``heads``;
            its ``kv_dim`` is ``output_dim``.
        double_blocks, single_blocks: FLUX's block counts (19 and 38) the CA count is made for.
        double_interval, single_interval: A CA module after every ``interval``-th block, from block 0.
    """

    dim: int = 1024
    depth: int = 10
    dim_head: int = 64
    heads: int = 16
    num_id_token: int = 5
    num_queries: int = 32
    output_dim: int = 2048
    ff_mult: int = 4
    id_dim: int = 1280
    vit_width: int = 1024
    mapping_width: int = 1024
    ca_dim: int = 3072
    ca_dim_head: int = 128
    ca_heads: int = 16
    double_blocks: int = 19
    single_blocks: int = 38
    double_interval: int = 2
    single_interval: int = 4

    def __post_init__(self) -> None:
        if self.depth % FEATURE_SCALES:
            raise ValueError(f"IDFormer's depth must be a multiple of {FEATURE_SCALES}, got {self.depth}")
        if min(self.double_interval, self.single_interval) < 1:
            raise ValueError("the PuLID intervals must be at least 1")

    @classmethod
    def official(cls) -> PuLIDFluxConfig:
        return cls()

    @classmethod
    def tiny(
        cls,
        *,
        flux_dim: int = 32,
        double_blocks: int = 2,
        single_blocks: int = 4,
        clip_embed_dim: int = 16,
        vit_width: int = 24,
        arcface_dim: int = 512,
        double_interval: int = 2,
        single_interval: int = 4,
    ) -> PuLIDFluxConfig:
        """A toy PuLID-FLUX for the tiny FLUX transformer (``tiny-flux``: width 32, 2 double and 4 single blocks)
        and the tiny EVA tower (:meth:`storycast.identity.eva_clip.EvaVisionConfig.tiny`)."""
        return cls(
            dim=16, depth=5, dim_head=8, heads=2, num_id_token=2, num_queries=4, output_dim=12, ff_mult=2,
            id_dim=arcface_dim + clip_embed_dim, vit_width=vit_width, mapping_width=20, ca_dim=flux_dim,
            ca_dim_head=8, ca_heads=2, double_blocks=double_blocks, single_blocks=single_blocks,
            double_interval=double_interval, single_interval=single_interval,
        )  # fmt: skip

    def for_transformer(self, double_blocks: int, single_blocks: int, flux_dim: int) -> PuLIDFluxConfig:
        """This geometry on a FLUX transformer of these block counts and width."""
        return replace(self, double_blocks=double_blocks, single_blocks=single_blocks, ca_dim=flux_dim)

    @property
    def double_insertions(self) -> list[int]:
        """Double blocks followed by a CA module: 0, interval, 2 x interval, ..."""
        return list(range(0, self.double_blocks, self.double_interval))

    @property
    def single_insertions(self) -> list[int]:
        return list(range(0, self.single_blocks, self.single_interval))

    @property
    def num_ca(self) -> int:
        """``pipeline_flux.py``'s count: ceil(19 / double_interval) + ceil(38 / single_interval) = 20."""
        return math.ceil(self.double_blocks / self.double_interval) + math.ceil(
            self.single_blocks / self.single_interval
        )


def _mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """IDFormer's mapping MLP: Linear, LayerNorm, LeakyReLU between each pair of widths, a Linear last (indices
    0..6 as the official ``nn.Sequential``)."""
    layers: list[nn.Module] = []
    for number, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(width_in, width_out))
        if number < len(widths) - 2:
            layers += [nn.LayerNorm(width_out), nn.LeakyReLU()]
    return nn.Sequential(*layers)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads x d) -> (B, heads, L, d)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _perceiver_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim_head: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(dim_head)) v, each side scaled by dim_head^-1/4 and the softmax in float32, as PuLID's
    perceivers compute it (stable in half precision); (B, heads, L, d) in and out."""
    scale = dim_head**-0.25
    weight = (q * scale) @ (k * scale).transpose(-2, -1)
    return torch.softmax(weight.float(), dim=-1).to(weight.dtype) @ v


class PerceiverAttentionCA(PerceiverAttention):
    """The ID cross-attention after a FLUX block: queries from the image tokens, keys and values from the ID tokens.

    ``forward(id_tokens (B, K, kv_dim), image_tokens (B, N, dim)) -> (B, N, dim)``, the argument order of the
    official ``forward(x, latents)``.
    """

    def __init__(self, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: int = 2048):
        super().__init__(dim, dim_head, heads)
        # Keys and values come from the ID tokens, of their own width.
        self.norm1 = nn.LayerNorm(kv_dim)
        self.to_kv = nn.Linear(kv_dim, dim_head * heads * 2, bias=False)

    def forward(self, id_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        q = self.to_q(self.norm2(image_tokens))
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        out = _perceiver_attention(*(_heads(x, self.heads) for x in (q, k, v)), self.dim_head)
        return self.to_out(out.transpose(1, 2).flatten(2))


class IDFormer(nn.Module):
    """PuLID-FLUX's ID encoder: ``forward(id_condition (B, id_dim), vit_hidden [5 x (B, L, vit_width)])`` ->
    (B, num_queries, output_dim) ID tokens (see the module docstring)."""

    def __init__(self, config: PuLIDFluxConfig):
        super().__init__()
        c = self.config = config
        scale = c.dim**-0.5
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) * scale)
        self.proj_out = nn.Parameter(scale * torch.randn(c.dim, c.output_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )
        for number in range(FEATURE_SCALES):
            self.add_module(f"mapping_{number}", _mlp((c.vit_width, c.mapping_width, c.mapping_width, c.dim)))
        self.id_embedding_mapping = _mlp((c.id_dim, c.mapping_width, c.mapping_width, c.dim * c.num_id_token))

    def forward(self, id_condition: torch.Tensor, vit_hidden: list[torch.Tensor] | tuple[torch.Tensor, ...]):
        c = self.config
        if len(vit_hidden) != FEATURE_SCALES:
            raise ValueError(f"IDFormer reads {FEATURE_SCALES} EVA hidden states, got {len(vit_hidden)}")
        batch = id_condition.shape[0]
        id_tokens = self.id_embedding_mapping(id_condition).reshape(batch, -1, c.dim)
        latents = torch.cat([self.latents.expand(batch, -1, -1), id_tokens], dim=1)
        per_scale = c.depth // FEATURE_SCALES
        for number, hidden in enumerate(vit_hidden):
            context = torch.cat([id_tokens, getattr(self, f"mapping_{number}")(hidden)], dim=1)
            for attention, ffn in self.layers[number * per_scale : (number + 1) * per_scale]:
                latents = attention(context, latents) + latents
                latents = ffn(latents) + latents
        return latents[:, : c.num_queries] @ self.proj_out


class PuLIDFlux(nn.Module):
    """The weight file's two parts: ``pulid_encoder`` (:class:`IDFormer`) and ``pulid_ca`` (the CA modules, in
    insertion order: the double blocks' first, then the single blocks')."""

    def __init__(self, config: PuLIDFluxConfig | None = None):
        super().__init__()
        self.config = config = config or PuLIDFluxConfig.official()
        self.pulid_encoder = IDFormer(config)
        self.pulid_ca = nn.ModuleList(
            PerceiverAttentionCA(config.ca_dim, config.ca_dim_head, config.ca_heads, config.output_dim)
            for _ in range(config.num_ca)
        )

    @torch.no_grad()
    def id_tokens(self, id_condition: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """The ID tokens (B, num_queries, output_dim) of ID conditions and their EVA hidden states."""
        return self.pulid_encoder(id_condition, vit_hidden)

    @torch.no_grad()
    def uncond_id_tokens(self, like: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """The negative branch's ID tokens under true CFG: the encoder of zeros in place of the ID condition and of
        every hidden state (``get_id_embedding(cal_uncond=True)``)."""
        return self.pulid_encoder(torch.zeros_like(like), [torch.zeros_like(h) for h in vit_hidden])


# -- loading ------------------------------------------------------------------------------------------------------


def check_pulid_state_dict(model: PuLIDFlux, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict that would not load into ``model`` strictly: a missing or unexpected key, or a shape that
    differs, named with the file and the fix.

    Raises:
        ModelLoadError: The first problems found (up to 5 of each kind are named).
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"'{k}' is {tuple(state_dict[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:5]}" + (f" (+{len(unexpected) - 5})" if len(unexpected) > 5 else "")
        )
    if wrong:
        problems.append("; ".join(wrong[:5]) + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
    c = model.config
    raise ModelLoadError(
        f"{source} is not PuLID-FLUX weights for this model ({c.num_ca} cross-attention modules of width {c.ca_dim} "
        f"for {c.double_blocks} double and {c.single_blocks} single blocks at intervals {c.double_interval}/"
        f"{c.single_interval}): {'; '.join(problems)}. Fix: pass {PULID_FLUX_FILE} from {PULID_REPO} (keys "
        "'pulid_encoder.*' and 'pulid_ca.<n>.*') on a FLUX.1-dev transformer, with the default intervals."
    )


def load_pulid_flux(
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    config: PuLIDFluxConfig | None = None,
    weight_name: str = PULID_FLUX_FILE,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PuLIDFlux:
    """PuLID-FLUX from a ``.safetensors`` file, a folder holding ``weight_name``, a Hub repo id (``guozinan/PuLID``)
    or a state dict, checked key by key and shape by shape before loading (:func:`check_pulid_state_dict`).

    Raises:
        MissingWeightsError: The file is not there and cannot be downloaded.
        ModelLoadError: It cannot be read, or does not fit ``config``.
    """
    if isinstance(source, Mapping):
        state_dict, name = dict(source), "<state dict>"
    else:
        path = resolve_weight_file(
            source, weight_name, what="PuLID-FLUX", repo=PULID_REPO, local_files_only=local_files_only
        )
        state_dict, name = read_safetensors(path), str(path)
    with torch.device("meta"):
        model = PuLIDFlux(config)
    check_pulid_state_dict(model, state_dict, name)
    model = PuLIDFlux(config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval().requires_grad_(False)


def resolve_weight_file(
    source: str | Path, weight_name: str, *, what: str, repo: str, local_files_only: bool = False
) -> Path:
    """Local path of a weight file: ``source`` itself, ``source / weight_name``, or a download from a Hub repo id.

    Raises:
        MissingWeightsError: Naming the file, where it was looked for and how to get it.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / weight_name).is_file():
            return path / weight_name
        raise MissingWeightsError(
            f"the folder '{path}' has no {what} file '{weight_name}'. Fix: put it there or pass the file."
        )
    text = str(source)
    if not _HUB_ID.match(text) or Path(text).suffix in (".safetensors", ".pt", ".pth", ".bin"):
        raise MissingWeightsError(
            f"the {what} weights '{text}' are neither a file, a folder nor a Hub repo id. Fix: pass the path of "
            f"'{weight_name}', its folder, or '{repo}'."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(text, weight_name, local_files_only=local_files_only))
    except Exception as err:  # huggingface_hub raises many kinds; each means "not available here"
        raise MissingWeightsError(
            f"could not get '{weight_name}' from the Hub repo '{text}' ({type(err).__name__}). Fix: on a machine with "
            f"network run `hf download {text} {weight_name}`, then pass the local file or its folder."
        ) from err


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"could not read the safetensors file '{path}': {err}. Fix: download it again.") from err

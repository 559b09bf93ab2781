"""EVA02-CLIP-L-14-336's vision tower: the official checkpoint's visual.* keys and shapes, loading from an EVA-CLIP
file (text tower and rotary buffers skipped) checked by shape, and the forward against a naive one written from the
authors' eva_vit_model.py and rope.py (VisionRotaryEmbeddingFast's broadcat table, rotate_half on (d r) pairs)."""

from __future__ import annotations

import pytest
import torch

from storycast.errors import ModelLoadError
from storycast.identity.eva_clip import EvaVisionConfig, EvaVisionTower, load_eva_vision_tower


def test_the_l14_336_tower_has_the_official_keys_and_shapes():
    with torch.device("meta"):
        tower = EvaVisionTower(EvaVisionConfig.l14_336())
    shapes = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    expected_block = {
        "norm1.weight": (1024,), "norm1.bias": (1024,), "norm2.weight": (1024,), "norm2.bias": (1024,),
        "attn.q_bias": (1024,), "attn.v_bias": (1024,), "attn.q_proj.weight": (1024, 1024),
        "attn.k_proj.weight": (1024, 1024), "attn.v_proj.weight": (1024, 1024), "attn.inner_attn_ln.weight": (1024,),
        "attn.inner_attn_ln.bias": (1024,), "attn.proj.weight": (1024, 1024), "attn.proj.bias": (1024,),
        "mlp.w1.weight": (2730, 1024), "mlp.w1.bias": (2730,), "mlp.w2.weight": (2730, 1024), "mlp.w2.bias": (2730,),
        "mlp.ffn_ln.weight": (2730,), "mlp.ffn_ln.bias": (2730,), "mlp.w3.weight": (1024, 2730), "mlp.w3.bias": (1024,),
    }  # fmt: skip
    expected = {f"blocks.{n}.{k}": s for n in range(24) for k, s in expected_block.items()}
    expected |= {
        "cls_token": (1, 1, 1024), "pos_embed": (1, 577, 1024), "patch_embed.proj.weight": (1024, 3, 14, 14),
        "patch_embed.proj.bias": (1024,), "norm.weight": (1024,), "norm.bias": (1024,), "head.weight": (768, 1024),
        "head.bias": (768,),
    }  # fmt: skip
    assert shapes == expected
    assert tower.config.hidden_blocks == [4, 8, 12, 16, 20]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tower = EvaVisionTower(EvaVisionConfig.tiny()).eval()
    for p in tower.parameters():  # biases and norms away from 0 and 1, so that each one matters
        p.data += 0.2 * torch.randn_like(p)
    return tower


def test_an_eva_clip_file_loads_its_visual_part_and_a_wrong_shape_is_refused(tiny, tmp_path):
    checkpoint = {f"visual.{k}": v.clone() for k, v in tiny.state_dict().items()}
    checkpoint["visual.rope.freqs_cos"] = torch.zeros(4, 8)  # EVA's own buffers: recomputed, never read
    checkpoint["visual.blocks.0.attn.rope.freqs_sin"] = torch.zeros(4, 8)
    checkpoint["text.token_embedding.weight"] = torch.zeros(10, 4)
    checkpoint["logit_scale"] = torch.ones(())
    path = tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"
    torch.save({"module": {f"module.{k}": v for k, v in checkpoint.items()}}, path)
    loaded = load_eva_vision_tower(tmp_path, config=tiny.config)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(pixels)[0], tiny(pixels)[0])
    checkpoint["visual.head.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        ModelLoadError, match=r"'visual\.head\.weight' is \(3, 3\), expected \(16, 24\).*Fix: pass EVA02"
    ):
        load_eva_vision_tower(checkpoint, config=tiny.config)


def naive_eva(tower, x):
    """eva_vit_model.py's forward_features(return_hidden=True) + head, with VisionRotaryEmbeddingFast."""
    c = tower.config
    dim = c.head_width // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(c.grid) / c.grid * c.pt_hw_seq_len
    freqs = torch.einsum("..., f -> ... f", t, freqs)
    freqs = torch.stack([freqs, freqs], dim=-1).flatten(-2)  # repeat '... n -> ... (n r)', r=2
    freqs = torch.cat([freqs[:, None, :].expand(-1, c.grid, -1), freqs[None, :, :].expand(c.grid, -1, -1)], dim=-1)
    cos, sin = freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])

    def rotate_half(v):
        v = v.reshape(*v.shape[:-1], -1, 2)
        return torch.stack((-v[..., 1], v[..., 0]), dim=-1).reshape(*v.shape[:-2], -1)

    x = tower.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat((tower.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + tower.pos_embed
    hidden = []
    for idx, blk in enumerate(tower.blocks):
        if (0 < idx <= c.hidden_last) and (idx % c.hidden_every == 0):
            hidden.append(x)
        a, y = blk.attn, blk.norm1(x)
        b, n, _ = y.shape
        q = torch.nn.functional.linear(y, a.q_proj.weight, a.q_bias).reshape(b, n, c.heads, -1).permute(0, 2, 1, 3)
        k = torch.nn.functional.linear(y, a.k_proj.weight, None).reshape(b, n, c.heads, -1).permute(0, 2, 1, 3)
        v = torch.nn.functional.linear(y, a.v_proj.weight, a.v_bias).reshape(b, n, c.heads, -1).permute(0, 2, 1, 3)
        q = torch.cat((q[:, :, :1], q[:, :, 1:] * cos + rotate_half(q[:, :, 1:]) * sin), -2)
        k = torch.cat((k[:, :, :1], k[:, :, 1:] * cos + rotate_half(k[:, :, 1:]) * sin), -2)
        attn = ((q * c.head_width**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + a.proj(a.inner_attn_ln(out))
        m, y = blk.mlp, blk.norm2(x)
        x = x + m.w3(m.ffn_ln(torch.nn.functional.silu(m.w1(y)) * m.w2(y)))
    return tower.head(tower.norm(x)[:, 0]), hidden


def test_the_tower_equals_a_naive_forward_of_eva_vit_model(tiny):
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedding, hidden = tiny(pixels)
        naive_embedding, naive_hidden = naive_eva(tiny, pixels)
    torch.testing.assert_close(embedding, naive_embedding, rtol=1e-5, atol=1e-5)
    assert len(hidden) == 5 and all(h.shape == (2, 5, 24) for h in hidden)
    for ours, theirs in zip(hidden, naive_hidden, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="takes 28 x 28 images"):
        tiny(torch.zeros(1, 3, 32, 32))

"""CSD: official key names, a naive forward written from ViStoryBench's clip_model.py/csd_model.py, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.vision.csd import CLIP_MEAN, CLIP_STD, CsdConfig, CsdFeatures, CsdModel, csd_pixel_values


def _openai_visual_keys(layers: int) -> list[str]:
    """OpenAI CLIP ``VisionTransformer`` parameter names (clip_model.py), ``proj`` removed, as CSD_CLIP holds them."""
    block = [
        "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
        "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
        "ln_2.weight", "ln_2.bias",
    ]  # fmt: skip
    keys = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias"]
    keys += [f"transformer.resblocks.{i}.{name}" for i in range(layers) for name in block]
    keys += ["ln_post.weight", "ln_post.bias"]
    return [f"backbone.{k}" for k in keys] + ["last_layer_style", "last_layer_content"]


def test_vit_large_has_the_checkpoint_keys_and_shapes():
    with torch.device("meta"):
        state = CsdModel(CsdConfig.vit_large()).state_dict()
    assert sorted(state) == sorted(_openai_visual_keys(24))
    assert state["backbone.conv1.weight"].shape == (1024, 3, 14, 14)
    assert state["backbone.positional_embedding"].shape == (257, 1024)
    assert state["backbone.transformer.resblocks.0.attn.in_proj_weight"].shape == (3072, 1024)
    assert state["last_layer_style"].shape == (1024, 768)


def _naive_style(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """ViStoryBench's forward, from the state dict: sequence-first (LND) blocks, QuickGELU, ln_post of the class
    token, ``@ last_layer_style``, L2 normalisation (clip_model.py VisionTransformer.forward, csd_model.py)."""

    def ln(t, name):
        return torch.nn.functional.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    b = "backbone."
    x = torch.nn.functional.conv2d(x, state[b + "conv1.weight"], stride=state[b + "conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = state[b + "class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + state[b + "positional_embedding"]
    x = ln(x, b + "ln_pre").permute(1, 0, 2)  # LND
    i = 0
    while f"{b}transformer.resblocks.{i}.ln_1.weight" in state:
        p = f"{b}transformer.resblocks.{i}."
        h = ln(x, p + "ln_1")
        length, n, d = h.shape
        q, k, v = (h @ state[p + "attn.in_proj_weight"].T + state[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(length, n * heads, d // heads).transpose(0, 1) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(1, 2) / (d // heads) ** 0.5, dim=-1) @ v
        attn = attn.transpose(0, 1).reshape(length, n, d)
        x = x + attn @ state[p + "attn.out_proj.weight"].T + state[p + "attn.out_proj.bias"]
        h = ln(x, p + "ln_2") @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
        i += 1
    x = ln(x.permute(1, 0, 2)[:, 0, :], b + "ln_post")
    return torch.nn.functional.normalize(x @ state["last_layer_style"], dim=-1)


def test_tiny_style_equals_the_naive_forward():
    features = CsdFeatures.tiny(seed=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = features.model(x)
    naive = _naive_style(features.model.state_dict(), x, heads=4)
    torch.testing.assert_close(ours["style"], naive, atol=1e-5, rtol=1e-5)
    # the content head is a different projection: the score must use the style one
    assert not torch.allclose(ours["content"], naive, atol=1e-3)


def test_preprocessing_squashes_to_a_square_and_normalises_with_clip_statistics():
    image = Image.new("RGB", (60, 20), (255, 128, 0))
    pixels = csd_pixel_values([image], size=32)
    assert pixels.shape == (1, 3, 32, 32)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0, :, 5, 5], expected, atol=1e-5, rtol=0)


def test_a_checkpoint_file_loads_wrapped_or_not_and_a_wrong_shape_is_refused(tmp_path):
    tiny = CsdFeatures.tiny(seed=1)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)) for i in (0, 1)]
    plain = tmp_path / "csd_vit-large.pth"
    torch.save(tiny.model.state_dict(), plain)
    wrapped = tmp_path / "checkpoint.pth"  # CSD's training checkpoint: {'model_state_dict': {'module.<key>': ...}}
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in tiny.model.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        loaded = CsdFeatures.from_file(path, config=CsdConfig.tiny())
        torch.testing.assert_close(loaded.encode_images(images), tiny.encode_images(images))

    bad = dict(tiny.model.state_dict())
    bad["last_layer_style"] = torch.zeros(32, 8)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"last_layer_style: expected \(32, 16\), got \(32, 8\)"):
        CsdFeatures.from_file(tmp_path / "bad.pth", config=CsdConfig.tiny())
    with pytest.raises(ModelLoadError, match="missing keys"):
        torch.save({k: v for k, v in tiny.model.state_dict().items() if "ln_post" not in k}, tmp_path / "part.pth")
        CsdFeatures.from_file(tmp_path / "part.pth", config=CsdConfig.tiny())
    with pytest.raises(ModelLoadError, match=r"wrong shapes"):  # the ViT-L network refuses the tiny file
        CsdFeatures.from_file(plain)
    with pytest.raises(MissingWeightsError, match="--csd-model"):
        CsdFeatures.from_file(tmp_path / "absent.pth")

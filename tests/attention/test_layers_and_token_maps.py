from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from storycast.attention.layers import attention_layers, install_processors, select_layers
from storycast.attention.token_maps import TokenMapProcessor, TokenMapStore, record_token_maps
from storycast.models.tiny import tiny_sdxl_components


@pytest.fixture(scope="module")
def unet():
    return tiny_sdxl_components()["unet"]


def test_layers_are_chosen_by_kind_and_level(unet):
    layers = attention_layers(unet)
    assert {layer.level for layer in layers} == {1, 2}  # SDXL: no attention at full latent resolution
    cross = select_layers(unet, kind="cross", levels=[2])
    assert cross and all(layer.is_cross and layer.level == 2 for layer in cross)
    assert all(layer.name.endswith("attn2") for layer in cross)
    assert {layer.name for layer in select_layers(unet, kind="self", name_pattern=r"^up_blocks\.")} <= {
        layer.name for layer in layers if layer.name.startswith("up_blocks.")
    }


def test_selecting_nothing_is_an_error(unet):
    with pytest.raises(ValueError, match="no cross attention layer"):
        select_layers(unet, kind="cross", levels=[0])
    with pytest.raises(ValueError, match="not attention processors"):
        install_processors(unet, {"nope.processor": AttnProcessor2_0()})


def test_token_map_processor_equals_the_stock_processor():
    attention = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    hidden = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(1))
    expected = AttnProcessor2_0()(attention, hidden, context)
    store = TokenMapStore([[2, 5]], size=4, rows=1)
    got = TokenMapProcessor(store)(attention, hidden, context)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    maps = store.mean_maps()
    assert maps.shape == (1, 2, 4, 4)
    # The recorded map is the softmax column of the chosen token, averaged over heads (cond row only).
    q = attention.to_q(hidden[1:]).view(1, 16, 2, 8).transpose(1, 2)
    k = attention.to_k(context[1:]).view(1, 7, 2, 8).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) * attention.scale).softmax(-1).mean(1)[0]
    torch.testing.assert_close(maps[0, 0].reshape(-1), probs[:, 2], rtol=1e-5, atol=1e-6)


def test_recording_handle_restores_the_processors(unet):
    before = {name: type(proc) for name, proc in unet.attn_processors.items()}
    store = TokenMapStore([[1]], size=8)
    with record_token_maps(unet, store, levels=[1, 2]):
        changed = {name for name, proc in unet.attn_processors.items() if isinstance(proc, TokenMapProcessor)}
        assert changed and all(name.endswith("attn2.processor") for name in changed)
    assert {name: type(proc) for name, proc in unet.attn_processors.items()} == before

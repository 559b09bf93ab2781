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
    up_self = select_layers(unet, kind="self", blocks=["up"])
    assert up_self and all(layer.block == "up" and layer.name.startswith("up_blocks.") for layer in up_self)
    assert {layer.block for layer in layers} == {"down", "mid", "up"}


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


def unet_inputs(unet, batch=2, height=16, width=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    kwargs = {"encoder_hidden_states": torch.randn(batch, 77, cross, generator=generator)}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 32, generator=generator),
            "time_ids": torch.zeros(batch, 6),
        }
    return torch.randn(batch, 4, height, width, generator=generator), kwargs


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_the_base_processor_equals_diffusers_attnprocessor2_0_on_a_whole_unet(family):
    from storycast.attention.processor import StoryAttnProcessor
    from storycast.models.tiny import tiny_sd15_components

    unet = (tiny_sdxl_components if family == "sdxl" else tiny_sd15_components)()["unet"]
    unet.set_attn_processor(AttnProcessor2_0())
    x, kwargs = unet_inputs(unet, width=24)  # non-square latents too
    with torch.no_grad():
        stock = unet(x, 10, **kwargs).sample
        with install_processors(unet, {layer.processor_key: StoryAttnProcessor() for layer in attention_layers(unet)}):
            ours = unet(x, 10, **kwargs).sample
        restored = unet(x, 10, **kwargs).sample
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
    assert torch.equal(restored, stock)


def test_the_base_processor_applies_loras_on_its_projections():
    """A peft LoRA lives in to_q/to_k/to_v/to_out, which the base processor calls: with the LoRA active our
    processor equals the stock one, and both differ from the plain UNet."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    from storycast.attention.processor import StoryAttnProcessor

    unet = tiny_sdxl_components()["unet"]
    unet.set_attn_processor(AttnProcessor2_0())
    x, kwargs = unet_inputs(unet)
    with torch.no_grad():
        plain = unet(x, 10, **kwargs).sample
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        stock = unet(x, 10, **kwargs).sample
        with install_processors(unet, {layer.processor_key: StoryAttnProcessor() for layer in attention_layers(unet)}):
            ours = unet(x, 10, **kwargs).sample
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
    assert (stock - plain).abs().max() > 1e-3


class ExtraTokens:
    """A base-processor subclass for the tests: prepends given tokens to each row's own."""

    @staticmethod
    def make(extra_per_row):
        from storycast.attention.processor import StoryAttnProcessor

        class Processor(StoryAttnProcessor):
            def key_tokens(self, attn, hidden, context):
                return [torch.cat([extra, own]) for extra, own in zip(extra_per_row, context, strict=True)]

        return Processor()


def naive_attention(attention, hidden, tokens):
    q = attention.to_q(hidden)
    k, v = attention.to_k(tokens), attention.to_v(tokens)
    heads = attention.heads
    split = lambda t: t.view(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
    probs = (split(q) @ split(k).transpose(-1, -2) * attention.scale).softmax(-1)
    out = (probs @ split(v)).transpose(0, 1).reshape(hidden.shape[0], -1)
    return attention.to_out[0](out)


def test_per_row_key_tokens_of_different_lengths_equal_a_naive_reference():
    attention = Attention(query_dim=16, heads=2, dim_head=8)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 16, generator=generator)
    extra = [torch.randn(4, 16, generator=generator), torch.randn(1, 16, generator=generator)]
    with torch.no_grad():
        got = ExtraTokens.make(extra)(attention, hidden)
        for row in range(2):
            expected = naive_attention(attention, hidden[row], torch.cat([extra[row], hidden[row]]))
            torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5)


def test_bias_and_output_branch_override_points():
    from storycast.attention.processor import StoryAttnProcessor

    attention = Attention(query_dim=16, heads=2, dim_head=8)
    hidden = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(4))

    class OnlyFirstKey(StoryAttnProcessor):
        def attention_bias(self, attn, query, key_length):
            bias = torch.full((1, 1, query.shape[2], key_length), float("-inf"))
            bias[..., 0] = 0
            return bias

    class AddOnes(StoryAttnProcessor):
        def output_branch(self, attn, query, hidden, attended):
            return torch.ones_like(attended)

    with torch.no_grad():
        value0 = attention.to_v(hidden[:, :1])
        torch.testing.assert_close(OnlyFirstKey()(attention, hidden), attention.to_out[0](value0).expand(1, 6, 16))
        plain = StoryAttnProcessor()(attention, hidden)
        shifted = AddOnes()(attention, hidden)
        torch.testing.assert_close(shifted - plain, attention.to_out[0].weight.sum(dim=1).expand(1, 6, 16))


def test_token_maps_follow_non_square_latents():
    from storycast.attention.token_maps import token_grid

    assert token_grid(16 * 24, (16, 24)) == (16, 24)
    assert token_grid(8 * 12, (16, 24)) == (8, 12)
    assert token_grid(4 * 6, (16, 24)) == (4, 6)
    assert token_grid(7, (16, 24)) is None
    attention = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    hidden = torch.randn(2, 8 * 12, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(1))
    store = TokenMapStore([[3]], size=(8, 12), rows=1, latent_size=(16, 24))
    TokenMapProcessor(store)(attention, hidden, context)
    maps = store.mean_maps()
    assert store.count == 1 and maps.shape == (1, 1, 8, 12) and maps.sum() > 0

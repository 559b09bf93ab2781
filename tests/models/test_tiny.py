from __future__ import annotations

import torch

from storycast.models.tiny import tiny_sd15_components, tiny_sdxl_components, tiny_tokenizer


def _weights(components):
    return {
        name: {k: v.clone() for k, v in module.state_dict().items()}
        for name, module in components.items()
        if isinstance(module, torch.nn.Module)
    }


def test_tiny_weights_are_identical_on_every_build():
    first, second = _weights(tiny_sdxl_components()), _weights(tiny_sdxl_components())
    assert first.keys() == second.keys() == {"unet", "vae", "text_encoder", "text_encoder_2"}
    for name in first:
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), f"{name}.{key}"


def test_other_seed_gives_other_weights():
    a = tiny_sd15_components(seed=0)["unet"].conv_in.weight
    b = tiny_sd15_components(seed=1)["unet"].conv_in.weight
    assert not torch.equal(a, b)


def test_building_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_sdxl_components()
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_is_offline_and_keeps_benchmark_prompts_short():
    tokenizer = tiny_tokenizer()
    prompt = (
        "A close-up photo of a young Asian woman with long, straight black hair and smooth skin, "
        "wearing a chic hat in a bustling café"
    )
    ids = tokenizer(prompt).input_ids
    assert len(ids) < tokenizer.model_max_length == 77
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert "woman</w>" in tokens and tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"


def test_tiny_sdxl_has_real_structure():
    components = tiny_sdxl_components()
    unet = components["unet"]
    assert unet.config.cross_attention_dim == 64
    assert unet.config.addition_embed_type == "text_time"
    # A 128 px image has 16x16 latents, as 1024 px has 128x128 in SDXL.
    assert 2 ** (len(components["vae"].config.block_out_channels) - 1) == 8
    sample = torch.zeros(1, 4, 16, 16)
    out = unet(
        sample,
        10,
        encoder_hidden_states=torch.zeros(1, 77, 64),
        added_cond_kwargs={"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)},
    ).sample
    assert out.shape == sample.shape

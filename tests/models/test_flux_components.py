from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.models.flux_components import (
    flux_scheduler_config,
    flux_t5_config,
    flux_transformer_config,
    flux_vae_config,
    random_flux_components,
    tiny_flux_components,
    tiny_flux_pipeline,
    tiny_t5_tokenizer,
)

PROMPT = "A watercolor illustration of a young woman with short red hair reading on a bench"
PROMPTS = [
    PROMPT,
    "The boy, laughing, runs toward the old lighthouse at dusk; a dog follows.",
    "Zoë drinks a café crème — “so good!” she says (3.5 cups).",
]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weights(components):
    return {
        name: {k: v.clone() for k, v in module.state_dict().items()}
        for name, module in components.items()
        if isinstance(module, torch.nn.Module)
    }


def _draw(pipe, seed: int, guidance_scale: float) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        PROMPT,
        height=128,
        width=128,
        num_inference_steps=2,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def t5_tokenizer():
    return tiny_t5_tokenizer()


@pytest.fixture(scope="module")
def dev_pipeline():
    pipe = tiny_flux_pipeline(seed=0, guidance_embeds=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def schnell_pipeline():
    pipe = tiny_flux_pipeline(seed=0, guidance_embeds=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# T5 tokenizer


def test_t5_tokenizer_has_t5s_layout(t5_tokenizer):
    vocab = t5_tokenizer.get_vocab()
    assert (vocab["<pad>"], vocab["</s>"], vocab["<unk>"]) == (0, 1, 2)
    assert (t5_tokenizer.pad_token_id, t5_tokenizer.eos_token_id, t5_tokenizer.unk_token_id) == (0, 1, 2)
    # The sentinels come last, <extra_id_0> at the very end, as 32099 is in T5's 32,100 tokens.
    size = len(t5_tokenizer)
    assert vocab["<extra_id_0>"] == size - 1 and vocab["<extra_id_99>"] == size - 100
    assert len([token for token in vocab if token.startswith("<extra_id_")]) == 100
    assert t5_tokenizer.model_max_length == 512
    assert {"▁woman", "▁Woman", "▁hair", "▁", "a", "Z"} <= vocab.keys()


def test_t5_tokenizer_splits_a_story_prompt_into_words(t5_tokenizer):
    ids = t5_tokenizer(PROMPT).input_ids
    tokens = t5_tokenizer.convert_ids_to_tokens(ids)
    words = PROMPT.split()
    # About one token per word, never one per letter.
    assert len(words) < len(ids) <= len(words) + 4, tokens
    assert len([word for word in words if "▁" + word in tokens]) >= len(words) - 2
    assert {"▁woman", "▁illustration", "▁reading", "▁bench"} <= set(tokens)
    assert ids[-1] == 1 and ids.count(1) == 1
    assert t5_tokenizer.decode(ids, skip_special_tokens=True) == PROMPT


@pytest.mark.parametrize("prompt", PROMPTS)
def test_t5_tokenizer_knows_every_character_of_english_text(t5_tokenizer, prompt):
    ids = t5_tokenizer(prompt).input_ids
    assert t5_tokenizer.unk_token_id not in ids
    assert ids[-1] == t5_tokenizer.eos_token_id
    assert t5_tokenizer.decode(ids, skip_special_tokens=True) == prompt
    # Characters it was never given are <unk>, not dropped.
    assert t5_tokenizer.unk_token_id in t5_tokenizer("a ✓ mark").input_ids


def test_t5_tokenizer_pads_and_truncates_as_flux_asks(t5_tokenizer):
    plain = t5_tokenizer(PROMPT).input_ids
    padded = t5_tokenizer(PROMPT, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert padded.input_ids.shape == (1, 32)
    assert padded.input_ids[0].tolist() == plain + [0] * (32 - len(plain))
    assert padded.attention_mask[0].tolist() == [1] * len(plain) + [0] * (32 - len(plain))
    short = t5_tokenizer(PROMPT, padding="max_length", max_length=6, truncation=True).input_ids
    assert short == [*plain[:5], 1]


def test_t5_tokenizer_is_identical_on_every_build(t5_tokenizer):
    other = tiny_t5_tokenizer()
    assert other.get_vocab() == t5_tokenizer.get_vocab()
    assert other(PROMPTS).input_ids == t5_tokenizer(PROMPTS).input_ids


def test_t5_tokenizer_survives_save_and_load(t5_tokenizer, tmp_path):
    from transformers import AutoTokenizer, T5TokenizerFast

    t5_tokenizer.save_pretrained(tmp_path)
    for loaded in (T5TokenizerFast.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert isinstance(loaded, T5TokenizerFast)
        assert loaded.get_vocab() == t5_tokenizer.get_vocab()
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.model_max_length) == (0, 1, 512)
        for prompt in PROMPTS:
            expected = t5_tokenizer(prompt, padding="max_length", max_length=40, truncation=True).input_ids
            assert loaded(prompt, padding="max_length", max_length=40, truncation=True).input_ids == expected


# Configs


def test_full_configs_are_flux1s():
    dev, schnell = flux_transformer_config(), flux_transformer_config(guidance_embeds=False)
    assert dev["guidance_embeds"] and not schnell["guidance_embeds"]
    assert {k: v for k, v in dev.items() if k != "guidance_embeds"} == {
        k: v for k, v in schnell.items() if k != "guidance_embeds"
    }
    assert (dev["num_layers"], dev["num_single_layers"], dev["num_attention_heads"] * dev["attention_head_dim"]) == (
        19,
        38,
        3072,
    )
    assert sum(dev["axes_dims_rope"]) == dev["attention_head_dim"]
    vae = flux_vae_config()
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 0.3611, 0.1159)
    assert flux_scheduler_config(True)["use_dynamic_shifting"] and flux_scheduler_config(True)["shift"] == 3.0
    assert not flux_scheduler_config(False)["use_dynamic_shifting"] and flux_scheduler_config(False)["shift"] == 1.0
    t5 = flux_t5_config(vocab_size=100)
    assert (t5.d_model, t5.d_ff, t5.num_heads, t5.num_layers, t5.is_gated_act) == (4096, 10240, 64, 24, True)
    assert flux_t5_config(vocab_size=100, num_layers=3).num_layers == 3


def test_unknown_size_is_an_error():
    with pytest.raises(ValueError, match=r"'full'.*'tiny'.*'huge'"):
        flux_transformer_config("huge")
    with pytest.raises(ValueError, match="'huge'"):
        flux_vae_config("huge")


# Tiny components


def test_tiny_flux_keeps_fluxs_structure(dev_pipeline):
    transformer, vae = dev_pipeline.transformer, dev_pipeline.vae
    assert (transformer.config.num_layers, transformer.config.num_single_layers) == (2, 4)
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) == (2, 4)
    # Double-stream blocks attend over text and image with separate text projections; single-stream ones do not.
    assert all(block.attn.added_kv_proj_dim is not None for block in transformer.transformer_blocks)
    assert all(block.attn.added_kv_proj_dim is None for block in transformer.single_transformer_blocks)
    assert transformer.config.joint_attention_dim == dev_pipeline.text_encoder_2.config.d_model == 32
    assert transformer.config.pooled_projection_dim == dev_pipeline.text_encoder.config.hidden_size
    assert transformer.config.in_channels == 4 * vae.config.latent_channels == 64
    assert dev_pipeline.text_encoder_2.config.vocab_size == len(dev_pipeline.tokenizer_2)
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (0.3611, 0.1159)
    assert vae.quant_conv is None and vae.post_quant_conv is None
    # 128 px: the VAE downsamples 8x to 16x16 latents of 16 channels, packed 2x2 into 8x8 = 64 tokens of 64.
    assert dev_pipeline.vae_scale_factor == 8
    latents, image_ids = dev_pipeline.prepare_latents(
        1, 16, 128, 128, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert latents.shape == (1, 64, 64) and image_ids.shape == (64, 3)
    text = torch.zeros(1, 7, 32)
    out = transformer(
        hidden_states=latents,
        encoder_hidden_states=text,
        pooled_projections=torch.zeros(1, 32),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        txt_ids=torch.zeros(7, 3),
        img_ids=image_ids,
    ).sample
    assert out.shape == latents.shape


def test_dev_and_schnell_differ_where_flux_does(dev_pipeline, schnell_pipeline):
    assert dev_pipeline.transformer.config.guidance_embeds
    assert hasattr(dev_pipeline.transformer.time_text_embed, "guidance_embedder")
    assert not schnell_pipeline.transformer.config.guidance_embeds
    assert not hasattr(schnell_pipeline.transformer.time_text_embed, "guidance_embedder")
    assert dev_pipeline.scheduler.config.use_dynamic_shifting
    assert not schnell_pipeline.scheduler.config.use_dynamic_shifting


@pytest.mark.parametrize(("variant", "guidance_scale"), [("dev", 3.5), ("schnell", 0.0)])
def test_tiny_flux_draws_the_same_image_for_a_seed(request, variant, guidance_scale):
    pipe = request.getfixturevalue(f"{variant}_pipeline")
    first = _draw(pipe, 0, guidance_scale)
    assert first.shape == (1, 128, 128, 3) and np.isfinite(first).all()
    assert np.array_equal(_draw(pipe, 0, guidance_scale), first)
    assert np.abs(_draw(pipe, 1, guidance_scale) - first).max() > 1e-3


def test_same_seed_gives_bit_identical_weights():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = _weights(tiny_flux_components(seed=0))
    assert torch.equal(torch.rand(3), expected), "building touched the global RNG"
    second, other = _weights(tiny_flux_components(seed=0)), _weights(tiny_flux_components(seed=1))
    assert first.keys() == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    for name in first:
        assert first[name].keys() == second[name].keys()
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key]), f"{name}.{key}"
        assert any(not torch.equal(first[name][k], other[name][k]) for k in first[name]), name


def test_tiny_flux_survives_save_and_load(dev_pipeline, tmp_path):
    from diffusers import FluxPipeline
    from transformers import T5TokenizerFast

    dev_pipeline.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer_2" / "tokenizer.json").is_file()
    loaded = FluxPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.tokenizer_2, T5TokenizerFast)
    assert loaded.tokenizer_2(PROMPT).input_ids == dev_pipeline.tokenizer_2(PROMPT).input_ids
    assert loaded.scheduler.config.use_dynamic_shifting
    # The same weights; loaded tensors sit elsewhere in memory, so CPU kernels may round in another order.
    np.testing.assert_allclose(_draw(loaded, 0, 3.5), _draw(dev_pipeline, 0, 3.5), rtol=0, atol=1e-5)


# Full-size random components


def test_full_size_components_have_flux1s_parameter_counts():
    """On the meta device nothing is allocated, so the real depths are cheap to check."""
    dev = random_flux_components(device="meta", dtype=torch.bfloat16)
    schnell = random_flux_components(device="meta", guidance_embeds=False)
    # The published sizes: FLUX.1-dev's transformer, its 16-channel VAE; CLIP ViT-L/14's text tower and
    # T5 v1.1 XXL's encoder once their embedding tables are given the real vocabularies back.
    assert _count(dev["transformer"]) == 11_901_408_320
    assert _count(dev["transformer"]) - _count(schnell["transformer"]) == 10_229_760  # the guidance embedder
    assert _count(dev["vae"]) == 83_819_683
    clip, t5 = dev["text_encoder"], dev["text_encoder_2"]
    assert _count(clip) + (49_408 - clip.config.vocab_size) * 768 == 123_060_480
    assert _count(t5) + (32_128 - t5.config.vocab_size) * 4096 == 4_762_310_656
    assert t5.config.vocab_size == len(dev["tokenizer_2"])
    parameter = next(dev["transformer"].parameters())
    assert parameter.device.type == "meta" and parameter.dtype == torch.bfloat16

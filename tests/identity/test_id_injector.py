"""The ID-Injector: the resampler equals diffusers' reading of the official IP-Adapter-Plus weights, the identity
branch equals IP-Adapter's processor unmasked and acts only inside a character's mask, files in the IP-Adapter
layout load by their key names, our checkpoints round-trip, and weights that do not fit are refused by name."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from storycast.adapters.tiny import tiny_ip_adapter_plus_weights
from storycast.attention.character_masks import CharacterMasks
from storycast.attention.injection import IdentityInjection, IdentityInjectionState, install_identity_injection
from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.identity.id_injector import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    IDInjector,
    InjectorConfig,
    build_injector,
    cross_attention_layers,
    read_injector_weights,
    save_injector,
)
from storycast.identity.resampler import Resampler, ResamplerConfig
from storycast.models.tiny import tiny_components

FEATURES = 32


@pytest.fixture(scope="module")
def unet():
    return tiny_components("sd15")["unet"]


@pytest.fixture(scope="module")
def official(unet):
    return tiny_ip_adapter_plus_weights(unet, FEATURES)


@torch.no_grad()
def test_resampler_equals_diffusers_reading_of_the_official_layout(unet, official):
    ours = Resampler(ResamplerConfig.from_state_dict(official["image_proj"]))
    ours.load_state_dict(official["image_proj"], strict=True)
    theirs = unet._convert_ip_adapter_image_proj_to_diffusers(official["image_proj"], low_cpu_mem_usage=False)
    features = torch.randn(2, 17, FEATURES, generator=torch.Generator().manual_seed(0))
    out = ours(features)
    assert out.shape == (2, 4, unet.config.cross_attention_dim)
    torch.testing.assert_close(out, theirs(features), atol=1e-5, rtol=1e-5)


def test_resampler_default_geometry_is_ip_adapter_plus_sd15():
    config = ResamplerConfig()
    assert (config.dim, config.depth, config.heads, config.num_queries, config.embedding_dim) == (768, 4, 12, 16, 1280)
    with torch.device("meta"):
        resampler = Resampler(config)
    assert resampler(torch.empty(1, 257, 1280, device="meta")).shape == (1, 16, 768)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()


def projections(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    to_k, to_v = torch.nn.Linear(12, 16, bias=False), torch.nn.Linear(12, 16, bias=False)
    with torch.no_grad():
        to_k.weight.copy_(torch.randn(16, 12, generator=generator))
        to_v.weight.copy_(torch.randn(16, 12, generator=generator))
    return to_k, to_v


def injection_state(identity, masks=None, scale=1.0, characters=(("mara",),)):
    return IdentityInjectionState(
        frames=len(characters), characters=characters, identity=identity, scale=scale, character_masks=masks
    )


@torch.no_grad()
def test_unmasked_branch_equals_ip_adapters_processor(layer):
    to_k, to_v = projections(layer)
    hidden = torch.randn(2, 16, 16)
    text = torch.randn(2, 7, 12)
    identity = torch.randn(2, 4, 12)
    ours = IdentityInjection(injection_state({"mara": identity}, scale=0.7), to_k, to_v)(layer, hidden, text)
    theirs = IPAdapterAttnProcessor2_0(16, 12, num_tokens=(4,), scale=0.7)
    theirs.to_k_ip[0].weight.copy_(to_k.weight)
    theirs.to_v_ip[0].weight.copy_(to_v.weight)
    expected = theirs(layer, hidden, (text, [identity[:, None]]))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_masked_branch_changes_the_output_only_inside_the_mask(layer):
    to_k, to_v = projections(layer)
    hidden, text, identity = torch.randn(2, 16, 16), torch.randn(2, 7, 12), torch.randn(2, 4, 12)
    masks = CharacterMasks([("mara",)], (4, 4))
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, :2] = True
    masks.set_fixed({(0, "mara"): inside})
    plain = IdentityInjection(injection_state({"mara": identity}, masks, scale=0.0), to_k, to_v)(layer, hidden, text)
    injected = IdentityInjection(injection_state({"mara": identity}, masks), to_k, to_v)(layer, hidden, text)
    changed = (injected - plain).abs().amax(dim=(0, 2)) > 1e-6
    assert torch.equal(changed, inside.reshape(-1))


@torch.no_grad()
def test_a_frame_gets_only_the_identities_of_the_characters_it_names(layer):
    to_k, to_v = projections(layer)
    hidden, text = torch.randn(4, 16, 16), torch.randn(4, 7, 12)
    identity = {"mara": torch.randn(2, 4, 12), "leo": torch.randn(2, 4, 12)}
    characters = (("mara",), ())
    out = IdentityInjection(injection_state(identity, characters=characters), to_k, to_v)(layer, hidden, text)
    plain = IdentityInjection(injection_state({}, characters=characters), to_k, to_v)(layer, hidden, text)
    torch.testing.assert_close(out[[1, 3]], plain[[1, 3]])  # frame 1 names nobody
    assert not torch.allclose(out[[0, 2]], plain[[0, 2]])


@torch.no_grad()
def test_scale_zero_equals_the_plain_unet(unet, official):
    weights = read_injector_weights(official, unet)
    injector = build_injector(weights, unet)
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, unet.config.cross_attention_dim)
    expected = unet(sample, 10, text).sample
    state = injection_state({"mara": torch.randn(2, 4, unet.config.cross_attention_dim)}, scale=0.0)
    with install_identity_injection(unet, state, injector):
        torch.testing.assert_close(unet(sample, 10, text).sample, expected, atol=1e-5, rtol=1e-5)
    state.scale = 1.0
    with install_identity_injection(unet, state, injector):
        assert not torch.allclose(unet(sample, 10, text).sample, expected, atol=1e-4)
    torch.testing.assert_close(unet(sample, 10, text).sample, expected)  # the handle restored the processors


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_a_file_in_the_ip_adapter_layout_loads_by_its_key_names(unet, official, tmp_path, suffix):
    path = tmp_path / f"ip-adapter-plus-face_sd15{suffix}"
    if suffix == ".bin":
        torch.save(official, path)
    else:
        from safetensors.torch import save_file

        flat = {f"{part}.{key}": value for part, state in official.items() for key, value in state.items()}
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    weights = read_injector_weights(path, unet)
    assert weights.layout == "ip-adapter"
    injector = build_injector(weights, unet)
    layers = cross_attention_layers(unet)
    assert len(layers) == len(official["ip_adapter"]) // 2
    third = layers[2][0]
    torch.testing.assert_close(injector.projections(third)[0].weight, official["ip_adapter"]["5.to_k_ip.weight"])
    torch.testing.assert_close(injector.resampler.latents, official["image_proj"]["latents"])


def test_our_checkpoint_round_trips(unet, tmp_path):
    config = InjectorConfig(
        ResamplerConfig(dim=32, depth=2, heads=2, num_queries=4, embedding_dim=FEATURES, output_dim=32)
    )
    injector = IDInjector.for_unet(unet, config)
    name = injector.layer_names[0]
    torch.testing.assert_close(injector.projections(name)[0].weight, dict(unet.named_modules())[name].to_k.weight)
    folder = save_injector(injector, tmp_path / "ckpt")
    assert (folder / CHECKPOINT_FILE).is_file() and (folder / CONFIG_FILE).is_file()
    for source in (folder, folder / CHECKPOINT_FILE):
        loaded = build_injector(read_injector_weights(source, unet), unet)
        assert loaded.config.resampler == config.resampler
        for key, value in injector.checkpoint_state().items():
            torch.testing.assert_close(loaded.checkpoint_state()[key], value)
    (folder / CONFIG_FILE).unlink()  # the file alone still knows its geometry (safetensors metadata)
    assert read_injector_weights(folder / CHECKPOINT_FILE, unet).config.resampler == config.resampler


def test_weights_for_another_model_are_refused_by_name(unet, tmp_path):
    sdxl_unet = tiny_components("sdxl")["unet"]
    path = tmp_path / "sdxl-adapter.bin"
    torch.save(tiny_ip_adapter_plus_weights(sdxl_unet, FEATURES), path)
    with pytest.raises(ModelLoadError, match=r"sdxl-adapter\.bin.*cross-attention layers.*Fix"):
        read_injector_weights(path, unet)
    injector = IDInjector.for_unet(sdxl_unet, InjectorConfig(ResamplerConfig(output_dim=64, dim=64, embedding_dim=8)))
    folder = save_injector(injector, tmp_path / "sdxl-ckpt")
    with pytest.raises(ModelLoadError, match=r"sdxl-ckpt.*64-wide identity tokens.*Fix"):
        build_injector(read_injector_weights(folder, unet), unet)


def test_unreadable_or_foreign_files_are_refused(unet, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors"):
        read_injector_weights(broken, unet)
    foreign = tmp_path / "other.bin"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ModelLoadError, match=r"other\.bin is not ID-Injector weights.*Fix"):
        read_injector_weights(foreign, unet)
    with pytest.raises(MissingWeightsError, match="neither a file"):
        read_injector_weights(tmp_path / "missing.safetensors", unet)
    with pytest.raises(MissingWeightsError, match=r"no storynizor\.safetensors"):
        read_injector_weights(tmp_path, unet)


def test_a_lora_without_its_geometry_is_refused_with_the_reason(unet):
    config = InjectorConfig(ResamplerConfig(dim=32, depth=1, heads=1, num_queries=2, embedding_dim=8, output_dim=32))
    state = IDInjector.for_unet(unet, config).checkpoint_state()
    state["lora.unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(4, 32)
    with pytest.raises(ModelLoadError, match=r"holds a LoRA .* no config giving its rank.*Fix"):
        read_injector_weights(state, unet)

"""PhotoMaker v2's ID encoder: the official parameter names and shapes, the ID-token math (checked against a
naive re-computation), loading the official file layout, and telling v1 from v2 by the keys."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from storycast.errors import ModelLoadError
from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder
from storycast.identity.photomaker_loading import (
    build_id_encoder_from_state_dict,
    build_photomaker_encoder,
    build_v2_id_encoder_from_state_dict,
    load_photomaker_state_dict,
    photomaker_version,
)
from storycast.identity.photomaker_v2 import PhotoMakerV2Config, PhotoMakerV2IDEncoder
from tests.identity.test_photomaker import OFFICIAL_KEYS as V1_KEYS
from tests.identity.test_photomaker_loading import LORA_KEYS, _lora

# qformer_perceiver.* of photomaker-v2.bin (TencentARC/PhotoMaker photomaker/model_v2.py ``QFormerPerceiver`` and
# resampler.py ``FacePerceiverResampler``; the names are those of TencentARC/PhotoMaker#194 and
# shiimizu/ComfyUI-PhotoMaker-Plus#35), with the shapes the official construction gives.
RESAMPLER = "qformer_perceiver.perceiver_resampler"
PER_LAYER_SHAPES = {
    "0.norm1.weight": (2048,),
    "0.norm1.bias": (2048,),
    "0.norm2.weight": (2048,),
    "0.norm2.bias": (2048,),
    "0.to_q.weight": (2048, 2048),  # 16 heads of 128
    "0.to_kv.weight": (4096, 2048),
    "0.to_out.weight": (2048, 2048),
    "1.0.weight": (2048,),
    "1.0.bias": (2048,),
    "1.1.weight": (8192, 2048),
    "1.3.weight": (2048, 8192),
}
V2_EXTRA_SHAPES = {
    "qformer_perceiver.token_proj.0.weight": (2048, 512),
    "qformer_perceiver.token_proj.0.bias": (2048,),
    "qformer_perceiver.token_proj.2.weight": (4096, 2048),
    "qformer_perceiver.token_proj.2.bias": (4096,),
    "qformer_perceiver.token_norm.weight": (2048,),
    "qformer_perceiver.token_norm.bias": (2048,),
    f"{RESAMPLER}.proj_in.weight": (2048, 1024),
    f"{RESAMPLER}.proj_in.bias": (2048,),
    f"{RESAMPLER}.proj_out.weight": (2048, 2048),
    f"{RESAMPLER}.proj_out.bias": (2048,),
    f"{RESAMPLER}.norm_out.weight": (2048,),
    f"{RESAMPLER}.norm_out.bias": (2048,),
    **{f"{RESAMPLER}.layers.{i}.{name}": shape for i in range(4) for name, shape in PER_LAYER_SHAPES.items()},
}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tiny(seed: int = 0) -> PhotoMakerV2IDEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PhotoMakerV2IDEncoder(PhotoMakerV2Config.tiny()).eval()


def _outputs(encoder: PhotoMakerV2IDEncoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder.embed(_randn(2, 3, 32, 32, seed=1), _randn(2, 512, seed=2) * 20)


def test_real_size_parameter_names_and_shapes_match_the_official_checkpoint():
    with torch.device("meta"):
        encoder = PhotoMakerV2IDEncoder(PhotoMakerV2Config.vit_l14())
    state = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert set(state) == V1_KEYS | set(V2_EXTRA_SHAPES)
    assert len(state) == 407 + 56
    assert {key: state[key] for key in V2_EXTRA_SHAPES} == V2_EXTRA_SHAPES
    assert state["visual_projection.weight"] == (768, 1024) and state["visual_projection_2.weight"] == (1280, 1024)


def test_config_geometry():
    official = PhotoMakerV2Config.vit_l14()
    assert (official.id_embed_dim, official.resampler_heads, official.num_tokens, official.face_embed_dim) == (
        2048,
        16,
        2,
        512,
    )
    tiny = PhotoMakerV2Config.tiny()
    assert (tiny.id_embed_dim, tiny.resampler_heads, tiny.hidden_size) == (64, 4, 32)
    with pytest.raises(ValueError, match="divisible by resampler_dim_head=128"):
        PhotoMakerV2Config(**{**vars(PhotoMakerConfig.tiny())})
    with pytest.raises(TypeError, match="PhotoMakerV2Config"):
        PhotoMakerV2IDEncoder(PhotoMakerConfig.tiny())  # type: ignore[arg-type]


def _naive_id_tokens(encoder: PhotoMakerV2IDEncoder, pixels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """The ID tokens written out step by step: token_proj, token_norm, then 4 perceiver layers whose queries are
    the tokens and whose keys and values are [CLIP hidden states ; tokens], softmax(q k^T / sqrt(d_head))."""
    config = encoder.config
    qformer = encoder.qformer_perceiver
    hidden = encoder.vision_model(pixel_values=pixels).last_hidden_state  # before post_layernorm
    projection = qformer.token_proj
    x = projection[2](torch.nn.functional.gelu(projection[0](faces)))
    tokens = torch.nn.functional.layer_norm(
        x.reshape(-1, 2, config.id_embed_dim),
        (config.id_embed_dim,),
        qformer.token_norm.weight,
        qformer.token_norm.bias,
    )
    resampler = qformer.perceiver_resampler
    features = resampler.proj_in(hidden)
    latents = tokens
    heads, d_head = config.resampler_heads, config.resampler_dim_head
    for attention, ff in resampler.layers:
        f, lat = attention.norm1(features), attention.norm2(latents)
        q = attention.to_q(lat)
        k, v = attention.to_kv(torch.cat([f, lat], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d_head).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d_head), dim=-1)
        out = (weights @ split(v)).transpose(1, 2).reshape(lat.shape[0], lat.shape[1], heads * d_head)
        latents = attention.to_out(out) + latents
        latents = ff[3](torch.nn.functional.gelu(ff[1](ff[0](latents)))) + latents
    return tokens + resampler.norm_out(resampler.proj_out(latents))


def test_id_tokens_are_the_official_computation():
    encoder = _tiny()
    pixels, faces = _randn(3, 3, 32, 32, seed=3), _randn(3, 512, seed=4) * 20
    with torch.no_grad():
        tokens = encoder.embed(pixels, faces)
        expected = _naive_id_tokens(encoder, pixels, faces)
    assert tokens.shape == (3, 2, 64)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # each photo's tokens depend on its own face embedding
        other = encoder.embed(pixels, torch.cat([faces[:1] * -1, faces[1:]]))
    assert not torch.allclose(other[0], tokens[0]) and torch.equal(other[1:], tokens[1:])


def test_only_the_tower_and_the_arcface_branch_make_the_tokens():
    """v2 reads the tower's last hidden state: post_layernorm and the two projections (in the file) are unused."""
    encoder = _tiny()
    before = _outputs(encoder)
    with torch.no_grad():
        for unused in (encoder.visual_projection, encoder.visual_projection_2, encoder.vision_model.post_layernorm):
            for parameter in unused.parameters():
                parameter.add_(1.0)
    assert torch.equal(_outputs(encoder), before)
    with torch.no_grad():
        encoder.vision_model.encoder.layers[0].mlp.fc1.bias.add_(1.0)
    assert not torch.allclose(_outputs(encoder), before)


def test_inputs_of_the_wrong_shape_are_refused():
    encoder = _tiny()
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(n, 3, 32, 32\)"):
        encoder.embed(_randn(1, 3, 16, 16), _randn(1, 512))
    with pytest.raises(ValueError, match=r"face_embeds must have shape \(2, 512\): one ArcFace embedding per photo"):
        encoder.embed(_randn(2, 3, 32, 32), _randn(1, 512))


def test_fuse_puts_each_token_into_its_own_copy_of_the_class_token():
    encoder = _tiny()
    prompt = _randn(1, 12, 64, seed=5)
    tokens = _outputs(encoder).reshape(1, 4, 64)  # 2 photos x 2 tokens
    with torch.no_grad():
        out = encoder.fuse(prompt, tokens, [3, 4, 5, 6])
        for k, position in enumerate([3, 4, 5, 6]):
            torch.testing.assert_close(out[0, position], encoder.fuse_module(prompt[0, position], tokens[0, k]))
    assert torch.equal(out[0, :3], prompt[0, :3]) and torch.equal(out[0, 7:], prompt[0, 7:])


# ----------------------------------------------------------------------------------------------
# Files


@pytest.fixture
def official_v2_file(tmp_path):
    encoder = _tiny()
    path = tmp_path / "photomaker-v2.bin"
    torch.save({"id_encoder": encoder.state_dict(), "lora_weights": _lora()}, path)
    return encoder, path


def test_official_v2_layout_loads_from_a_folder_and_from_the_file(official_v2_file):
    encoder, path = official_v2_file
    for weights in (
        load_photomaker_state_dict(path.parent, weight_name="photomaker-v2.bin"),
        load_photomaker_state_dict(path),
    ):
        assert weights.version == "v2" and set(weights.lora_weights) == set(LORA_KEYS)
        loaded = build_photomaker_encoder(weights.id_encoder, PhotoMakerV2Config.tiny())
        assert isinstance(loaded, PhotoMakerV2IDEncoder) and not loaded.training
        assert torch.equal(_outputs(loaded), _outputs(encoder))
    assert not torch.allclose(_outputs(_tiny(seed=5)), _outputs(encoder))


def test_flat_safetensors_v2_layout(tmp_path):
    encoder = _tiny()
    flat = {f"id_encoder.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
    flat.update({f"lora_weights.{key}": value for key, value in _lora().items()})
    save_file(flat, str(tmp_path / "photomaker-v2.safetensors"))
    weights = load_photomaker_state_dict(tmp_path, weight_name="photomaker-v2.safetensors")
    loaded = build_photomaker_encoder(weights.id_encoder, PhotoMakerV2Config.tiny())
    assert torch.equal(_outputs(loaded), _outputs(encoder))


def test_the_version_is_read_from_the_keys():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        v1 = PhotoMakerIDEncoder(PhotoMakerConfig.tiny()).state_dict()
    v2 = _tiny().state_dict()
    assert photomaker_version(v1) == "v1" and photomaker_version(v2) == "v2"
    assert isinstance(build_photomaker_encoder(v1, PhotoMakerConfig.tiny()), PhotoMakerIDEncoder)
    assert isinstance(build_photomaker_encoder(v2, PhotoMakerV2Config.tiny()), PhotoMakerV2IDEncoder)
    assert build_photomaker_encoder(v2, PhotoMakerV2Config.tiny()).version == "v2"
    with pytest.raises(ModelLoadError, match=r"weights are v2 .* a v1 PhotoMakerConfig was given"):
        build_photomaker_encoder(v2, PhotoMakerConfig.tiny())
    with pytest.raises(ModelLoadError, match=r"weights are v1 .* a PhotoMakerV2Config was given"):
        build_photomaker_encoder(v1, PhotoMakerV2Config.tiny())


def test_each_builder_names_the_other_version():
    v2 = _tiny().state_dict()
    with pytest.raises(ModelLoadError) as caught:
        build_id_encoder_from_state_dict(v2, PhotoMakerConfig.tiny())
    assert "56 unexpected: qformer_perceiver." in str(caught.value)
    assert "looks like PhotoMaker v2 (photomaker-v2.bin)" in str(caught.value)
    v1 = {key: value for key, value in v2.items() if not key.startswith("qformer_perceiver.")}
    with pytest.raises(ModelLoadError, match=r"56 missing: qformer_perceiver\..*looks like PhotoMaker v1"):
        build_v2_id_encoder_from_state_dict(v1, PhotoMakerV2Config.tiny())


def test_v2_wrong_shapes_are_listed_and_position_ids_ignored():
    state = dict(_tiny().state_dict())
    state["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    assert torch.equal(
        _outputs(build_v2_id_encoder_from_state_dict(state, PhotoMakerV2Config.tiny())), _outputs(_tiny())
    )
    state["qformer_perceiver.token_norm.weight"] = torch.zeros(2048)  # the real width into the tiny geometry
    with pytest.raises(ModelLoadError, match=r"wrong shape: qformer_perceiver\.token_norm\.weight: file \(2048,\) vs"):
        build_v2_id_encoder_from_state_dict(state, PhotoMakerV2Config.tiny())

import pytest
import torch
from safetensors.torch import save_file

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder
from storycast.identity.photomaker_loading import (
    build_id_encoder_from_state_dict,
    load_photomaker_state_dict,
)

# Key layout of PhotoMaker's UNet LoRA as stored in photomaker-v1.bin (diffusers' old attention-processor
# LoRA format; names as reported in shiimizu/ComfyUI-PhotoMaker-Plus#19).
LORA_KEYS = [
    f"unet.down_blocks.1.attentions.0.transformer_blocks.0.{attn}.processor.to_{proj}_lora.{side}.weight"
    for attn in ("attn1", "attn2")
    for proj in ("q", "k", "v", "out")
    for side in ("down", "up")
]


def _tiny_encoder(seed: int = 0) -> PhotoMakerIDEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PhotoMakerIDEncoder(PhotoMakerConfig.tiny()).eval()


def _lora() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {key: torch.randn(4, 8, generator=generator) for key in LORA_KEYS}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.randn(2, 77, 64, generator=generator)


def _outputs(encoder: PhotoMakerIDEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, prompt = _inputs()
    with torch.no_grad():
        identity = encoder.embed(pixels)
        return identity, encoder.fuse(prompt, identity, [4])


@pytest.fixture
def official_file(tmp_path):
    encoder = _tiny_encoder()
    path = tmp_path / "photomaker-v1.bin"
    torch.save({"id_encoder": encoder.state_dict(), "lora_weights": _lora()}, path)
    return encoder, path


def test_official_layout_round_trip(official_file):
    encoder, path = official_file
    weights = load_photomaker_state_dict(path)
    assert weights.source == str(path)
    assert set(weights.lora_weights) == set(LORA_KEYS)
    loaded = build_id_encoder_from_state_dict(weights.id_encoder, PhotoMakerConfig.tiny())
    assert not loaded.training
    for expected, actual in zip(_outputs(encoder), _outputs(loaded), strict=True):
        assert torch.equal(expected, actual)
    different = _outputs(_tiny_encoder(seed=5))[0]
    assert not torch.allclose(different, _outputs(loaded)[0])


def test_folder_and_weight_name(official_file):
    encoder, path = official_file
    weights = load_photomaker_state_dict(path.parent)
    assert torch.equal(weights.id_encoder["visual_projection_2.weight"], encoder.visual_projection_2.weight)
    with pytest.raises(MissingWeightsError, match=r"has no PhotoMaker file 'photomaker-v2\.bin'"):
        load_photomaker_state_dict(path.parent, weight_name="photomaker-v2.bin")


def test_flat_safetensors_layout(tmp_path):
    encoder = _tiny_encoder()
    flat = {f"id_encoder.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
    flat.update({f"lora_weights.{key}": value for key, value in _lora().items()})
    path = tmp_path / "photomaker-v1.safetensors"
    save_file(flat, str(path))
    weights = load_photomaker_state_dict(tmp_path, weight_name="photomaker-v1.safetensors")
    assert set(weights.lora_weights) == set(LORA_KEYS)
    loaded = build_id_encoder_from_state_dict(weights.id_encoder, PhotoMakerConfig.tiny())
    assert torch.equal(_outputs(encoder)[1], _outputs(loaded)[1])


def test_state_dict_input():
    encoder = _tiny_encoder()
    weights = load_photomaker_state_dict({"id_encoder": encoder.state_dict(), "lora_weights": _lora()})
    assert weights.source == "<state dict>"
    assert set(weights.id_encoder) == set(encoder.state_dict())


def test_missing_top_level_key_names_the_file(tmp_path):
    path = tmp_path / "not-photomaker.bin"
    torch.save({"id_encoder": _tiny_encoder().state_dict()}, path)
    with pytest.raises(ModelLoadError, match=r"not-photomaker\.bin is not a PhotoMaker adapter.*'lora_weights'"):
        load_photomaker_state_dict(path)
    torch.save({"unet.foo.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=r"has \['unet\.foo\.weight'\]"):
        load_photomaker_state_dict(path)


def test_unreadable_file_is_a_load_error(tmp_path):
    path = tmp_path / "photomaker-v1.bin"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="Could not read"):
        load_photomaker_state_dict(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "photomaker-v1.bin"
    torch.save({"id_encoder": {"x": torch.zeros(1)}, "lora_weights": {"y": torch.zeros(1)}, "code": object()}, path)
    with pytest.raises(ModelLoadError, match="Could not read"):
        load_photomaker_state_dict(path)


def test_wrong_shapes_are_listed():
    state = _tiny_encoder().state_dict()
    state["visual_projection_2.weight"] = torch.zeros(41, 32)
    with pytest.raises(
        ModelLoadError, match=r"1 wrong shape: visual_projection_2\.weight: file \(41, 32\) vs model \(40, 32\)"
    ):
        build_id_encoder_from_state_dict(state, PhotoMakerConfig.tiny())


def test_tiny_file_into_the_real_config_reports_shapes():
    with pytest.raises(ModelLoadError, match=r"wrong shape: .*PhotoMakerConfig\.vit_l14"):
        build_id_encoder_from_state_dict(
            {key: value for key, value in _tiny_encoder().state_dict().items() if "layers.1." not in key},
            PhotoMakerConfig(
                hidden_size=64,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=1,
                image_size=32,
                patch_size=8,
                projection_dim=24,
                projection_dim_2=40,
            ),
        )


def test_missing_and_unexpected_keys_are_listed():
    state = _tiny_encoder().state_dict()
    del state["fuse_module.layer_norm.bias"]
    state["qformer_perceiver.proj.weight"] = torch.zeros(2, 2)
    with pytest.raises(ModelLoadError) as caught:
        build_id_encoder_from_state_dict(state, PhotoMakerConfig.tiny())
    message = str(caught.value)
    assert "1 missing: fuse_module.layer_norm.bias" in message
    assert "1 unexpected: qformer_perceiver.proj.weight" in message
    assert "PhotoMaker v2" in message


def test_old_transformers_position_ids_buffer_is_ignored():
    encoder = _tiny_encoder()
    state = dict(encoder.state_dict())
    state["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    loaded = build_id_encoder_from_state_dict(state, PhotoMakerConfig.tiny())
    assert torch.equal(_outputs(encoder)[0], _outputs(loaded)[0])


def test_hub_id_offline_is_a_missing_weights_error(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        load_photomaker_state_dict("TencentARC/PhotoMaker", cache_dir=tmp_path, local_files_only=True)
    message = str(caught.value)
    assert "'photomaker-v1.bin'" in message
    assert "'TencentARC/PhotoMaker'" in message
    assert "pass the local file or its folder" in message


def test_nonexistent_path_is_a_missing_weights_error(tmp_path):
    with pytest.raises(MissingWeightsError, match="neither a file, a folder nor"):
        load_photomaker_state_dict(tmp_path / "nowhere" / "photomaker-v1.bin")

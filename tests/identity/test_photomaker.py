import pytest
import torch

from storycast.identity.photomaker import (
    FuseModule,
    PhotoMakerConfig,
    PhotoMakerIDEncoder,
    class_tokens_mask,
    fuse_class_tokens,
)

NUM_LAYERS_VIT_L = 24
PER_LAYER = [
    f"{module}.{kind}"
    for module in (
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.q_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "mlp.fc1",
        "mlp.fc2",
        "layer_norm2",
    )
    for kind in ("weight", "bias")
]
FUSE_KEYS = [
    f"fuse_module.{mlp}.{layer}.{kind}"
    for mlp in ("mlp1", "mlp2")
    for layer in ("layernorm", "fc1", "fc2")
    for kind in ("weight", "bias")
] + ["fuse_module.layer_norm.weight", "fuse_module.layer_norm.bias"]
# Names of the official photomaker-v1.bin "id_encoder" state dict: CLIPVisionModelWithProjection (ViT-L/14)
# + visual_projection_2 + fuse_module (TencentARC/PhotoMaker photomaker/model.py).
OFFICIAL_KEYS = {
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding.weight",
    "vision_model.pre_layrnorm.weight",
    "vision_model.pre_layrnorm.bias",
    "vision_model.post_layernorm.weight",
    "vision_model.post_layernorm.bias",
    "visual_projection.weight",
    "visual_projection_2.weight",
    *FUSE_KEYS,
    *(f"vision_model.encoder.layers.{i}.{name}" for i in range(NUM_LAYERS_VIT_L) for name in PER_LAYER),
}
OFFICIAL_SHAPES = {
    "vision_model.embeddings.class_embedding": (1024,),
    "vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
    "vision_model.embeddings.position_embedding.weight": (257, 1024),
    "vision_model.encoder.layers.23.mlp.fc1.weight": (4096, 1024),
    "visual_projection.weight": (768, 1024),
    "visual_projection_2.weight": (1280, 1024),
    "fuse_module.mlp1.layernorm.weight": (4096,),
    "fuse_module.mlp1.fc1.weight": (2048, 4096),
    "fuse_module.mlp1.fc2.weight": (2048, 2048),
    "fuse_module.mlp2.fc1.weight": (2048, 2048),
    "fuse_module.layer_norm.weight": (2048,),
}


@pytest.fixture(scope="module")
def real_size_on_meta() -> PhotoMakerIDEncoder:
    with torch.device("meta"):
        return PhotoMakerIDEncoder(PhotoMakerConfig.vit_l14())


@pytest.fixture
def tiny() -> PhotoMakerIDEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # module init draws from the global generator; keep it local to this fixture
        return PhotoMakerIDEncoder(PhotoMakerConfig.tiny()).eval()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_real_size_parameter_names_match_the_official_checkpoint(real_size_on_meta):
    state = real_size_on_meta.state_dict()
    assert set(state) == OFFICIAL_KEYS
    assert len(state) == 407
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_real_size_matches_the_official_construction(real_size_on_meta):
    """Official: CLIPVisionModelWithProjection(ViT-L/14) + visual_projection_2 + fuse_module(2048)."""
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        stock = CLIPVisionModelWithProjection(PhotoMakerConfig.vit_l14().vision_config())
    stock_shapes = {key: tuple(value.shape) for key, value in stock.state_dict().items()}
    ours = {key: tuple(value.shape) for key, value in real_size_on_meta.state_dict().items()}
    extra = {key: shape for key, shape in ours.items() if key not in stock_shapes}
    assert {key: ours[key] for key in stock_shapes} == stock_shapes
    assert set(extra) == {"visual_projection_2.weight", *FUSE_KEYS}


def test_config_geometry():
    assert PhotoMakerConfig.vit_l14().id_embed_dim == 2048
    assert PhotoMakerConfig.tiny().id_embed_dim == 64
    vision = PhotoMakerConfig.vit_l14().vision_config()
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (1024, 24, 14, 224)
    with pytest.raises(ValueError, match="hidden_size"):
        PhotoMakerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        PhotoMakerConfig(image_size=8, patch_size=14)


def test_embedding_is_the_concatenation_of_both_projections(tiny):
    pixels = _randn(3, 3, 32, 32)
    with torch.no_grad():
        embeddings = tiny.embed(pixels)
        pooled = tiny.vision_model(pixel_values=pixels).pooler_output
    assert embeddings.shape == (3, 64)
    torch.testing.assert_close(embeddings[:, :24], pooled @ tiny.visual_projection.weight.T)
    torch.testing.assert_close(embeddings[:, 24:], pooled @ tiny.visual_projection_2.weight.T)
    with pytest.raises(ValueError, match="pixel_values"):
        tiny.embed(_randn(3, 3, 16, 16))


def test_fuse_module_formula():
    fuse = FuseModule(8).eval()
    text, identity = _randn(5, 8, seed=1), _randn(5, 8, seed=2)

    def mlp(block, x):
        return block.fc2(torch.nn.functional.gelu(block.fc1(block.layernorm(x))))

    hidden = mlp(fuse.mlp1, torch.cat([text, identity], dim=-1)) + text
    expected = fuse.layer_norm(mlp(fuse.mlp2, hidden) + hidden)
    torch.testing.assert_close(fuse(text, identity), expected)


def test_fuse_replaces_only_the_class_token_positions(tiny):
    prompt = _randn(2, 77, 64, seed=3)
    identity = _randn(64, seed=4)
    with torch.no_grad():
        out = tiny.fuse(prompt, identity, [5])
        expected = tiny.fuse_module(prompt[:, 5], identity.expand(2, 64))
    keep = torch.ones(77, dtype=torch.bool)
    keep[5] = False
    assert torch.equal(out[:, keep], prompt[:, keep])
    torch.testing.assert_close(out[:, 5], expected)
    assert not torch.equal(out[:, 5], prompt[:, 5])


def test_fuse_batched_masks_per_row_identities_and_untouched_rows(tiny):
    prompt = _randn(3, 10, 64, seed=5)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 2] = True
    mask[2, 7] = True  # row 1 (e.g. the uncond half) has no class token
    identities = _randn(3, 64, seed=6)
    with torch.no_grad():
        out = fuse_class_tokens(tiny.fuse_module, prompt, identities, mask)
        torch.testing.assert_close(out[0, 2], tiny.fuse_module(prompt[0, 2], identities[0]))
        torch.testing.assert_close(out[2, 7], tiny.fuse_module(prompt[2, 7], identities[2]))
    assert torch.equal(out[1], prompt[1])
    assert torch.equal(out[~mask], prompt[~mask])


def test_fuse_with_one_embedding_per_class_token_matches_a_loop(tiny):
    prompt = _randn(2, 12, 64, seed=7)
    positions = [3, 4]  # the class token repeated for two ID images, as in PhotoMaker with 2 photos
    per_token = _randn(2, 2, 64, seed=8)
    with torch.no_grad():
        out = fuse_class_tokens(tiny.fuse_module, prompt, per_token, torch.tensor(positions))
        for row in range(2):
            for k, position in enumerate(positions):
                torch.testing.assert_close(
                    out[row, position], tiny.fuse_module(prompt[row, position], per_token[row, k])
                )
    assert torch.equal(prompt, _randn(2, 12, 64, seed=7)), "the input must not be modified"


def test_fuse_keeps_the_prompt_dtype(tiny):
    prompt = _randn(1, 6, 64, seed=9).half()
    with torch.no_grad():
        out = tiny.fuse(prompt, _randn(1, 64, seed=10), torch.tensor([False, True, False, False, False, False]))
    assert out.dtype == torch.float16
    assert torch.equal(out[0, 0], prompt[0, 0])


@pytest.mark.parametrize(
    ("id_shape", "class_tokens", "message"),
    [
        ((64,), [12], r"positions must be integers in \[0, 10\)"),
        ((32,), [1], "end in dimension 64"),
        ((4, 64), [1], "id_embeds must have shape"),
        ((2, 3, 64), [1, 2], "class tokens"),
        ((64,), torch.zeros(3, 10, dtype=torch.bool), "mask must have shape"),
    ],
)
def test_fuse_rejects_bad_inputs(tiny, id_shape, class_tokens, message):
    with pytest.raises(ValueError, match=message):
        tiny.fuse(_randn(2, 10, 64), _randn(*id_shape), class_tokens)


def test_class_tokens_mask_forms():
    from_positions = class_tokens_mask([1, 3], batch_size=2, seq_len=5)
    from_mask = class_tokens_mask(torch.tensor([False, True, False, True, False]), batch_size=2, seq_len=5)
    assert torch.equal(from_positions, from_mask)
    assert from_positions.shape == (2, 5)
    assert from_positions.sum() == 4

"""PuLID-FLUX's modules and its ID branch on diffusers' FLUX: the official key layout, loading checked by shape, the
encoder and the branch against naive references written from the authors' ``encoders_transformer.py`` and
``flux/model.py``; detached and weight 0 are FLUX exactly; a mask, a row without identity and the start step are
respected."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from storycast.errors import ModelLoadError
from storycast.identity.pulid_flux import PuLIDFlux, PuLIDFluxConfig, load_pulid_flux
from storycast.identity.pulid_flux_branch import IDTarget, PuLIDFluxBranch, token_mask
from storycast.models.flux_components import tiny_flux_components
from tests.helpers import flux_transformer_inputs

GRID = (4, 6)


def official_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of pulid_flux_v0.9.1.safetensors, listed from the module definitions of
    ``pulid/encoders_transformer.py`` (IDFormer(), PerceiverAttentionCA() x 20) and ``load_pretrain``'s prefixes."""
    keys = {"pulid_encoder.latents": (1, 32, 1024), "pulid_encoder.proj_out": (1024, 2048)}
    for layer in range(10):
        p = f"pulid_encoder.layers.{layer}"
        for norm in ("norm1", "norm2"):
            keys |= {f"{p}.0.{norm}.weight": (1024,), f"{p}.0.{norm}.bias": (1024,)}
        keys |= {
            f"{p}.0.to_q.weight": (1024, 1024),
            f"{p}.0.to_kv.weight": (2048, 1024),
            f"{p}.0.to_out.weight": (1024, 1024),
        }
        keys |= {
            f"{p}.1.0.weight": (1024,),
            f"{p}.1.0.bias": (1024,),
            f"{p}.1.1.weight": (4096, 1024),
            f"{p}.1.3.weight": (1024, 4096),
        }
    for name, first, last in [(f"mapping_{i}", 1024, 1024) for i in range(5)] + [("id_embedding_mapping", 1280, 5120)]:
        p = f"pulid_encoder.{name}"
        keys |= {
            f"{p}.0.weight": (1024, first),
            f"{p}.0.bias": (1024,),
            f"{p}.3.weight": (1024, 1024),
            f"{p}.3.bias": (1024,),
        }
        keys |= {f"{p}.6.weight": (last, 1024), f"{p}.6.bias": (last,)}
        keys |= {f"{p}.{n}.{w}": (1024,) for n in (1, 4) for w in ("weight", "bias")}
    for n in range(19 // 2 + 38 // 4 + 2):
        p = f"pulid_ca.{n}"
        keys |= {
            f"{p}.norm1.weight": (2048,),
            f"{p}.norm1.bias": (2048,),
            f"{p}.norm2.weight": (3072,),
            f"{p}.norm2.bias": (3072,),
        }
        keys |= {
            f"{p}.to_q.weight": (2048, 3072),
            f"{p}.to_kv.weight": (4096, 2048),
            f"{p}.to_out.weight": (3072, 2048),
        }
    return keys


def test_the_official_model_has_the_weight_files_keys_and_shapes():
    with torch.device("meta"):
        model = PuLIDFlux(PuLIDFluxConfig.official())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_layout()
    assert model.config.num_ca == 20
    assert model.config.double_insertions == list(range(0, 19, 2))
    assert model.config.single_insertions == list(range(0, 38, 4))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PuLIDFlux(PuLIDFluxConfig.tiny(double_interval=1, single_interval=2)).eval()


def test_a_tiny_file_saves_loads_and_round_trips(tiny, tmp_path):
    path = tmp_path / "pulid_flux_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_pulid_flux(path, config=tiny.config)
    assert loaded.state_dict().keys() == tiny.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
    condition, hidden = _encoder_inputs(tiny.config)
    assert torch.equal(loaded.id_tokens(condition, hidden), tiny.id_tokens(condition, hidden))
    assert loaded.id_tokens(condition, hidden).shape == (2, 4, 12)


def test_a_wrong_shape_or_a_missing_key_is_refused_naming_the_file_the_key_and_the_fix(tiny, tmp_path):
    weights = {k: v.clone() for k, v in tiny.state_dict().items()}
    weights["pulid_ca.1.to_kv.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(weights, str(path))
    with pytest.raises(
        ModelLoadError, match=r"bad\.safetensors.*pulid_ca\.1\.to_kv\.weight.*\(3, 3\).*Fix: pass pulid_flux_v0\.9\.1"
    ):
        load_pulid_flux(path, config=tiny.config)
    del weights["pulid_ca.1.to_kv.weight"]
    with pytest.raises(ModelLoadError, match=r"missing keys \['pulid_ca\.1\.to_kv\.weight'\]"):
        load_pulid_flux(weights, config=tiny.config)
    # The official intervals make fewer CA modules on the tiny transformer: the file's extra ones are named.
    with pytest.raises(ModelLoadError, match=r"unexpected keys \['pulid_ca\.2\."):
        load_pulid_flux(tiny.state_dict(), config=PuLIDFluxConfig.tiny())


# -- naive references, written from pulid/encoders_transformer.py and flux/model.py ------------------------------


def naive_perceiver(module, x, latents, with_latents):
    """PerceiverAttention (keys over [x, latents]) or PerceiverAttentionCA (keys over x): reshape_tensor, q and k
    scaled by dim_head^-1/4, softmax in float."""
    x, latents = module.norm1(x), module.norm2(latents)
    b, seq_len, _ = latents.shape
    q = module.to_q(latents)
    k, v = module.to_kv(torch.cat((x, latents), dim=-2) if with_latents else x).chunk(2, dim=-1)
    q, k, v = (t.view(b, t.shape[1], module.heads, -1).transpose(1, 2) for t in (q, k, v))
    scale = 1 / math.sqrt(math.sqrt(module.dim_head))
    weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1)
    return module.to_out((weight @ v).permute(0, 2, 1, 3).reshape(b, seq_len, -1))


def naive_idformer(encoder, x, y):
    c = encoder.config
    latents = encoder.latents.repeat(x.size(0), 1, 1)
    x = encoder.id_embedding_mapping(x).reshape(-1, c.num_id_token, c.dim)
    latents = torch.cat((latents, x), dim=1)
    depth = c.depth // 5
    for i in range(5):
        ctx = torch.cat((x, getattr(encoder, f"mapping_{i}")(y[i])), dim=1)
        for attn, ff in encoder.layers[i * depth : (i + 1) * depth]:
            latents = naive_perceiver(attn, ctx, latents, True) + latents
            latents = ff(latents) + latents
    return latents[:, : c.num_queries] @ encoder.proj_out


def _encoder_inputs(config, rows=2):
    g = torch.Generator().manual_seed(1)
    condition = torch.randn(rows, config.id_dim, generator=g)
    return condition, [torch.randn(rows, 9, config.vit_width, generator=g) for _ in range(5)]


def test_the_id_encoder_equals_a_naive_idformer(tiny):
    condition, hidden = _encoder_inputs(tiny.config)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny.id_tokens(condition, hidden), naive_idformer(tiny.pulid_encoder, condition, hidden)
        )
        uncond = tiny.uncond_id_tokens(condition, hidden)
        zeros = naive_idformer(tiny.pulid_encoder, torch.zeros_like(condition), [torch.zeros_like(h) for h in hidden])
    torch.testing.assert_close(uncond, zeros)


def naive_flux_with_pulid(transformer, ca, id_tokens, id_weight, inputs, double_interval, single_interval):
    """flux/model.py's forward on diffusers' blocks: after double block i with i % double_interval == 0,
    img = img + id_weight * ca[ca_idx](id, img); the single blocks' image part likewise."""
    img = transformer.x_embedder(inputs["hidden_states"])
    temb = transformer.time_text_embed(
        inputs["timestep"] * 1000, inputs["guidance"] * 1000, inputs["pooled_projections"]
    )
    txt = transformer.context_embedder(inputs["encoder_hidden_states"])
    pe = transformer.pos_embed(torch.cat((inputs["txt_ids"], inputs["img_ids"]), dim=0))
    ca_idx = 0
    for i, block in enumerate(transformer.transformer_blocks):
        txt, img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb, image_rotary_emb=pe)
        if i % double_interval == 0 and id_tokens is not None:
            img = img + id_weight * naive_perceiver(ca[ca_idx], id_tokens, img, False)
            ca_idx += 1
    for i, block in enumerate(transformer.single_transformer_blocks):
        txt, real_img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb, image_rotary_emb=pe)
        if i % single_interval == 0 and id_tokens is not None:
            real_img = real_img + id_weight * naive_perceiver(ca[ca_idx], id_tokens, real_img, False)
            ca_idx += 1
        img = real_img
    return transformer.proj_out(transformer.norm_out(img, temb))


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_components()["transformer"].eval()


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


def _id_tokens(tiny, rows=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, tiny.config.output_dim, generator=g) * 3


@pytest.mark.parametrize(("double_interval", "single_interval"), [(1, 2), (2, 4)])
def test_the_branch_equals_a_naive_forward_of_their_flux_model(transformer, double_interval, single_interval):
    torch.manual_seed(0)
    config = PuLIDFluxConfig.tiny(double_interval=double_interval, single_interval=single_interval)
    pulid = PuLIDFlux(config).eval()
    for p in pulid.parameters():  # LayerNorms away from the identity, so that every weight matters
        p.data += 0.1 * torch.randn_like(p)
    inputs = flux_transformer_inputs(transformer, 2, 7, GRID)
    tokens = _id_tokens(pulid)
    with PuLIDFluxBranch.attach(
        transformer, pulid.pulid_ca, double_interval=double_interval, single_interval=single_interval
    ) as branch:
        branch.set_rows([[IDTarget(tokens[0], weight=0.8)], [IDTarget(tokens[1], weight=0.8)]])
        ours = _forward(transformer, inputs)
    with torch.no_grad():
        naive = naive_flux_with_pulid(
            transformer, pulid.pulid_ca, tokens, 0.8, inputs, double_interval, single_interval
        )
        vanilla = naive_flux_with_pulid(
            transformer, pulid.pulid_ca, None, 0.8, inputs, double_interval, single_interval
        )
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-5)
    assert (ours - vanilla).abs().max() > 1e-3  # the identity changed the prediction
    assert not branch.attached


def test_detached_and_weight_zero_are_flux_exactly(transformer, tiny):
    inputs = flux_transformer_inputs(transformer, 2, 7, GRID)
    vanilla = _forward(transformer, inputs)
    tokens = _id_tokens(tiny)
    branch = PuLIDFluxBranch.attach(transformer, tiny.pulid_ca, double_interval=1, single_interval=2)
    branch.set_rows([[IDTarget(tokens[0], weight=0.0)], [IDTarget(tokens[1], weight=0.0)]])
    assert torch.equal(_forward(transformer, inputs), vanilla)
    branch.set_rows([[IDTarget(tokens[0])], [IDTarget(tokens[1])]])
    assert not torch.equal(_forward(transformer, inputs), vanilla)
    branch.detach()
    assert torch.equal(_forward(transformer, inputs), vanilla)


def test_rows_without_identity_and_steps_before_the_start_are_flux_exactly(transformer, tiny):
    inputs = flux_transformer_inputs(transformer, 3, 7, GRID)
    vanilla = _forward(transformer, inputs)
    tokens = _id_tokens(tiny, rows=3)
    with PuLIDFluxBranch.attach(transformer, tiny.pulid_ca, double_interval=1, single_interval=2) as branch:
        with branch.rows([[IDTarget(tokens[0])], [], [IDTarget(tokens[1]), IDTarget(tokens[2], weight=0.5)]]):
            mixed = _forward(transformer, inputs)
        assert torch.equal(_forward(transformer, inputs), vanilla)  # rows cleared after the block
        assert torch.equal(mixed[1], vanilla[1])
        assert not torch.equal(mixed[0], vanilla[0]) and not torch.equal(mixed[2], vanilla[2])
        branch.set_rows([[IDTarget(t, start_step=2)] for t in tokens])
        branch.begin_step(1, torch.tensor(500.0))
        assert torch.equal(_forward(transformer, inputs), vanilla)
        branch.begin_step(2, torch.tensor(400.0))
        assert not torch.equal(_forward(transformer, inputs), vanilla)
        branch.set_rows([[IDTarget(tokens[0])]])
        with pytest.raises(ValueError, match="1 rows and the denoiser batch has 3"):
            _forward(transformer, inputs)


def test_a_masked_identity_changes_only_the_image_tokens_inside_its_mask(transformer, tiny):
    """Two characters in one frame, each with its own tokens and mask, summed; seen where the branch's first term
    enters the model (the input of double block 1, after the CA module of double block 0), before anything mixes
    tokens."""
    inputs = flux_transformer_inputs(transformer, 1, 7, GRID)
    seen = []
    watcher = transformer.transformer_blocks[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    pixels = torch.zeros(GRID[0] * 4, GRID[1] * 4)
    pixels[:8, :8] = 1.0  # the top-left 2 x 2 tokens
    left = token_mask(pixels, GRID)
    right = torch.zeros(GRID[0] * GRID[1])
    right[[5, 11]] = 1.0
    tokens = _id_tokens(tiny)
    try:
        _forward(transformer, inputs)
        with PuLIDFluxBranch.attach(transformer, tiny.pulid_ca, double_interval=1, single_interval=2) as branch:
            branch.set_rows([[IDTarget(tokens[0], mask=left)]])
            _forward(transformer, inputs)
            branch.set_rows([[IDTarget(tokens[0], mask=left), IDTarget(tokens[1], mask=right)]])
            _forward(transformer, inputs)
    finally:
        watcher.remove()
    vanilla, one, two = seen
    assert left.sum() == 4 and torch.equal(left.reshape(GRID)[:2, :2], torch.ones(2, 2))
    assert torch.equal((one != vanilla).any(dim=-1)[0], left.bool())
    assert torch.equal((two != vanilla).any(dim=-1)[0], left.bool() | right.bool())
    with torch.no_grad():
        alone = tiny.pulid_ca[0](tokens[1:2], vanilla)
    torch.testing.assert_close((two - vanilla)[0, right.bool()], alone[0, right.bool()])

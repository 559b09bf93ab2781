"""Identity-Preserving Cross-Attention on one layer: the stock processor without identity tokens, equal to a naive
reference of the authors' formulation (the identity prompt's 77 keys concatenated, a log-mask keeping its start
token and words), unconditional rows untouched, and on the tiny UNet's cross-attention layers only."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from storycast.attention.identity_prompt import (
    IdentityPromptAttention,
    IdentityPromptState,
    install_identity_prompt_attention,
)

QUERIES, CHANNELS, TEXT, CONTEXT = 12, 16, 77, 24
KEPT = 6
"""Start token and five identity words."""


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return Attention(query_dim=CHANNELS, cross_attention_dim=CONTEXT, heads=2, dim_head=8).eval()


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(frames=1):
    """[uncond x frames, cond x frames] queries and text, and each frame's identity prompt (77 tokens)."""
    return (
        randn(2 * frames, QUERIES, CHANNELS, seed=1),
        randn(2 * frames, TEXT, CONTEXT, seed=2),
        randn(frames, TEXT, CONTEXT, seed=3),
    )


def authors_reference(attention, hidden, context, identity_prompt, kept):
    """The authors' ``ipca`` for the cond rows: scores over [frame's 77 keys ; identity prompt's 77 keys], plus
    log(mask) with mask 1 on the frame's keys and on the identity prompt's kept positions, 0 elsewhere;
    the uncond rows attend to their own text. Written out with explicit softmax."""
    heads, frames = attention.heads, identity_prompt.shape[0]
    split = lambda t: t.view(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
    outputs = []
    for row in range(hidden.shape[0]):
        q = split(attention.to_q(hidden[row]))
        if row < frames:
            keys_from, mask = context[row], torch.ones(TEXT)
        else:
            keys_from = torch.cat([context[row], identity_prompt[row - frames]])
            mask = torch.zeros(2 * TEXT)
            mask[:TEXT] = 1
            mask[TEXT + torch.as_tensor(kept)] = 1
        k, v = split(attention.to_k(keys_from)), split(attention.to_v(keys_from))
        scores = q @ k.transpose(-1, -2) * attention.scale + torch.log(mask)
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(QUERIES, -1)
        outputs.append(attention.to_out[0](attended))
    return torch.stack(outputs)


@torch.no_grad()
@pytest.mark.parametrize("identity", [None, "empty"])
def test_without_identity_tokens_it_is_the_stock_processor(attention, identity):
    hidden, context, _ = inputs(frames=2)
    tokens = None if identity is None else torch.zeros(2, 0, CONTEXT)
    out = IdentityPromptAttention(IdentityPromptState(frames=2, identity=tokens))(attention, hidden, context)
    torch.testing.assert_close(out, AttnProcessor2_0()(attention, hidden, context), rtol=0, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("frames", [1, 2])
def test_gathered_tokens_equal_the_authors_masked_concatenation(attention, frames):
    hidden, context, identity_prompt = inputs(frames)
    kept = list(range(KEPT))
    state = IdentityPromptState(frames=frames, identity=identity_prompt[:, kept])
    out = IdentityPromptAttention(state)(attention, hidden, context)
    expected = authors_reference(attention, hidden, context, identity_prompt, kept)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    stock = AttnProcessor2_0()(attention, hidden, context)
    torch.testing.assert_close(out[:frames], stock[:frames], rtol=0, atol=1e-6)  # uncond rows: plain
    assert (out[frames:] - stock[frames:]).abs().max() > 1e-3  # cond rows see the identity


@torch.no_grad()
def test_the_reference_would_notice_a_wrong_token_set(attention):
    """The equivalence above can fail: keeping the identity prompt's padding too is another attention."""
    hidden, context, identity_prompt = inputs()
    state = IdentityPromptState(frames=1, identity=identity_prompt[:, :KEPT])
    out = IdentityPromptAttention(state)(attention, hidden, context)
    everything = authors_reference(attention, hidden, context, identity_prompt, list(range(TEXT)))
    assert (out[1] - everything[1]).abs().max() > 1e-3


@torch.no_grad()
def test_steps_before_the_start_step_are_plain(attention):
    hidden, context, identity_prompt = inputs()
    state = IdentityPromptState(frames=1, identity=identity_prompt[:, :KEPT], start_step=2)
    processor = IdentityPromptAttention(state)
    stock = AttnProcessor2_0()(attention, hidden, context)
    state.begin_step(1, torch.tensor(0))
    torch.testing.assert_close(processor(attention, hidden, context), stock, rtol=0, atol=1e-6)
    state.begin_step(2, torch.tensor(0))
    assert (processor(attention, hidden, context) - stock).abs().max() > 1e-3


@torch.no_grad()
def test_key_dropout_comes_from_the_generator_and_spares_the_frames_own_tokens(attention):
    hidden, context, identity_prompt = inputs()

    def run(dropout, seed):
        state = IdentityPromptState(
            frames=1,
            identity=identity_prompt[:, :KEPT],
            dropout=dropout,
            generator=torch.Generator().manual_seed(seed),
        )
        return IdentityPromptAttention(state)(attention, hidden, context)

    full = run(0.0, 0)
    torch.testing.assert_close(run(0.5, 3), run(0.5, 3), rtol=0, atol=0)
    assert (run(0.5, 3) - run(0.5, 4)).abs().max() > 1e-4 and (run(0.5, 3) - full).abs().max() > 1e-4
    # Every identity key dropped: the cond rows are plain cross-attention again, never NaN.
    stock = AttnProcessor2_0()(attention, hidden, context)
    torch.testing.assert_close(run(1 - 1e-12, 0), stock, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="generator"):
        IdentityPromptAttention(IdentityPromptState(frames=1, identity=identity_prompt[:, :KEPT], dropout=0.5))(
            attention, hidden, context
        )


@torch.no_grad()
def test_a_batch_laid_out_otherwise_is_refused(attention):
    hidden, context, identity_prompt = inputs(frames=2)
    state = IdentityPromptState(frames=1, identity=identity_prompt[:1, :KEPT])
    with pytest.raises(ValueError, match="expects 2 x 1 rows"):
        IdentityPromptAttention(state)(attention, hidden, context)


@torch.no_grad()
def test_installed_on_every_cross_attention_layer_and_removed(tiny_sdxl):
    unet = tiny_sdxl.pipeline.unet
    before = dict(unet.attn_processors)
    state = IdentityPromptState(frames=1, identity=randn(1, KEPT, unet.config.cross_attention_dim))
    with install_identity_prompt_attention(unet, state):
        installed = {k for k, p in unet.attn_processors.items() if isinstance(p, IdentityPromptAttention)}
        assert installed and all(".attn2." in key for key in installed)
        assert installed == {k for k in before if ".attn2." in k}
    assert unet.attn_processors == before

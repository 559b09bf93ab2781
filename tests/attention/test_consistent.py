"""Consistent Self-Attention on one layer: equal to a naive reference of the authors' formulation, guidance
halves kept apart, a frame reading only the banks of the characters it names, the bank's size fixed."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from storycast.attention.consistent import (
    ConsistentAttentionState,
    ConsistentSelfAttention,
    CsaGate,
    bernoulli_token_indices,
    fixed_token_indices,
    token_bank,
)

ALWAYS = CsaGate(plain_steps=0, early_threshold=-1.0, late_threshold=-1.0)
NEVER = CsaGate(plain_steps=10**6)
TOKENS, CHANNELS = 16, 16


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return Attention(query_dim=CHANNELS, heads=2, dim_head=8).eval()


def tokens(frames, seed=0):
    """[uncond x frames, cond x frames] rows of a self-attention layer's input."""
    return torch.randn(2 * frames, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(seed))


def state(mode, frames, *, rate=0.5, sampling="bernoulli", gate=ALWAYS, bank=None, **kwargs):
    return ConsistentAttentionState(
        frames=frames,
        generator=torch.Generator().manual_seed(7),
        mode=mode,
        bank=bank if bank is not None else token_bank(),
        rates={1: rate},
        sampling=sampling,
        gate=gate,
        **kwargs,
    )


def naive(attention, query_tokens, key_tokens):
    """Softmax attention of one row's queries over the given key tokens, then to_out (the stock computation)."""
    q = attention.to_q(query_tokens)
    k, v = attention.to_k(key_tokens), attention.to_v(key_tokens)
    split = lambda t: t.view(t.shape[0], attention.heads, -1).transpose(0, 1)  # noqa: E731
    probs = (split(q) @ split(k).transpose(-1, -2) * attention.scale).softmax(-1)
    return attention.to_out[0]((probs @ split(v)).transpose(0, 1).reshape(query_tokens.shape[0], -1))


@torch.no_grad()
@pytest.mark.parametrize("sampling", ["bernoulli", "fixed"])
def test_write_equals_the_authors_formulation(attention, sampling):
    """Frame i attends to the sampled tokens of every other identity frame j != i, then all of its own, in its
    own guidance half; every frame's sampled tokens of both halves go to the bank."""
    frames, hidden = 3, tokens(3)
    csa = state("write", frames, sampling=sampling, write_character="mara")
    out = ConsistentSelfAttention(csa, "layer", 1)(attention, hidden)
    indices = csa.token_indices(1, TOKENS, "cpu")
    if sampling == "fixed":
        assert {len(i) for i in indices} == {8}
    for half in range(2):
        for i in range(frames):
            row = half * frames + i
            others = [hidden[half * frames + j, indices[j]] for j in range(frames) if j != i]
            expected = naive(attention, hidden[row], torch.cat([*others, hidden[row]]))
            torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)
    banked = csa.bank.get(("mara", "layer", 0))
    assert len(banked) == frames
    for j in range(frames):
        assert torch.equal(banked[j], torch.stack([hidden[j, indices[j]], hidden[frames + j, indices[j]]]))


@torch.no_grad()
def test_read_of_a_two_character_frame_equals_the_authors_formulation(attention):
    bank = token_bank()
    bank.put(("mara", "layer", 0), [torch.randn(2, 5, CHANNELS), torch.randn(2, 3, CHANNELS)])
    bank.put(("tom", "layer", 0), [torch.randn(2, 4, CHANNELS)])
    hidden = tokens(1)
    out = ConsistentSelfAttention(state("read", 1, bank=bank, read_characters=[("mara", "tom")]), "layer", 1)(
        attention, hidden
    )
    for half in range(2):
        banked = [t[half] for c in ("mara", "tom") for t in bank.get((c, "layer", 0))]
        expected = naive(attention, hidden[half], torch.cat([*banked, hidden[half]]))
        torch.testing.assert_close(out[half], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["write", "read"])
def test_rate_zero_and_a_closed_gate_are_plain_self_attention(attention, mode):
    hidden = tokens(2)
    plain = AttnProcessor2_0()(attention, hidden)
    bank = token_bank()
    bank.put(("mara", "layer", 0), [torch.randn(2, 0, CHANNELS)])
    kwargs = {"write_character": "mara"} if mode == "write" else {"read_characters": [("mara",), ()]}
    zero = ConsistentSelfAttention(state(mode, 2, rate=0.0, bank=bank, **kwargs), "layer", 1)(attention, hidden)
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-5)
    bank.put(("mara", "layer", 0), [torch.randn(2, 6, CHANNELS)])
    closed = ConsistentSelfAttention(state(mode, 2, gate=NEVER, bank=bank, **kwargs), "layer", 1)(attention, hidden)
    torch.testing.assert_close(closed, plain, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_the_guidance_halves_never_mix(attention):
    """Changing every cond row leaves the uncond rows' outputs as they were, and the reverse."""
    frames = 2
    hidden = tokens(frames)
    run = lambda h: ConsistentSelfAttention(state("write", frames, write_character="c"), "layer", 1)(attention, h)  # noqa: E731
    before = run(hidden)
    cond_changed = hidden.clone()
    cond_changed[frames:] += 1.0
    after = run(cond_changed)
    torch.testing.assert_close(after[:frames], before[:frames], rtol=0, atol=0)
    assert not torch.allclose(after[frames:], before[frames:])
    uncond_changed = hidden.clone()
    uncond_changed[:frames] -= 1.0
    torch.testing.assert_close(run(uncond_changed)[frames:], before[frames:], rtol=0, atol=0)


@torch.no_grad()
def test_a_frame_reads_only_the_banks_of_the_characters_it_names(attention):
    bank = token_bank()
    bank.put(("mara", "layer", 0), [torch.randn(2, 5, CHANNELS)])
    bank.put(("tom", "layer", 0), [torch.randn(2, 5, CHANNELS)])
    hidden = tokens(2)
    read = lambda b: ConsistentSelfAttention(  # noqa: E731
        state("read", 2, bank=b, read_characters=[("mara",), ()]), "layer", 1
    )(attention, hidden)
    before = read(bank)
    bank.put(("tom", "layer", 0), [torch.randn(2, 9, CHANNELS)])
    after_tom = read(bank)
    torch.testing.assert_close(after_tom, before, rtol=0, atol=0)  # neither frame names tom
    torch.testing.assert_close(before[[1, 3]], AttnProcessor2_0()(attention, hidden)[[1, 3]], rtol=1e-5, atol=1e-5)
    bank.put(("mara", "layer", 0), [torch.randn(2, 5, CHANNELS)])
    after_mara = read(bank)
    assert not torch.allclose(after_mara[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(after_mara[[1, 3]], before[[1, 3]], rtol=0, atol=0)


@torch.no_grad()
def test_reading_many_frames_leaves_the_bank_as_it_was(attention):
    bank = token_bank()
    ConsistentSelfAttention(state("write", 2, bank=bank, write_character="mara"), "layer", 1)(attention, tokens(2))
    size = bank.nbytes
    assert size > 0
    for seed in range(5):
        ConsistentSelfAttention(state("read", 1, bank=bank, read_characters=[("mara",)]), "layer", 1)(
            attention, tokens(1, seed)
        )
    assert bank.nbytes == size
    with pytest.raises(KeyError, match=r"no banked tokens of the identity frames .* for \('tom'"):
        ConsistentSelfAttention(state("read", 1, bank=bank, read_characters=[("tom",)]), "layer", 1)(
            attention, tokens(1)
        )


def test_samplers_and_gate():
    generator = torch.Generator().manual_seed(0)
    fixed = fixed_token_indices(100, 0.25, 3, generator)
    assert [len(i) for i in fixed] == [25, 25, 25]
    assert all(torch.equal(i, i.unique()) for i in fixed) and fixed[0].tolist() != fixed[1].tolist()
    drawn = bernoulli_token_indices(20000, 0.3, 2, torch.Generator().manual_seed(1))
    assert abs(len(drawn[0]) / 20000 - 0.3) < 0.02 and len(drawn[0]) != len(drawn[1])
    again = bernoulli_token_indices(20000, 0.3, 2, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(drawn, again, strict=True))
    gate = CsaGate()
    assert [gate.threshold(s) for s in (0, 1, 19, 20, 40)] == [None, 0.3, 0.3, 0.1, 0.1]


@torch.no_grad()
def test_samples_are_drawn_once_per_step_and_shared_by_the_layers_of_a_level(attention):
    csa = state("write", 2, write_character="mara")
    first = ConsistentSelfAttention(csa, "a", 1)
    second = ConsistentSelfAttention(csa, "b", 1)
    hidden = tokens(2)
    first(attention, hidden)
    second(attention, hidden)
    for j in range(2):
        assert torch.equal(csa.bank.get(("mara", "a", 0))[j], csa.bank.get(("mara", "b", 0))[j])
    csa.begin_step(1, torch.tensor(900))
    first(attention, hidden)
    assert not torch.equal(csa.bank.get(("mara", "a", 1))[0], csa.bank.get(("mara", "a", 0))[0])


def test_the_state_refuses_a_batch_of_another_layout(attention):
    with pytest.raises(ValueError, match="2 x 3 rows"):
        ConsistentSelfAttention(state("write", 3, write_character="c"), "layer", 1)(attention, tokens(2))

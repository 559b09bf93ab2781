"""Auto-mask self-attention on one layer: the gathered path equals the -inf-bias formulation, empty masks give
per-frame attention, full masks full cross-frame attention, other frames' backgrounds and the other guidance
half never reach a frame, and anchors read later equal drawing jointly with them."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from storycast.attention.automask import AutoMaskSelfAttention, AutoMaskState, anchor_cache
from storycast.attention.character_masks import CharacterMasks, word_token_positions

SIDE, CHANNELS = 4, 16
TOKENS = SIDE * SIDE


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return Attention(query_dim=CHANNELS, heads=2, dim_head=8).eval()


def tokens(frames, seed=0):
    """[uncond x frames, cond x frames] rows of a self-attention layer's input."""
    return torch.randn(2 * frames, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(seed))


def random_masks(characters, seed=1, share=0.4):
    generator = torch.Generator().manual_seed(seed)
    return {
        (frame, c): torch.rand(SIDE, SIDE, generator=generator) < share
        for frame, names in enumerate(characters)
        for c in names
    }


def amsa(characters, masks, *, dropout=0.0, anchors=None, mode=None):
    character_masks = CharacterMasks(characters, (SIDE, SIDE))
    if masks is not None:
        character_masks.set_fixed(masks)
    state = AutoMaskState(
        frames=len(characters),
        generator=torch.Generator().manual_seed(3),
        character_masks=character_masks,
        dropout=dropout,
        anchors=anchors,
        anchor_mode=mode,
    )
    state.begin_step(1, torch.tensor(500))
    return state, AutoMaskSelfAttention(state, "layer", 0)


def naive_amsa(attention, hidden, characters, masks, rows=None):
    """softmax(Q_i [K_1..K_N]^T / sqrt(d) + B_i) V, B_i = 0 on frame i and on other frames' masked tokens of the
    characters both name, -inf elsewhere; per guidance half. Then to_out."""
    frames = len(characters)
    by_frame = hidden.reshape(2, frames, TOKENS, CHANNELS)
    out = []
    for half in range(2):
        keys = by_frame[half].reshape(-1, CHANNELS)
        for i in range(frames):
            visible = []
            for j in range(frames):
                if j == i:
                    visible.append(torch.ones(TOKENS, dtype=torch.bool))
                    continue
                common = [c for c in characters[j] if c in characters[i]]
                seen = torch.zeros(TOKENS, dtype=torch.bool)
                for c in common:
                    seen |= masks[(j, c)].reshape(-1)
                visible.append(seen)
            bias = torch.where(torch.cat(visible), 0.0, float("-inf"))
            q = attention.to_q(by_frame[half, i])
            k, v = attention.to_k(keys), attention.to_v(keys)
            split = lambda t: t.view(t.shape[0], attention.heads, -1).transpose(0, 1)  # noqa: E731
            probs = (split(q) @ split(k).transpose(-1, -2) * attention.scale + bias).softmax(-1)
            out.append(attention.to_out[0]((probs @ split(v)).transpose(0, 1).reshape(TOKENS, -1)))
    return torch.stack(out)


@torch.no_grad()
def test_gathered_attention_equals_the_masked_formulation(attention):
    characters = [("mara",), ("mara", "leo"), ("leo",), ()]
    masks = random_masks(characters)
    hidden = tokens(len(characters))
    _, processor = amsa(characters, masks)
    torch.testing.assert_close(
        processor(attention, hidden), naive_amsa(attention, hidden, characters, masks), atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_empty_masks_give_plain_per_frame_self_attention(attention):
    characters = [("mara",)] * 3
    empty = {key: torch.zeros(SIDE, SIDE, dtype=torch.bool) for key in random_masks(characters)}
    hidden = tokens(3)
    _, processor = amsa(characters, empty)
    torch.testing.assert_close(
        processor(attention, hidden), AttnProcessor2_0()(attention, hidden), atol=1e-6, rtol=1e-6
    )


@torch.no_grad()
def test_full_masks_give_full_cross_frame_attention(attention):
    characters = [("mara",)] * 3
    full = {key: torch.ones(SIDE, SIDE, dtype=torch.bool) for key in random_masks(characters)}
    hidden = tokens(3)
    _, processor = amsa(characters, full)
    by_half = hidden.reshape(2, 3, TOKENS, CHANNELS)
    # Every frame of a half attends to all tokens of all the half's frames: one long sequence per half.
    expected = []
    for half in range(2):
        joined = by_half[half].reshape(1, -1, CHANNELS)
        for i in range(3):
            expected.append(attention(by_half[half, i][None], encoder_hidden_states=joined)[0])
    torch.testing.assert_close(processor(attention, hidden), torch.stack(expected), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_step_zero_is_plain_self_attention(attention):
    """Before any map is recorded there is no mask: frames attend to themselves only."""
    characters = [("mara",)] * 2
    hidden = tokens(2)
    _, processor = amsa(characters, None)
    torch.testing.assert_close(
        processor(attention, hidden), AttnProcessor2_0()(attention, hidden), atol=1e-6, rtol=1e-6
    )


@torch.no_grad()
def test_another_frames_background_does_not_reach_a_frame(attention):
    characters = [("mara",)] * 3
    masks = random_masks(characters)
    hidden = tokens(3)
    _, processor = amsa(characters, masks)
    before = processor(attention, hidden)
    changed = hidden.clone().reshape(2, 3, TOKENS, CHANNELS)
    background = ~masks[(1, "mara")].reshape(-1)
    changed[:, 1, background] += 5.0
    after = processor(attention, changed.reshape(6, TOKENS, CHANNELS))
    rows_of_frame = {0: [0, 3], 2: [2, 5]}
    for rows in rows_of_frame.values():
        torch.testing.assert_close(after[rows], before[rows], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[[1, 4]], before[[1, 4]])  # frame 1 itself sees its own change


@torch.no_grad()
def test_a_frame_sees_only_the_characters_it_names(attention):
    """Frame 0 names mara only: leo's region in frame 1 is invisible to it, mara's is not."""
    characters = [("mara",), ("mara", "leo")]
    masks = random_masks(characters, share=0.5)
    masks[(1, "mara")] = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    masks[(1, "mara")][:2] = True
    masks[(1, "leo")] = ~masks[(1, "mara")]
    hidden = tokens(2)
    _, processor = amsa(characters, masks)
    before = processor(attention, hidden)
    changed = hidden.clone().reshape(2, 2, TOKENS, CHANNELS)
    changed[:, 1, masks[(1, "leo")].reshape(-1)] += 5.0
    after = processor(attention, changed.reshape(4, TOKENS, CHANNELS))
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], atol=1e-6, rtol=1e-6)
    changed = hidden.clone().reshape(2, 2, TOKENS, CHANNELS)
    changed[:, 1, masks[(1, "mara")].reshape(-1)] += 5.0
    assert not torch.allclose(processor(attention, changed.reshape(4, TOKENS, CHANNELS))[[0, 2]], before[[0, 2]])


@torch.no_grad()
def test_guidance_halves_never_mix(attention):
    characters = [("mara",)] * 2
    masks = {key: torch.ones(SIDE, SIDE, dtype=torch.bool) for key in random_masks(characters)}
    hidden = tokens(2)
    _, processor = amsa(characters, masks)
    before = processor(attention, hidden)
    changed = hidden.clone()
    changed[:2] += 3.0  # the uncond half
    torch.testing.assert_close(processor(attention, changed)[2:], before[2:], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_full_dropout_is_plain_attention_and_dropout_is_seeded(attention):
    characters = [("mara",)] * 3
    masks = {key: torch.ones(SIDE, SIDE, dtype=torch.bool) for key in random_masks(characters)}
    hidden = tokens(3)
    _, dropped = amsa(characters, masks, dropout=1.0)
    torch.testing.assert_close(dropped(attention, hidden), AttnProcessor2_0()(attention, hidden), atol=1e-6, rtol=1e-6)
    _, half_a = amsa(characters, masks, dropout=0.5)
    _, half_b = amsa(characters, masks, dropout=0.5)
    _, none = amsa(characters, masks, dropout=0.0)
    torch.testing.assert_close(half_a(attention, hidden), half_b(attention, hidden))
    assert not torch.allclose(half_a(attention, hidden), none(attention, hidden))


@torch.no_grad()
def test_reading_anchors_equals_drawing_jointly_with_them(attention):
    """A later frame attending to the cached anchors gets what it would get drawn in one batch with them."""
    joint_characters = [("mara",), ("mara", "leo"), ("mara",)]
    masks = random_masks(joint_characters)
    hidden = tokens(3).reshape(2, 3, TOKENS, CHANNELS)
    expected = naive_amsa(attention, hidden.reshape(6, TOKENS, CHANNELS), joint_characters, masks)[[2, 5]]

    cache = anchor_cache()
    anchor_masks = {key: m for key, m in masks.items() if key[0] < 2}
    _, writer = amsa(joint_characters[:2], anchor_masks, anchors=cache, mode="write")
    writer(attention, hidden[:, :2].reshape(4, TOKENS, CHANNELS))
    _, reader = amsa([("mara",)], {(0, "mara"): masks[(2, "mara")]}, anchors=cache, mode="read")
    got = reader(attention, hidden[:, 2:].reshape(2, TOKENS, CHANNELS))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    kept = sum(int(m.sum()) for key, m in masks.items() if key[0] < 2 and key[1] == "mara") + int(
        (masks[(1, "leo")] & ~masks[(1, "mara")]).sum()
    )
    # Two halves of float32 tokens inside the anchors' masks, and per anchor and character it names a boolean per
    # kept token (which of them are that character's).
    union = [int(masks[(0, "mara")].sum()), int((masks[(1, "mara")] | masks[(1, "leo")]).sum())]
    assert union[0] + union[1] == kept
    assert cache.nbytes == 2 * kept * CHANNELS * 4 + union[0] * 1 + union[1] * 2


@torch.no_grad()
def test_anchors_dropped_by_the_writer_are_kept_as_the_anchors_saw_each_other(attention):
    characters = [("mara",), ("mara",)]
    masks = {key: torch.ones(SIDE, SIDE, dtype=torch.bool) for key in random_masks(characters)}
    hidden = tokens(2)
    cache = anchor_cache()
    state, writer = amsa(characters, masks, dropout=0.5, anchors=cache, mode="write")
    state.anchor_dropout = "writer"
    writer(attention, hidden)
    stored = cache.get(("layer", 1))
    for frame, anchor in enumerate(stored):
        seen = state.kept((0, "frame", frame), TOKENS, "cpu")  # what the other anchor attended to of this one
        assert 0 < int(seen.sum()) < TOKENS and anchor.tokens.shape[1] == int(seen.sum())
        assert torch.equal(anchor.tokens, hidden.reshape(2, 2, TOKENS, CHANNELS)[:, frame, seen])
    # A reader adds exactly those tokens: no second draw.
    reader_state, reader = amsa([("mara",)], {(0, "mara"): torch.ones(SIDE, SIDE, dtype=torch.bool)}, dropout=0.5,
                                anchors=cache, mode="read")  # fmt: skip
    reader_state.anchor_dropout = "writer"
    keys = reader.key_tokens(attention, tokens(1, seed=4), tokens(1, seed=4))
    assert keys.shape[1] == TOKENS + sum(a.tokens.shape[1] for a in stored)


def test_word_token_positions_find_each_occurrence_and_every_token():
    from storycast.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    prompt = "a woman with red hair and a woman with a hat and a dog"
    first, second, dog, cat = word_token_positions(tokenizer, prompt, ["woman", "woman", "dog", "cat"])
    ids = tokenizer(prompt).input_ids
    woman = tokenizer("woman", add_special_tokens=False).input_ids
    assert [ids[p] for p in first] == woman and [ids[p] for p in second] == woman
    assert first[0] < second[0]
    assert dog and cat == []

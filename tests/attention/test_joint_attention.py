"""FLUX's joint attention through storycast's processor: parity with diffusers' FluxAttnProcessor (double- and
single-stream blocks, a peft LoRA, fused projections), borrowed tokens that keep their own rotary positions, the
single-stream text count, and the layer table of the tiny FLUX transformer."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from storycast.attention.layers import attention_layers, install_processors, select_layers
from storycast.attention.processor import StoryAttnProcessor
from storycast.attention.state import AttentionState
from storycast.models.flux_components import tiny_flux_components
from storycast.pipelines.families.flux import image_positions
from tests.helpers import flux_transformer_inputs

ROWS, TEXT, GRID = 2, 7, (4, 6)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@pytest.fixture(scope="module")
def transformer():
    model = tiny_flux_components()["transformer"].eval()
    return model


@pytest.fixture(scope="module")
def inputs(transformer):
    return flux_transformer_inputs(transformer, ROWS, TEXT, GRID)


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def keys_of(model, blocks):
    return [layer.processor_key for layer in attention_layers(model) if layer.block in blocks]


@pytest.mark.parametrize("blocks", [("double",), ("single",), ("double", "single")])
def test_the_processor_is_the_stock_flux_processor(transformer, inputs, blocks):
    stock = forward(transformer, inputs)
    with install_processors(transformer, {key: StoryAttnProcessor() for key in keys_of(transformer, blocks)}):
        ours = forward(transformer, inputs)
    assert torch.equal(ours, stock)
    # A state that counts the text tokens reads the single-stream sequence as [text, image]: the same numbers.
    state = AttentionState(guidance=False, frames=ROWS, text_tokens=TEXT)
    with install_processors(transformer, {key: StoryAttnProcessor(state) for key in keys_of(transformer, blocks)}):
        counted = forward(transformer, inputs)
    assert torch.equal(counted, stock)
    assert {type(p).__name__ for p in transformer.attn_processors.values()} == {"FluxAttnProcessor"}


class Scaled(StoryAttnProcessor):
    """Changes the attention: shows that the processor installed is the one that runs."""

    def edit_output(self, attn, output):
        return output * 1.5


def test_the_installed_processor_is_the_one_that_runs(transformer, inputs):
    stock = forward(transformer, inputs)
    for blocks in (("double",), ("single",)):
        with install_processors(transformer, {key: Scaled() for key in keys_of(transformer, blocks)}):
            assert not torch.allclose(forward(transformer, inputs), stock, atol=1e-3)


def test_a_lora_applies_through_the_processors_projections(transformer, inputs):
    import peft

    plain = forward(transformer, inputs)
    with_lora = copy.deepcopy(transformer)
    with_lora.add_adapter(peft.LoraConfig(r=4, target_modules=LORA_TARGETS, init_lora_weights=False))
    stock = forward(with_lora, inputs)
    assert not torch.allclose(stock, plain, atol=1e-3)  # the LoRA changes the output
    keys = keys_of(with_lora, ("double", "single"))
    with install_processors(with_lora, {key: StoryAttnProcessor() for key in keys}):
        ours = forward(with_lora, inputs)
    assert torch.equal(ours, stock)


def test_fused_projections_are_read(transformer, inputs):
    fused = copy.deepcopy(transformer)
    fused.fuse_qkv_projections()
    modules = [layer.module for layer in attention_layers(fused)]
    assert all(module.fused_projections for module in modules)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # fused weights that differ from the unfused ones: the output tells which were read
        for module in modules:
            for name in ("to_qkv", "to_added_qkv"):
                if hasattr(module, name):
                    weight = getattr(module, name).weight
                    weight.add_(0.1 * torch.randn(weight.shape, generator=generator))
    stock = forward(fused, inputs)
    assert not torch.allclose(stock, forward(transformer, inputs), atol=1e-3)
    with install_processors(fused, {key: StoryAttnProcessor() for key in keys_of(fused, ("double", "single"))}):
        ours = forward(fused, inputs)
    assert torch.equal(ours, stock)


# -- borrowed tokens -----------------------------------------------------------------------------------------

BORROWED = {0: (1, torch.tensor([3, 5, 9, 14, 20])), 1: (0, torch.tensor([1, 2, 6, 7, 11, 12, 17, 19, 23]))}
"""Row -> (the row it borrows from, which of that row's image tokens): rows of different lengths."""


class Borrowing(StoryAttnProcessor):
    """Each row attends to its own tokens and to some of another row's (already projected, rotated) tokens."""

    def key_tokens(self, attn, hidden, context):
        return [torch.cat([context[row], context[other][indices]]) for row, (other, indices) in BORROWED.items()]


def _heads(x, attn):
    return x.unflatten(-1, (-1, attn.head_dim))


def _rotary(transformer):
    ids = torch.cat([torch.zeros(TEXT, 3), image_positions(*GRID)])
    return transformer.pos_embed(ids)


def naive_joint_attention(attn, image, text, rotary, borrowed_rotary="own"):
    """FluxAttnProcessor's maths written out, with each row's keys and values extended by the borrowed tokens.

    ``text`` None: a single-stream block (``image`` is the [text, image] sequence). ``borrowed_rotary``: "own" (the
    borrowed tokens' positions), "slots" (the borrowing row's first positions, as if re-rotated where they are
    appended) or "none" (not rotated)."""
    query, key, value = (_heads(f(image), attn) for f in (attn.to_q, attn.to_k, attn.to_v))
    query, key = attn.norm_q(query), attn.norm_k(key)
    if text is not None:
        t_q, t_k, t_v = (_heads(f(text), attn) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        query = torch.cat([attn.norm_added_q(t_q), query], dim=1)
        key = torch.cat([attn.norm_added_k(t_k), key], dim=1)
        value = torch.cat([t_v, value], dim=1)
    raw_key = key
    query = apply_rotary_emb(query, rotary, sequence_dim=1)
    key = apply_rotary_emb(key, rotary, sequence_dim=1)
    outputs = []
    for row, (other, indices) in BORROWED.items():
        positions = TEXT + indices
        if borrowed_rotary == "own":
            extra_k = key[other, positions]
        elif borrowed_rotary == "slots":
            slots = TEXT + torch.arange(len(indices))
            cos, sin = rotary
            extra_k = apply_rotary_emb(
                raw_key[other : other + 1, positions], (cos[slots], sin[slots]), sequence_dim=1
            )[0]
        else:
            extra_k = raw_key[other, positions]
        k = torch.cat([key[row], extra_k])  # (M, heads, head_dim)
        v = torch.cat([value[row], value[other, positions]])
        scores = torch.einsum("qhd,khd->hqk", query[row], k) * attn.head_dim**-0.5
        outputs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).flatten(1))
    attended = torch.stack(outputs)
    if text is None:
        return attended
    return attn.to_out[0](attended[:, TEXT:]), attn.to_add_out(attended[:, :TEXT])


def _block_inputs(transformer, double):
    generator = torch.Generator().manual_seed(5 if double else 6)
    inner = transformer.inner_dim
    image = torch.randn(ROWS, GRID[0] * GRID[1], inner, generator=generator)
    text = torch.randn(ROWS, TEXT, inner, generator=generator)
    return (image, text) if double else (torch.cat([text, image], dim=1), None)


@pytest.mark.parametrize("double", [True, False])
def test_borrowed_tokens_keep_their_own_rotary_positions(transformer, double):
    attn = (transformer.transformer_blocks if double else transformer.single_transformer_blocks)[0].attn
    image, text = _block_inputs(transformer, double)
    rotary = _rotary(transformer)
    state = None if double else AttentionState(guidance=False, frames=ROWS, text_tokens=TEXT)
    original = attn.processor
    attn.set_processor(Borrowing(state))
    try:
        with torch.no_grad():
            ours = attn(hidden_states=image, encoder_hidden_states=text, image_rotary_emb=rotary)
            expected = naive_joint_attention(attn, image, text, rotary)
            wrong = [naive_joint_attention(attn, image, text, rotary, how) for how in ("slots", "none")]
    finally:
        attn.set_processor(original)
    ours, expected = (ours, expected) if double else ((ours,), (expected,))
    wrong = wrong if double else [(w,) for w in wrong]
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    for other in wrong:  # the test can tell where the borrowed keys were rotated
        assert not torch.allclose(ours[0], other[0], atol=1e-3)


def test_a_single_stream_block_needs_the_text_count_from_its_state(transformer, inputs):
    stock = forward(transformer, inputs)
    keys = keys_of(transformer, ("single",))
    uncounted = {key: StoryAttnProcessor(AttentionState()) for key in keys}
    with install_processors(transformer, uncounted), pytest.raises(ValueError, match="text_tokens"):
        forward(transformer, inputs)
    with install_processors(transformer, {key: StoryAttnProcessor() for key in keys}):
        assert torch.equal(forward(transformer, inputs), stock)
    # A double-stream block is given its text apart, and needs no count.
    with install_processors(
        transformer, {k: StoryAttnProcessor(AttentionState()) for k in keys_of(transformer, ("double",))}
    ):
        assert torch.equal(forward(transformer, inputs), stock)


# -- the layer table -----------------------------------------------------------------------------------------


def test_the_tiny_flux_transformer_has_two_double_and_four_single_joint_layers(transformer):
    layers = attention_layers(transformer)
    assert [layer.block for layer in layers] == ["double"] * 2 + ["single"] * 4
    assert all(layer.is_joint and not layer.is_cross and layer.level == 1 for layer in layers)
    assert [layer.name for layer in layers][:3] == [
        "transformer_blocks.0.attn",
        "transformer_blocks.1.attn",
        "single_transformer_blocks.0.attn",
    ]
    assert {layer.processor_key for layer in layers} == set(transformer.attn_processors)
    assert len(select_layers(transformer, kind="self")) == len(select_layers(transformer, kind="joint")) == 6
    assert [layer.name for layer in select_layers(transformer, blocks=["single"], name_pattern=r"\.3\.")] == [
        "single_transformer_blocks.3.attn"
    ]
    assert len(select_layers(transformer, levels=[1], blocks=["double"])) == 2


def test_selecting_what_flux_lacks_names_what_it_has(transformer):
    with pytest.raises(ValueError, match=r"FluxTransformer2DModel has joint attention at levels \[1\]") as cross:
        select_layers(transformer, kind="cross")
    assert "['double', 'single']" in str(cross.value)
    with pytest.raises(ValueError, match=r"blocks=\['up'\]"):
        select_layers(transformer, blocks=["up"])
    with pytest.raises(ValueError, match="levels=\\[0\\]"):
        select_layers(transformer, levels=[0])


class AllFrames(StoryAttnProcessor):
    """The naive reference of full cross-frame attention: every frame's image keys and values, each frame's own
    last (guidance halves kept apart by the state's layout)."""

    def key_tokens(self, attn, hidden, context):
        state = self.state
        by_frame = hidden.reshape(state.halves, state.frames, *hidden.shape[1:])
        rows = []
        for half in range(state.halves):
            for frame in range(state.frames):
                others = [by_frame[half, other] for other in range(state.frames) if other != frame]
                rows.append(torch.cat([*others, by_frame[half, frame]]))
        return torch.stack(rows)


@pytest.mark.parametrize("blocks", [("double",), ("single",)])
def test_auto_mask_attention_runs_unchanged_on_joint_attention(transformer, inputs, blocks):
    """Storynizor's AMSA on FLUX's joint attention, as it is: with no masks yet, each frame attends to itself (the
    stock computation); with masks covering every image token and no dropout, each frame attends to every other
    frame's image tokens, which equals a naive processor concatenating them."""
    from storycast.attention.automask import AutoMaskSelfAttention, AutoMaskState
    from storycast.attention.character_masks import CharacterMasks

    tokens = GRID[0] * GRID[1]
    characters = [("mara",), ("mara",)]

    def state(masks):
        return AutoMaskState(
            frames=ROWS, guidance=False, text_tokens=TEXT, character_masks=masks, dropout=0.0,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    def processors(made, kind):
        layers = [la for la in attention_layers(transformer) if la.block in blocks]
        return {la.processor_key: kind(made, la.name, la.level) for la in layers}

    stock = forward(transformer, inputs)
    unmasked = state(CharacterMasks(characters, (2 * GRID[0], 2 * GRID[1])))
    with install_processors(transformer, processors(unmasked, AutoMaskSelfAttention)):
        assert torch.equal(forward(transformer, inputs), stock)

    class FullMasks(CharacterMasks):
        ready = True

        def mask(self, frame, character, count, device=None):
            return torch.ones(count, dtype=torch.bool) if count == tokens else None

    masked = state(FullMasks(characters, (2 * GRID[0], 2 * GRID[1])))
    with install_processors(transformer, processors(masked, AutoMaskSelfAttention)):
        shared = forward(transformer, inputs)
    naive = AttentionState(frames=ROWS, guidance=False, text_tokens=TEXT)
    layers = [la for la in attention_layers(transformer) if la.block in blocks]
    with install_processors(transformer, {la.processor_key: AllFrames(naive) for la in layers}):
        reference = forward(transformer, inputs)
    torch.testing.assert_close(shared, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared, stock, atol=1e-4)

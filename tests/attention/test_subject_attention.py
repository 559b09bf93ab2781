"""ConsiStory's attention on one layer: nothing active equals diffusers' processor, the vanilla pass records the
query and shares nothing, the shared pass blends it as QueryStore does over the same keys as AMSA, injection
touches the cond half only, and a blend without its vanilla pass is an error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from storycast.attention.automask import AutoMaskSelfAttention, AutoMaskState
from storycast.attention.character_masks import CharacterMasks
from storycast.attention.feature_injection import Correspondence, FeatureInjection
from storycast.attention.subject_attention import SubjectAttentionState, SubjectDrivenAttention, query_strengths

SIDE, CHANNELS = 4, 16
TOKENS = SIDE * SIDE
CHARACTERS = [("rex",), ("rex",)]


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return Attention(query_dim=CHANNELS, heads=2, dim_head=8).eval()


def hidden(seed=0, frames=2):
    return torch.randn(2 * frames, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(seed))


def masks(ready=True):
    character_masks = CharacterMasks(CHARACTERS, (SIDE, SIDE))
    if ready:
        generator = torch.Generator().manual_seed(1)
        character_masks.set_fixed({(f, "rex"): torch.rand(SIDE, SIDE, generator=generator) < 0.5 for f in range(2)})
    return character_masks


def state(step=1, ready=True, **extra):
    made = SubjectAttentionState(frames=2, character_masks=masks(ready), dropout=0.0, **extra)
    made.begin_step(step, torch.tensor(500))
    return made


def test_query_strengths_are_the_authors_linear_schedule():
    assert query_strengths(0.9, 0.81836735, 5) == pytest.approx(dict(enumerate(np.linspace(0.9, 0.81836735, 6))))
    assert query_strengths(0.9, 0.8, -1) == {}


def test_with_nothing_active_the_layer_equals_diffusers_processor(attention):
    x = hidden()
    stock = AttnProcessor2_0()(attention, x)
    before_masks = SubjectDrivenAttention(state(step=0, ready=False), "layer", 0, share=True, inject=True)
    assert torch.allclose(before_masks(attention, x), stock, atol=1e-6)
    injection_elsewhere = FeatureInjection(0.8, range(5, 9), [{}, {}])
    off = SubjectDrivenAttention(
        state(step=1, ready=True, injection=injection_elsewhere), "l", 0, share=False, inject=True
    )
    assert torch.allclose(off(attention, x), stock, atol=1e-6)


def test_the_vanilla_pass_shares_nothing_and_the_shared_pass_blends_its_query(attention):
    x = hidden()
    shared_state = state(step=2, query_strengths={2: 0.85})
    processor = SubjectDrivenAttention(shared_state, "layer", 0, share=True, inject=False)
    shared_state.vanilla = True
    assert torch.allclose(processor(attention, x), AttnProcessor2_0()(attention, x), atol=1e-6)
    vanilla_input = hidden(seed=5)  # the vanilla pass saw other hidden states (no sharing upstream)
    processor(attention, vanilla_input)
    shared_state.vanilla = False
    out = processor(attention, x)

    # Reference: AMSA's keys and values with the query s * q_vanilla + (1 - s) * q.
    class Blended(AutoMaskSelfAttention):
        def edit_query(self, attn, query):
            return 0.85 * attn.to_q(vanilla_input) + 0.15 * query

    reference_state = AutoMaskState(frames=2, character_masks=masks(), dropout=0.0)
    reference_state.begin_step(2, torch.tensor(500))
    expected = Blended(reference_state, "layer", 0)(attention, x)
    assert torch.allclose(out, expected, atol=1e-5)
    unblended = AutoMaskSelfAttention(reference_state, "layer", 0)(attention, x)
    assert not torch.allclose(out, unblended, atol=1e-3)


def test_a_blend_without_its_vanilla_pass_is_an_error(attention):
    processor = SubjectDrivenAttention(state(step=3, query_strengths={3: 0.9}), "layer", 0, share=True, inject=False)
    with pytest.raises(RuntimeError, match="no vanilla pass ran at that step"):
        processor(attention, hidden())


def test_injection_changes_the_cond_half_at_the_corresponding_pixels_only(attention):
    x = hidden()
    found = Correspondence(torch.tensor([0, 3, 7]), torch.tensor([1, 1, 1]), torch.tensor([2, 2, 9]))
    injection = FeatureInjection(0.8, range(1, 4), [{TOKENS: found}, {}])
    processor = SubjectDrivenAttention(state(step=1, injection=injection), "layer", 0, share=False, inject=True)
    out = processor(attention, x).reshape(2, 2, TOKENS, CHANNELS)
    stock = AttnProcessor2_0()(attention, x).reshape(2, 2, TOKENS, CHANNELS)
    assert torch.allclose(out[0], stock[0], atol=1e-6)  # the uncond half is untouched
    assert torch.allclose(out[1, 1], stock[1, 1], atol=1e-6)  # frame 1 takes nothing
    expected = stock[1, 0].clone()
    expected[[0, 3, 7]] = 0.8 * stock[1, 1, [2, 2, 9]] + 0.2 * stock[1, 0, [0, 3, 7]]
    assert torch.allclose(out[1, 0], expected, atol=1e-5)
    assert injection.injected_pixels == {0: 3}


def test_masks_cut_at_each_grid_use_the_upsampled_map_s_own_otsu_threshold():
    from storycast.attention.thresholds import normalise_map, otsu_threshold

    maps = torch.rand(1, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    masks = CharacterMasks([("rex",)], (SIDE, SIDE), cut_at_grid=True)
    masks._maps, masks._thresholds = {(0, "rex"): maps[0, 0]}, {(0, "rex"): 0.5}
    upsampled = normalise_map(torch.nn.functional.interpolate(maps, size=(SIDE, SIDE), mode="bilinear")[0, 0])
    expected = (upsampled > otsu_threshold(upsampled)).reshape(-1)
    assert torch.equal(masks.mask(0, "rex", TOKENS), expected)

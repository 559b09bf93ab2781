"""CharaConsist's math and one attention layer against the naive reference of the authors' formulation
(``tests/methods/characonsist_reference.py``), with cases that fail when the matching, the re-positioning or the
merge is changed."""

from __future__ import annotations

import pytest
import torch

from storycast.attention.cache import TokenCache
from storycast.masks.ops import erode
from storycast.methods.characonsist.attention import CharaConsistAttention, CharaConsistState, StepWindows
from storycast.methods.characonsist.points import (
    Matches,
    borrowed_bias,
    clean_mask,
    foreground_labels,
    match_points,
    merge_weights,
)
from tests.methods.characonsist_reference import AuthorsProcessor, Flags, clean, interpolate_weights

LAYER = "single_transformer_blocks.0.attn"


def test_merge_weights_are_the_authors_constant_then_cosine_schedule():
    for args in [(0.8, 1, 11, 31), (0.8, 1, 1, 2), (0.5, 2, 5, 9)]:
        ours, theirs = merge_weights(*args), interpolate_weights(*args)
        assert ours.keys() == theirs.keys()
        assert all(abs(ours[k] - theirs[k]) < 1e-12 for k in ours)
    weights = merge_weights(0.8, 1, 11, 31)
    assert weights[1] == weights[10] == 0.8 and weights[11] == pytest.approx(0.8) and weights[30] < 0.01
    assert 0 not in weights and 31 not in weights


def test_masks_are_cleaned_as_opencv_erodes_and_dilates():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 9, 7, generator=generator) > 0.4
    assert torch.equal(clean_mask(masks), clean(masks))
    assert erode(torch.ones(4, 4, dtype=torch.bool), 1).all()  # the grid's border does not erode
    maps = torch.rand(2, 63, generator=generator)
    assert torch.equal(foreground_labels(maps, (9, 7)), clean((maps[0] <= maps[1]).view(1, 9, 7)).flatten().long())


def test_several_characters_get_disjoint_labels_and_one_character_is_the_authors_rule():
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 64, generator=generator)
    labels = foreground_labels(maps, (8, 8))
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    for k in (1, 2):  # a character's tokens lie in its cleaned raw region
        raw = (maps[0] <= maps[k]) & (maps[1:].argmax(0) == k - 1)
        assert not (labels == k)[~clean(raw.view(1, 8, 8)).flatten()].any()


def test_points_match_as_the_authors_keep_them():
    generator = torch.Generator().manual_seed(2)
    similarity = torch.rand(20, 20, generator=generator) * 2 - 1
    identity_fg = torch.rand(20, generator=generator) > 0.3
    current_fg = torch.rand(20, generator=generator) > 0.3
    matches = match_points(similarity, identity_fg, current_fg, 0.5)
    best, index = similarity.max(-1)
    share = current_fg & identity_fg[index] & (best > 0.5)
    assert torch.equal(matches.current, torch.nonzero(share).flatten())
    assert torch.equal(matches.identity, index[share]) and torch.equal(matches.similarity, best)


def test_borrowed_tokens_are_open_only_to_frame_tokens_of_the_same_label():
    bias = borrowed_bias(2, torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1]), torch.float32)
    assert bias.shape == (1, 1, 6, 9) and (bias[..., :6] == 0).all()
    open_ = bias[0, 0, :, 6:] == 0
    assert not open_[:2].any()  # text queries see none
    assert open_[2:].tolist() == [[True, False, False], [False, True, True], [False, True, True], [True, False, False]]


@pytest.fixture
def layer(tiny_flux):
    """Single-stream block 0's attention, random inputs for an identity frame and a frame, their rotary table."""
    transformer = tiny_flux.backbone.denoiser
    attn = transformer.get_submodule(LAYER)
    original = attn.processor
    generator = torch.Generator().manual_seed(3)
    text, rows, columns = 6, 4, 4
    width = transformer.inner_dim
    ids = torch.zeros(text + rows * columns, 3)
    ids[text:, 1] = torch.arange(rows).repeat_interleave(columns).float()
    ids[text:, 2] = torch.arange(columns).repeat(rows).float()
    rotary = transformer.pos_embed(ids)
    hidden = [torch.randn(1, text + rows * columns, width, generator=generator) for _ in range(2)]
    yield attn, hidden, rotary, text, (rows, columns)
    attn.processor = original


def _frame_inputs():
    """The frame's labels and matches, each frame point matched to another place of the identity frame."""
    current_fg = torch.zeros(16, dtype=torch.bool)
    current_fg[[5, 6, 9, 10, 13]] = True
    identity_fg = torch.zeros(16, dtype=torch.bool)
    identity_fg[[1, 2, 5, 6, 7]] = True
    matches = Matches(torch.tensor([1, 2, 6, 7]), torch.tensor([5, 6, 9, 10]), torch.linspace(0.55, 0.95, 16))
    return current_fg, identity_fg, matches


@torch.no_grad()
def _ours(attn, hidden, rotary, text, grid, current_fg, identity_fg, matches, keep_background):
    bank = TokenCache()
    windows = StepWindows(attention_start=1, attention_end=2, mask_step=1, merge={1: 0.8})
    names = frozenset({LAYER})
    common = dict(frames=1, guidance=False, windows=windows, bank=bank, characters=("mara",), grid=grid,
                  token_groups=(torch.arange(2), torch.arange(2, 5)), real_tokens=5, foreground_layers=names,
                  background_layers=names, stored_kv_layers=names, text_tokens=text)  # fmt: skip
    identity = CharaConsistState(mode="identity", **common)
    identity.begin_step(1, torch.tensor(0.5))
    attn.processor = CharaConsistAttention(identity, LAYER)
    attn(hidden_states=hidden[0], image_rotary_emb=rotary)
    bank.put(("mara", "mask"), identity_fg)  # the test's identity mask, as the reference's
    frame = CharaConsistState(mode="frame", keep_background=keep_background, **common)
    frame.begin_step(1, torch.tensor(0.5))
    frame.labels, frame.matches = current_fg.long(), {"mara": matches}
    attn.processor = CharaConsistAttention(frame, LAYER)
    return attn(hidden_states=hidden[1], image_rotary_emb=rotary)


@torch.no_grad()
def _authors(attn, hidden, rotary, text, grid, current_fg, identity_fg, matches, keep_background, perturb=None):
    flags = Flags(step=1, save_attn_kv=True, save_attn_out_for_sim=True, weights={1: 0.8}, perturb=perturb)
    processor = AuthorsProcessor(flags, text, grid, fg_share=True, bg_share=True)
    attn.processor = processor
    attn(hidden_states=hidden[0], image_rotary_emb=rotary)
    flags.save_attn_kv = flags.save_attn_out_for_sim = False
    flags.fg_inter_img_attn = flags.attn_out_interpolate = True
    flags.bg_inter_img_attn = keep_background
    flags.spatial = {"curr_fg_mask": current_fg, "id_fg_mask": identity_fg, "id_bg_mask": ~identity_fg,
                     "id_fg_inds": matches.identity, "curr_fg_inds": matches.current, "max_sim": matches.similarity}  # fmt: skip
    return attn(hidden_states=hidden[1], image_rotary_emb=rotary)


@pytest.mark.parametrize("keep_background", [False, True])
def test_one_layer_equals_the_authors_and_not_when_the_matches_positions_or_merge_change(layer, keep_background):
    attn, hidden, rotary, text, grid = layer
    inputs = _frame_inputs()
    ours = _ours(attn, hidden, rotary, text, grid, *inputs, keep_background)
    theirs = _authors(attn, hidden, rotary, text, grid, *inputs, keep_background)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    plain = _authors(attn, hidden, rotary, text, grid, *inputs, keep_background, perturb="none")
    for perturb in ("roll-matches", "keep-positions", "half-merge"):
        changed = _authors(attn, hidden, rotary, text, grid, *inputs, keep_background, perturb=perturb)
        assert (changed - ours).abs().max() > 1e-3, perturb
    assert torch.equal(plain, theirs)
    if keep_background:  # the identity background matters: without it the layer differs
        without = _authors(attn, hidden, rotary, text, grid, *inputs, False)
        assert (without - ours).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 28, 50])
def test_step_windows_scaled_to_any_run_keep_the_authors_order(steps):
    from storycast.methods.characonsist.settings import CharaConsistSettings
    from storycast.settings import ResolveContext
    from storycast.story.model import GenerationSettings

    resolved = CharaConsistSettings().resolve(ResolveContext(GenerationSettings(steps=steps), "flux", True))
    resolved.validate()  # merge_start <= merge_decay <= merge_end, attention_start <= attention_end
    if steps == 50:  # the authors' own indices
        assert (resolved.attention_start, resolved.attention_end, resolved.mask_step) == (1, 41, 10)
        assert (resolved.merge_start, resolved.merge_decay, resolved.merge_end) == (1, 11, 31)

"""Mutual attention and its parts: the joint-attention override point that sees queries, keys and values before
rotary positions (stock when unchanged, honoured when changed), head-averaged probabilities between two spans against
a full softmax, scikit-image's Otsu threshold and small-region removal against scikit-image itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import FluxAttnProcessor2_0

from storycast.attention.layers import attention_layers, install_processors
from storycast.attention.mutual import cross_probabilities, mutual_attention
from storycast.attention.processor import StoryAttnProcessor
from storycast.attention.state import AttentionState
from storycast.attention.thresholds import otsu_threshold
from storycast.masks.ops import largest_component, remove_small_components
from storycast.pipelines.families.flux import image_positions
from tests.attention import test_joint_attention as joint

GRID, ROWS, TEXT = joint.GRID, joint.ROWS, joint.TEXT
transformer, inputs = joint.transformer, joint.inputs  # the same fixtures


def forward(model, inputs, processors=None):
    keys = [layer.processor_key for layer in attention_layers(model)]
    with torch.no_grad(), install_processors(model, {k: processors() for k in keys} if processors else {}):
        return model(**inputs, return_dict=False)[0]


class Unchanged(StoryAttnProcessor):
    """Overrides the point and gives back what it got."""

    def edit_joint_projections(self, attn, query, key, value, rotary, text):
        self.seen = (query.shape, text)
        return query, key, value


class ImageValuesDoubled(StoryAttnProcessor):
    def edit_joint_projections(self, attn, query, key, value, rotary, text):
        value = value.clone()
        value[:, text:] *= 2
        return query, key, value


def test_an_unchanged_edit_of_the_projections_is_the_stock_computation(transformer, inputs):
    stock = forward(transformer, inputs)
    state = AttentionState(guidance=False, frames=ROWS, text_tokens=TEXT)
    assert torch.equal(forward(transformer, inputs, lambda: Unchanged(state)), stock)
    assert torch.equal(forward(transformer, inputs, lambda: StoryAttnProcessor(state)), stock)
    assert torch.allclose(forward(transformer, inputs, FluxAttnProcessor2_0), stock, atol=1e-6)


def test_an_edit_of_the_projections_is_what_the_layer_goes_on_with(transformer, inputs):
    """Doubling the image tokens' values (before rotary: values carry none) equals doubling them in a naive
    attention of one double-stream layer."""
    from diffusers.models.embeddings import apply_rotary_emb

    attn = transformer.transformer_blocks[0].attn
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, GRID[0] * GRID[1], attn.query_dim, generator=generator)
    text = torch.randn(1, TEXT, attn.query_dim, generator=generator)
    ids = torch.cat([torch.zeros(TEXT, 3), image_positions(*GRID)])
    rotary = transformer.pos_embed(ids)
    with torch.no_grad():
        ours, _ = ImageValuesDoubled()(attn, image, text, None, rotary)

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(text))), attn.norm_q(heads(attn.to_q(image)))], 1)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(text))), attn.norm_k(heads(attn.to_k(image)))], 1)
        v = torch.cat([heads(attn.add_v_proj(text)), 2 * heads(attn.to_v(image))], 1)
        q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
        weights = ((q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
        out = (weights @ v.transpose(1, 2)).transpose(1, 2).flatten(2)
        expected = attn.to_out[0](out[:, TEXT:])
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, StoryAttnProcessor()(attn, image, text, None, rotary)[0], atol=1e-3)


def test_cross_probabilities_are_the_head_mean_of_a_full_softmax():
    generator = torch.Generator().manual_seed(0)
    length, heads, dim = 13, 3, 8
    query, key = torch.randn(2, length, heads, dim, generator=generator).unbind(0)
    first, second = slice(3, 7), slice(7, 13)
    full = torch.einsum("qhd,khd->hqk", query, key).mul(dim**-0.5).softmax(-1).mean(0)  # (L, L)
    forward, backward = cross_probabilities(query, key, first, second, dim**-0.5)
    assert torch.allclose(forward, full[first, second], atol=1e-6)
    assert torch.allclose(backward, full[second, first], atol=1e-6)
    mutual = mutual_attention(forward, backward)
    assert mutual.shape == (6, 4)
    for b in range(6):
        for a in range(4):
            expected = min(full[7 + b, 3 + a], full[3 + a, 7 + b])
            assert torch.isclose(mutual[b, a], expected)


def test_otsu_threshold_on_story2board_s_maps_is_scikit_images_threshold():
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    for case in range(100):
        image = rng.random((8, 12)).astype(np.float32) ** rng.uniform(0.3, 4)
        if case % 3 == 0:
            image[:2] = 0  # an empty gap between the classes: tied cuts, the first one wins
        theirs = filters.threshold_otsu(image)
        ours = otsu_threshold(torch.from_numpy(image))
        assert np.array_equal(image > theirs, image > ours), case
    assert otsu_threshold(torch.full((3, 3), 0.25)) == 0.25


def test_small_components_are_removed_as_scikit_image_removes_them():
    morphology = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(1)
    masks = rng.random((20, 9, 11)) > 0.55
    ours = remove_small_components(torch.from_numpy(masks), 4).numpy()
    for mask, kept in zip(masks, ours, strict=True):
        theirs = morphology.remove_small_objects(mask, max_size=3) if _has_max_size(morphology) else None
        if theirs is None:
            theirs = morphology.remove_small_objects(mask, min_size=4)
        assert np.array_equal(kept, theirs)
    # The refactored sibling still keeps the largest component only.
    one = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.bool)
    right = [False, False, False, True]
    assert largest_component(one).tolist() == [right, right, right]


def _has_max_size(morphology) -> bool:
    import inspect

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters

"""Text-to-image attention maps on FLUX's joint attention: the recorder leaves the layer's output as it is, and its
maps equal a naive reference (the full joint-attention probabilities of the image queries, restricted to the text
keys and renormalised)."""

from __future__ import annotations

import pytest
import torch

from storycast.attention.layers import install_processors, select_layers
from storycast.attention.processor import StoryAttnProcessor
from storycast.attention.state import AttentionState
from storycast.attention.token_maps import TokenMapStore, record_joint_token_maps
from storycast.models.flux_components import tiny_flux_components
from tests.helpers import flux_transformer_inputs

ROWS, TEXT, GRID = 2, 7, (4, 6)
TOKENS = [[1, 4], [2, 6]]  # per row, the text positions whose maps are recorded


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_components()["transformer"].eval()


class FullProbabilities(StoryAttnProcessor):
    """The stock joint attention with its probabilities made explicit: keeps the image queries' rows over the text."""

    needs_probabilities = True

    def __init__(self, state, kept):
        super().__init__(state)
        self.kept = kept

    def observe_probabilities(self, attn, probabilities):
        to_text = probabilities[:, :, TEXT:, :TEXT]
        self.kept.append(to_text / to_text.sum(dim=-1, keepdim=True))


def naive_maps(kept):
    maps = []
    for probabilities in kept:  # (B, heads, N, TEXT)
        mean = probabilities.mean(dim=1)
        picked = torch.stack([mean[b][:, TOKENS[b]] for b in range(ROWS)])  # (B, N, tokens)
        maps.append(picked.permute(0, 2, 1).reshape(ROWS, len(TOKENS[0]), *GRID))
    return torch.stack(maps).mean(dim=0)


@pytest.mark.parametrize("blocks", [("double",), ("double", "single")])
def test_joint_maps_equal_the_naive_probabilities_and_the_layer_is_unchanged(transformer, blocks):
    inputs = flux_transformer_inputs(transformer, ROWS, TEXT, GRID)
    state = AttentionState(guidance=False, frames=ROWS, text_tokens=TEXT)
    with torch.no_grad():
        stock = transformer(**inputs, return_dict=False)[0]
        store = TokenMapStore(TOKENS, size=GRID, rows=ROWS, latent_size=(2 * GRID[0], 2 * GRID[1]))
        with record_joint_token_maps(transformer, store, blocks, state=state):
            recorded = transformer(**inputs, return_dict=False)[0]
        kept: list[torch.Tensor] = []
        layers = select_layers(transformer, kind="joint", blocks=blocks)
        with install_processors(transformer, {la.processor_key: FullProbabilities(state, kept) for la in layers}):
            transformer(**inputs, return_dict=False)
    torch.testing.assert_close(recorded, stock, rtol=0, atol=0)
    assert store.count == len(layers) == len(kept)
    torch.testing.assert_close(store.mean_maps(), naive_maps(kept), rtol=1e-5, atol=1e-6)
    # Another token's map differs: the columns recorded are the ones asked for.
    other = TokenMapStore([[0, 3], [2, 6]], size=GRID, rows=ROWS, latent_size=(2 * GRID[0], 2 * GRID[1]))
    with torch.no_grad(), record_joint_token_maps(transformer, other, blocks, state=state):
        transformer(**inputs, return_dict=False)
    assert not torch.allclose(other.mean_maps()[0], store.mean_maps()[0])
    torch.testing.assert_close(other.mean_maps()[1], store.mean_maps()[1])


def test_only_the_last_rows_are_recorded(transformer):
    """With true CFG the batch is [uncond, cond]: the store's rows are the cond half, the last ones."""
    inputs = flux_transformer_inputs(transformer, ROWS, TEXT, GRID)
    last = TokenMapStore([TOKENS[1]], size=GRID, rows=1, latent_size=(2 * GRID[0], 2 * GRID[1]))
    both = TokenMapStore([TOKENS[0], TOKENS[1]], size=GRID, rows=2, latent_size=(2 * GRID[0], 2 * GRID[1]))
    with torch.no_grad():
        with record_joint_token_maps(transformer, last):
            transformer(**inputs, return_dict=False)
        with record_joint_token_maps(transformer, both):
            transformer(**inputs, return_dict=False)
    torch.testing.assert_close(last.mean_maps()[0], both.mean_maps()[1])

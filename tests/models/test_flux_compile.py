"""Regional compilation of FLUX's transformer (``--compile``): the compiled blocks equal the uncompiled ones, and
processors installed or removed after compilation run (dynamo recompiles the blocks whose processor changed).

The first test compiles with inductor, torch's default backend (it compiles here: a C compiler is on this
machine). The others use ``aot_eager`` (dynamo's graphs through AOTAutograd, run eagerly): the same wiring
(blocks compiled in place, guards on their processors) without inductor's code generation, which would take
minutes for the recompilations a story's per-step processors cause on two CPU cores.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from storycast.attention.layers import attention_layers, install_processors
from storycast.attention.processor import StoryAttnProcessor
from storycast.models.flux_components import tiny_flux_components
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.models.speed import apply_speed_options, compile_unavailable
from storycast.runs.draw import draw
from tests.helpers import flux_transformer_inputs
from tests.methods.helpers import two_friends

ROWS, TEXT, GRID = 2, 7, (4, 4)


class HalvedOutput(StoryAttnProcessor):
    """The stock joint attention with its output halved: a processor whose effect a test can see."""

    def edit_output(self, attn, output):
        return output * 0.5


def inputs(transformer):
    return flux_transformer_inputs(transformer, ROWS, TEXT, GRID)


def forward(model, batch):
    with torch.no_grad():
        return model(**batch, return_dict=False)[0]


def single_block_keys(model):
    return [layer.processor_key for layer in attention_layers(model) if layer.block == "single"]


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="torch cannot compile for the CPU here")
def test_inductor_compiled_flux_blocks_equal_the_uncompiled_transformer():
    transformer = tiny_flux_components(seed=1)["transformer"].eval()
    batch = inputs(transformer)
    expected = forward(transformer, batch)
    applied = apply_speed_options(transformer, "cpu", channels_last=False, compile=True)
    assert applied == {"compile": "repeated blocks"}
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks])  # fmt: skip
    torch.testing.assert_close(forward(transformer, batch), expected, atol=1e-5, rtol=1e-5)


def test_processors_installed_and_removed_after_compilation_run():
    transformer = tiny_flux_components(seed=2)["transformer"].eval()
    reference = copy.deepcopy(transformer)  # never compiled
    batch = inputs(transformer)
    stock = forward(transformer, batch)
    applied = apply_speed_options(transformer, "cpu", channels_last=False, compile=True, backend="aot_eager")
    assert applied == {"compile": "repeated blocks (aot_eager)"}
    torch.testing.assert_close(forward(transformer, batch), stock, atol=1e-6, rtol=1e-6)

    with install_processors(reference, {key: HalvedOutput() for key in single_block_keys(reference)}):
        expected = forward(reference, batch)
    with install_processors(transformer, {key: HalvedOutput() for key in single_block_keys(transformer)}):
        halved = forward(transformer, batch)
    assert (halved - stock).abs().max() > 1e-3  # the installed processor ran in the compiled blocks
    torch.testing.assert_close(halved, expected, atol=1e-6, rtol=1e-6)
    # Removed: the compiled blocks run the stock processor again.
    torch.testing.assert_close(forward(transformer, batch), stock, atol=1e-6, rtol=1e-6)


def test_storydiffusion_on_a_compiled_flux_draws_the_uncompiled_frames():
    """A method installing per-step processors (CSA's bank written and read) after compilation: same pixels."""
    story = two_friends([{"text": "{mara} reading"}, {"text": "{mara} cooking"}, {"text": "{mara} cycling"}])
    generation = {"steps": 2, "width": 64, "height": 64}
    settings = {"id_length": "2"}
    plain = draw(story, "storydiffusion", load_models(ModelSpec(source="tiny-flux", device="cpu")),
                 generation=generation, method_settings=settings)  # fmt: skip
    models = load_models(ModelSpec(source="tiny-flux", device="cpu"))
    apply_speed_options(models.backbone.denoiser, "cpu", channels_last=False, compile=True, backend="aot_eager")
    compiled = draw(story, "storydiffusion", models, generation=generation, method_settings=settings)
    for a, b in zip(plain.images, compiled.images, strict=True):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_channels_last_is_left_out_on_flux_with_a_reason():
    transformer = tiny_flux_components()["transformer"]
    assert apply_speed_options(transformer, "cpu", channels_last=True, compile=False) == {
        "channels_last": "off (no convolutions)"
    }

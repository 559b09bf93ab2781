"""StoryDiffusion on FLUX (tiny-flux): Consistent Self-Attention on the single-stream blocks' joint attention, the
cost of plain text-to-image, a bank of image tokens ([keys, values] with their rotary positions) that does not
grow with the story, and what FLUX cannot run refused before any model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from diffusers.models.embeddings import apply_rotary_emb

from storycast.attention.layers import select_layers
from storycast.errors import SettingsError
from storycast.methods.base import RunContext
from storycast.methods.registry import get_method, list_methods
from storycast.methods.storydiffusion.method import StoryDiffusionMethod
from storycast.models.spec import ModelSpec
from storycast.runs.draw import draw
from tests.methods.helpers import pixels, plan_for, two_friends

FLUX_GEN = {"steps": 4, "width": 128, "height": 128}
FRAMES = [
    {"text": "{mara} reading on a bench"},
    {"text": "{mara} cooking dinner"},
    {"text": "{tom} fishing at a lake"},
    {"text": "{tom} asleep in a chair"},
    {"text": "{mara} and {tom} having tea"},
    {"text": "an empty street at night"},
    {"text": "{mara} riding a bike"},
    {"text": "{tom} walking a dog"},
]
NON_FLUX_METHODS = {"consistory", "photomaker", "1prompt1story", "story-adapter", "storynizor"}


def planned(data, model=None, settings=None, generation=FLUX_GEN):
    return plan_for("storydiffusion", data, preset="tiny-flux", model=model, settings=settings, generation=generation)


def draw_plan(plan, models):
    """Every group of the plan in order, with one method object (its bank kept between groups)."""
    method = StoryDiffusionMethod(models, plan.settings)
    results = {}
    for group in plan.groups:
        for result in method.generate(plan.story, group.frames, RunContext()):
            results[result.index] = result
    return method, [results[i] for i in sorted(results)]


@pytest.fixture(scope="module")
def story_runs(tiny_flux):
    """StoryDiffusion (twice, from fresh method objects), StoryDiffusion sampling no token (rate 0: CSA is plain
    attention), and vanilla, on the same story and model."""
    models = tiny_flux
    transformer = models.backbone.denoiser
    before = dict(transformer.attn_processors)
    plan = planned(two_friends(list(FRAMES)), model=models, settings={"id_length": "2"})
    method, frames = draw_plan(plan, models)
    after = dict(transformer.attn_processors)
    _, again = draw_plan(plan, models)
    _, unshared = draw_plan(
        planned(two_friends(list(FRAMES)), model=models, settings={"id_length": "2", "sa64": "0"}), models
    )
    vanilla = draw(two_friends(list(FRAMES)), "vanilla", models, generation=FLUX_GEN)
    return {
        "plan": plan,
        "method": method,
        "frames": frames,
        "again": again,
        "unshared": unshared,
        "vanilla": vanilla.frames,
        "before": before,
        "after": after,
    }


def test_a_two_character_story_costs_what_plain_text_to_image_costs(story_runs):
    plan, frames, vanilla = story_runs["plan"], story_runs["frames"], story_runs["vanilla"]
    assert plan.model.family == "flux" and plan.settings.attention.blocks == ("single",)
    assert plan.settings.scheduler == "model" and plan.settings.freeu is False
    assert [(g.frames, g.group.depends_on, g.group.role) for g in plan.groups] == [
        ((0, 1), (), "identity frames of mara"),  # drawn jointly
        ((2, 3), (), "identity frames of tom"),
        ((4,), (0, 1), "frames"),
        ((5,), (), "frames"),
        ((6,), (0,), "frames"),
        ((7,), (1,), "frames"),
    ]
    assert [f.index for f in frames] == list(range(8))
    assert frames[4].metadata["reads"] == ["mara", "tom"] and frames[5].metadata["reads"] == []
    assert frames[0].metadata["identity_frames"] == [0, 1]
    # No classifier-free guidance on FLUX.1-dev: one transformer row per step, as vanilla.
    steps = plan.generation.steps
    assert steps == FLUX_GEN["steps"]
    for mine, plain in zip(frames, vanilla, strict=True):
        assert mine.metadata["denoiser_evaluations"] == plain.metadata["denoiser_evaluations"] == steps


def test_consistent_attention_changes_the_frames_that_share_tokens(story_runs):
    """Against the same draws sampling no token (same batches, same seeds), every frame that shares tokens
    changes: the identity frames attend to each other, the others read banks. (The tiny model's images change by
    a few grey levels only: its 512 text tokens outweigh 64 image tokens.) A frame naming nobody attends to itself
    alone: plain joint attention."""
    frames, unshared, vanilla = story_runs["frames"], story_runs["unshared"], story_runs["vanilla"]
    for index in (0, 1, 2, 3, 4, 6, 7):
        assert not np.array_equal(pixels(frames[index].image), pixels(unshared[index].image)), index
    for index in (4, 6, 7):  # drawn alone, as vanilla draws them
        assert not np.array_equal(pixels(frames[index].image), pixels(vanilla[index].image)), index
    assert np.array_equal(pixels(frames[5].image), pixels(unshared[5].image))
    assert np.abs(pixels(frames[5].image) - pixels(vanilla[5].image)).max() <= 1
    # With no token sampled, CSA is plain joint attention: vanilla's frames (the identity frames drawn as a batch
    # of two, within the rounding of batched products).
    for mine, plain in zip(unshared, vanilla, strict=True):
        assert np.abs(pixels(mine.image) - pixels(plain.image)).max() <= 2


def test_the_same_seed_gives_the_same_pixels_and_the_processors_are_restored(story_runs, tiny_flux):
    for first, second in zip(story_runs["frames"], story_runs["again"], strict=True):
        assert np.array_equal(pixels(first.image), pixels(second.image))
    before, after = story_runs["before"], story_runs["after"]
    assert {k: type(v) for k, v in after.items()} == {k: type(v) for k, v in before.items()}
    assert {type(v).__name__ for v in before.values()} == {"FluxAttnProcessor"}
    assert all(after[key] is before[key] for key in before)


def test_the_bank_holds_the_identity_frames_sampled_image_keys_and_values(tiny_flux):
    """Per single-stream layer and step, each identity frame's sampled image tokens: their keys after the norm and
    rotary position, and their values, side by side (FLUX's inner width twice); no text token, no double block."""
    transformer = tiny_flux.backbone.denoiser
    data = two_friends([{"text": "{mara} reading on a bench"}, {"text": "{mara} cooking dinner"}])
    plan = planned(data, model=tiny_flux, settings={"id_length": "2", "sampling": "fixed"})
    layers = [layer.name for layer in select_layers(transformer, kind="self", blocks=["single"])]
    assert len(layers) == 4
    attn = transformer.get_submodule(layers[0])
    seen = []
    hook = attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"], kwargs["image_rotary_emb"])),
        with_kwargs=True,
    )
    try:
        method, _ = draw_plan(plan, tiny_flux)
    finally:
        hook.remove()
    steps = plan.generation.steps
    image_tokens = (FLUX_GEN["width"] // 16) * (FLUX_GEN["height"] // 16)
    inner = transformer.inner_dim
    bank = method.bank
    assert bank.owners() == {"mara"}
    for layer in layers:
        for step in range(steps):
            frames = bank.get(("mara", layer, step))
            assert len(frames) == 2
            assert all(t.shape == (1, round(0.5 * image_tokens), 2 * inner) for t in frames)
    with pytest.raises(KeyError):
        bank.get(("mara", "transformer_blocks.0.attn", 1))
    with pytest.raises(KeyError):
        bank.get(("tom", layers[0], 1))
    assert bank.nbytes == 4 * steps * 2 * round(0.5 * image_tokens) * 2 * inner * 4  # fp32
    assert len(seen) == steps
    for step, (hidden, rotary) in enumerate(seen):
        with torch.no_grad():
            text = hidden.shape[1] - image_tokens
            assert text == tiny_flux.backbone.max_sequence_length
            key = attn.norm_k(attn.to_k(hidden).unflatten(-1, (-1, attn.head_dim)))
            key = apply_rotary_emb(key, rotary, sequence_dim=1)[:, text:].flatten(2)
            value = attn.to_v(hidden)[:, text:]
        for frame, tokens in enumerate(bank.get(("mara", layers[0], step))):
            banked_keys, banked_values = tokens[0].split(inner, dim=-1)
            # Which image tokens were sampled: each banked value is one of the frame's image token values.
            distance = (banked_values[:, None] - value[frame][None]).abs().amax(dim=-1)
            indices = distance.argmin(dim=1)
            assert distance.min(dim=1).values.max() < 1e-5
            assert torch.equal(indices, indices.sort().values) and len(set(indices.tolist())) == len(indices)
            torch.testing.assert_close(banked_keys, key[frame, indices], rtol=1e-5, atol=1e-5)


def test_the_bank_does_not_grow_with_the_frames_that_read_it(tiny_flux):
    small = {"steps": 3, "width": 64, "height": 64}
    sizes = {}
    for readers in (3, 9):
        frames = [{"text": "{mara} reading on a bench"}] + [{"text": f"{{mara}} in scene {i}"} for i in range(readers)]
        plan = planned(two_friends(frames), model=tiny_flux, generation=small)
        method, results = draw_plan(plan, tiny_flux)
        recorded = {result.metadata["bank_bytes"] for result in results}
        assert len(recorded) == 1 and recorded == {method.bank.nbytes}
        sizes[readers] = method.bank.nbytes
    assert sizes[3] == sizes[9] > 0


def test_true_cfg_keeps_the_guidance_halves_apart(tiny_flux):
    """With FLUX's true CFG every frame costs two rows a step, as plain text-to-image with it, and the bank keeps
    the uncond and cond tokens apart (one half each)."""
    generation = {"steps": 3, "width": 64, "height": 64, "true_cfg_scale": 3.0, "negative_prompt": "blurry"}
    plan = planned(two_friends(), model=tiny_flux, settings={"sampling": "fixed"}, generation=generation)
    method, frames = draw_plan(plan, tiny_flux)
    assert all(frame.metadata["denoiser_evaluations"] == 2 * 3 for frame in frames)
    (tokens,) = method.bank.get(("mara", "single_transformer_blocks.2.attn", 1))
    assert tokens.shape == (2, round(0.5 * 16), 2 * tiny_flux.backbone.denoiser.inner_dim)
    assert not torch.equal(tokens[0], tokens[1])


def test_what_flux_cannot_run_is_refused_before_any_model_loads(monkeypatch, tmp_path, capsys):
    import storycast.models.flux_components
    from storycast.cli.main import main

    def no_loading(*args, **kwargs):
        raise AssertionError("bad input must be refused before the model loads")

    monkeypatch.setattr(storycast.models.flux_components, "tiny_flux_components", no_loading)
    with pytest.raises(SettingsError, match=r"freeu=true.*FLUX has no UNet.*--set freeu=false"):
        planned(two_friends(), model=ModelSpec(source="tiny-flux"), settings={"freeu": "true"})
    with pytest.raises(SettingsError, match=r"scheduler='ddim' is not a sampler of flux models.*one of model"):
        planned(two_friends(), model=ModelSpec(source="tiny-flux"), settings={"scheduler": "ddim"})
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(two_friends()))
    out = tmp_path / "run"
    command = ["generate", str(story), "--method", "storydiffusion", "--preset", "tiny-flux", "--out", str(out)]
    assert main([*command, "--set", "freeu=true"]) == 2
    assert "freeu" in capsys.readouterr().err
    assert main([*command, "--set", "scheduler=ddim"]) == 2
    assert "scheduler" in capsys.readouterr().err
    assert not out.exists()


def test_methods_that_do_not_run_on_flux_are_refused_naming_their_families(monkeypatch):
    import storycast.models.flux_components

    def no_loading(*args, **kwargs):
        raise AssertionError("a method that does not run on FLUX must be refused before the model loads")

    monkeypatch.setattr(storycast.models.flux_components, "tiny_flux_components", no_loading)
    refused = set()
    for name in list_methods():
        method = get_method(name)
        if "flux" in method.families:
            continue
        refused.add(name)
        with pytest.raises(SettingsError) as err:
            plan_for(name, two_friends(), preset="tiny-flux")
        message = str(err.value)
        assert f"'{name}'" in message and "the model is flux" in message
        assert all(family in message for family in method.families), (name, message)
    assert refused == NON_FLUX_METHODS
    assert {"vanilla", "storydiffusion"} <= set(list_methods()) - refused

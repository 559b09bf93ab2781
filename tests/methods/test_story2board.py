"""Story2Board on the tiny FLUX: the authors' batch of canvases (a naive reference written from their processor,
store and transformer) equals our canvases drawn one at a time, and stops equalling it when the mixing or the
anchoring is changed; everything off is the plain FLUX draw of the canvas; frames read only their own storyboard;
anchors do not grow with the story; editing a reference redraws its readers alone; bad input is refused before
loading; a frame costs vanilla FLUX's transformer evaluations (each over a canvas of twice the tokens)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from storycast.attention.processor import StoryAttnProcessor
from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import RunContext
from storycast.methods.story2board.attention import flux_blocks
from storycast.methods.story2board.canvas import (
    canvas_prompt,
    split_canvas,
    storyboard_prompt,
    storyboards,
)
from storycast.methods.story2board.method import Story2BoardMethod
from storycast.methods.story2board.ravm import decayed_average, mix_values, reciprocal_pairs
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.families.flux import image_positions
from storycast.pipelines.sampler import Sampling, sample
from storycast.runs.draw import draw
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import parse_story
from storycast.utils.torch_utils import make_generator
from tests.methods.helpers import pixels, plan_for, two_friends

# 128 px panels: an 8 x 8 token grid, where a 1-token border and regions of 2 tokens leave RAVM tokens to mix.
GEN = {"steps": 3, "width": 128, "height": 128}
MIXING = {"border_tokens": 1, "min_region_tokens": 2}
FOX = {
    "title": "Fox",
    "characters": [{"id": "fox", "description": "a fox with glowing eyes", "class_word": "fox"}],
    "frames": [
        {"text": "{fox} stepping onto a mossy path"},
        {"text": "{fox} bounding across a fallen tree"},
        {"text": "{fox} perched atop an archway"},
        {"text": "{fox} watching a meteor shower"},
    ],
}


@pytest.fixture(scope="module")
def tiny_flux():
    return load_models(ModelSpec(source="tiny-flux", device="cpu"))


def run(models, data=FOX, settings=MIXING, generation=GEN):
    return draw(parse_story(data), "story2board", models, method_settings=settings, generation=generation)


# -- pure parts ------------------------------------------------------------------------------------------------


def test_the_story_splits_into_storyboards_by_cast_and_the_sentence_is_the_authors():
    story = parse_story(two_friends([*two_friends()["frames"], {"text": "{tom} sleeping"}]))
    boards, plain = storyboards(story)
    assert [(b.cast, b.frames) for b in boards] == [(("mara",), (0, 4)), (("tom",), (1, 5))]
    assert plain == [2, 3]  # a pair no other frame names; nobody
    assert boards[0].subject == "young woman with short red hair"
    # main.py lines 145-149, with an empty style.
    assert storyboard_prompt("fox", "on a path", "by a lake") == (
        "A storyboard of a fox on a path (top) and the exact same fox by a lake (bottom)"
    )
    assert canvas_prompt(story, boards[0], 4) == (
        "A watercolor illustration of a storyboard of a young woman with short red hair reading on a bench (top) and "
        "the exact same young woman with short red hair riding a bike (bottom)"
    )
    from PIL import Image

    canvas = Image.fromarray(np.concatenate([np.zeros((4, 6, 3)), np.full((4, 6, 3), 255)]).astype(np.uint8))
    top, bottom = split_canvas(canvas)
    assert top.size == bottom.size == (6, 4) and pixels(top).max() == 0 and pixels(bottom).min() == 255


def test_the_ravm_parts():
    average = torch.full((2, 3), 0.5)
    step_mean = torch.full((2, 3), 2.0)
    assert torch.allclose(decayed_average(average, step_mean, 3, 0.8), torch.full((2, 3), 0.8 * 0.5 + 0.2 * 1.5 / 4))
    # One strong 2 x 2 blob of frame tokens, each attending most to a different reference token.
    mutual = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) * 0.01
    blob = [5, 6, 9, 10]
    for partner, token in enumerate(blob):
        mutual[token, 3 + partner] = 1.0
    tokens, partners = reciprocal_pairs(mutual, (4, 4), border=0, min_size=2)
    assert tokens.tolist() == blob and partners.tolist() == [3, 4, 5, 6]
    assert reciprocal_pairs(mutual, (4, 4), border=0, min_size=5)[0].numel() == 0  # the region is too small
    assert reciprocal_pairs(mutual, (4, 4), border=1, min_size=1)[0].tolist() == blob  # the blob is inside
    assert reciprocal_pairs(torch.zeros(16, 16), (4, 4), border=0, min_size=1)[0].numel() == 0
    value = torch.arange(12.0).reshape(6, 2)
    mixed = mix_values(value, torch.tensor([4, 5]), torch.tensor([0, 1]), 0.25)
    assert torch.equal(mixed[:4], value[:4]) and torch.equal(mixed[4], 0.75 * value[4] + 0.25 * value[0])


# -- the authors' formulation, naively -------------------------------------------------------------------------


class AuthorsStore:
    """attention_store.py: a block counter, the step's maps, their decayed average."""

    def __init__(self, rows, blocks, panel):
        self.blocks, self.iteration, self.maps = blocks, -1, []
        self.average = torch.zeros(rows, 2 * panel, panel)

    def step(self):
        return self.iteration // self.blocks

    def block(self):
        return self.iteration % self.blocks

    def store(self, mutual):
        self.maps.append(mutual)
        if self.block() == self.blocks - 1:
            mean = torch.stack(self.maps, 1).mean(1)
            self.maps = []
            self.average = 0.8 * self.average + 0.2 * (mean - self.average) / (self.step() + 1)


def authors_region(bottom, grid, margin, min_size):
    """get_cc_watershed: margin zeroed, scaled to [0, 1], above scikit-image's Otsu, small objects removed."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    image = bottom.reshape(grid).copy()
    image[:margin, :], image[-margin:, :], image[:, :margin], image[:, -margin:] = 0, 0, 0, 0
    image = (image - image.min()) / (image.max() - image.min())
    binary = image > threshold_otsu(image)
    try:
        return remove_small_objects(binary, max_size=min_size - 1)
    except TypeError:
        return remove_small_objects(binary, min_size=min_size)


class AuthorsProcessor:
    """story2board_attention_processor.py, written from its algorithm over a whole batch of canvases."""

    def __init__(self, store, text, panel, grid, strength, blocks, steps, margin, min_size):
        self.store, self.text, self.panel, self.grid = store, text, panel, grid
        self.strength, self.blocks, self.steps, self.margin, self.min_size = strength, blocks, steps, margin, min_size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        rows, heads = hidden_states.shape[0], attn.heads

        def split(x):
            return x.view(rows, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query, key, value = (
            split(attn.to_q(hidden_states)),
            split(attn.to_k(hidden_states)),
            split(attn.to_v(hidden_states)),
        )
        query, key = attn.norm_q(query), attn.norm_k(key)
        if encoder_hidden_states is not None:
            e = encoder_hidden_states
            eq, ek, ev = split(attn.add_q_proj(e)), split(attn.add_k_proj(e)), split(attn.add_v_proj(e))
            query = torch.cat([attn.norm_added_q(eq), query], 2)
            key = torch.cat([attn.norm_added_k(ek), key], 2)
            value = torch.cat([ev, value], 2)
        t, p = self.text, self.panel
        scores = ((query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5).softmax(-1).mean(1)
        to_top, to_bottom = scores[:, t + p :, t : t + p], scores[:, t : t + p, t + p :]
        top_bottom = torch.minimum(to_bottom, to_top.transpose(-1, -2))
        bottom_top = torch.minimum(to_top, to_bottom.transpose(-1, -2))
        self.store.store(torch.cat([top_bottom, bottom_top], 1))
        if self.steps[0] <= self.store.step() <= self.steps[1]:
            mutual = self.store.average[:, p:]
            for i in range(rows):
                region = authors_region(mutual[i].max(-1).values.numpy(), self.grid, self.margin, self.min_size)
                if self.blocks[0] <= self.store.block() <= self.blocks[1]:
                    bottom = torch.from_numpy(np.flatnonzero(region))
                    top = mutual[i][bottom].argmax(-1)
                    blended = (1 - self.strength) * value[i, :, t + p + bottom] + self.strength * value[i, :, t + top]
                    value[i, :, t + p + bottom] = blended
        query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(rows, -1, heads * query.shape[-1])
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out[:, : encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1] :]
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


@pytest.mark.parametrize("double", [True, False])
def test_one_layer_records_and_mixes_as_the_authors_processor(tiny_flux, double):
    """One call of a double- or single-stream layer at a mixing step, both stores holding the same average: the
    same output (the mutual attention recorded, the average updated, the tokens chosen and mixed)."""
    pytest.importorskip("skimage")
    from storycast.methods.story2board.attention import CanvasState, ReciprocalValueMixing

    model = tiny_flux.backbone.denoiser
    attn = (model.transformer_blocks if double else model.single_transformer_blocks)[0].attn
    generator = torch.Generator().manual_seed(3)
    text, grid = 5, (4, 4)
    panel = grid[0] * grid[1]
    image = torch.randn(2, 2 * panel, attn.query_dim, generator=generator)
    prompt = torch.randn(2, text, attn.query_dim, generator=generator)
    ids = torch.cat([torch.zeros(text, 3), image_positions(2 * grid[0], grid[1])])
    rotary = model.pos_embed(ids)
    average = torch.rand(2, panel, panel, generator=generator) * 0.1
    store = AuthorsStore(2, 1, panel)  # one block: the call closes its step, as the authors' last block does
    store.iteration = 1
    store.average = torch.cat([average.transpose(-1, -2), average], 1)
    theirs = AuthorsProcessor(store, text, panel, grid, 0.5, (0, 0), (1, 21), 1, 2)
    state = CanvasState(
        frames=2, guidance=False, text_tokens=text, step=1, panel_tokens=panel, grid=grid, blocks=1,
        mixing_blocks=range(1), mixing_steps=range(1, 22), strength=0.5, border=1, min_size=2, average=average,
    )  # fmt: skip
    ours = ReciprocalValueMixing(state, 0)
    args = (image, prompt) if double else (torch.cat([prompt, image], 1), None)
    with torch.no_grad():
        expected, got = theirs(attn, *args, None, rotary), ours(attn, *args, None, rotary)
        stock = StoryAttnProcessor(state)(attn, *args, None, rotary)
    first = (lambda x: x[0]) if double else (lambda x: x)
    assert state.mixed[1] > 0
    assert torch.allclose(first(got), first(expected), atol=1e-5)
    assert torch.allclose(state.average, store.average[:, panel:], atol=1e-7)
    assert not torch.allclose(first(got), first(stock), atol=1e-4)


@contextlib.contextmanager
def authors_transformer(model, store, anchoring, panel):
    """story2board_transformer.py: the counter before every block, the first canvas's reference panel copied into
    the others after it."""

    def count(module, args, kwargs):
        store.iteration += 1

    def anchor(module, args, output):
        text, image = output
        if anchoring:
            image[1:, :panel] = image[0, :panel]
        return text, image

    blocks = flux_blocks(model)
    handles = [b.register_forward_pre_hook(count, with_kwargs=True) for b in blocks]
    handles += [b.register_forward_hook(anchor) for b in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def authors_storyboard(models, story, strength=0.5, anchoring=True, mixing_blocks=(3, 5), border=1, min_size=2):
    """main.py's run: every canvas of the storyboard in one batch from the same noise; its panels as they save
    them (the first canvas's top and bottom, the others' bottoms)."""
    backbone = models.backbone
    board = storyboards(story)[0][0]
    gen = story.settings
    prompts = [canvas_prompt(story, board, f) for f in board.frames[1:]]
    sampling = Sampling.of(backbone, gen)
    sampling = dataclasses.replace(sampling, height=2 * gen.height)
    conditioning = backbone.encode(
        prompts, None, width=sampling.width, height=sampling.height, guidance=sampling.guidance
    )
    grid = (gen.height // 16, gen.width // 16)
    panel = grid[0] * grid[1]
    blocks = len(flux_blocks(backbone.denoiser))
    store = AuthorsStore(len(prompts), blocks, panel)
    processor = AuthorsProcessor(
        store, conditioning.cond.text_tokens, panel, grid, strength, mixing_blocks, (1, 21), border, min_size
    )
    denoiser = backbone.denoiser
    previous = dict(denoiser.attn_processors)
    denoiser.set_attn_processor(processor)
    try:
        with authors_transformer(denoiser, store, anchoring, panel):
            drawn = sample(
                backbone,
                conditioning,
                [make_generator(story.frame_seed(board.frames[0]), "cpu") for _ in prompts],
                sampling,
            )
    finally:
        denoiser.set_attn_processor(previous)
    halves = [split_canvas(image) for image in drawn.images]
    return [halves[0][0], *[bottom for _, bottom in halves]]


class Latents:
    """A canvas's final latents where a picture would be (the tiny VAE's random pictures hardly vary): cropped in
    pixels as a picture is, 8 pixels a latent."""

    def __init__(self, tensor):
        self.tensor = tensor

    @property
    def size(self):
        return self.tensor.shape[-1] * 8, self.tensor.shape[-2] * 8

    def crop(self, box):
        left, top, right, bottom = (v // 8 for v in box)
        return Latents(self.tensor[:, top:bottom, left:right])


@contextlib.contextmanager
def latent_pictures(models):
    models.backbone.decode = lambda latents: [Latents(x) for x in latents]
    try:
        yield
    finally:
        del models.backbone.decode


@pytest.fixture(scope="module")
def ours(tiny_flux):
    with latent_pictures(tiny_flux):
        return run(tiny_flux)


def close(a, b) -> bool:
    return torch.allclose(a.tensor, b.tensor, atol=2e-5)  # a batch of canvases against one at a time: rounding


def test_our_canvases_one_at_a_time_are_the_authors_batch(tiny_flux, ours):
    pytest.importorskip("skimage")
    assert all(sum(f.metadata["mixed_tokens"].values()) > 0 for f in ours.frames)  # RAVM mixed tokens
    with latent_pictures(tiny_flux):
        theirs = authors_storyboard(tiny_flux, ours.plan.story)
    for frame, image in zip(ours.frames, theirs, strict=True):
        assert close(frame.image, image), frame.index


@pytest.mark.parametrize("change", [{"strength": 0.25}, {"anchoring": False}, {"mixing_blocks": (0, 5)}])
def test_the_authors_batch_changed_is_not_ours(tiny_flux, ours, change):
    pytest.importorskip("skimage")
    with latent_pictures(tiny_flux):
        theirs = authors_storyboard(tiny_flux, ours.plan.story, **change)
    later = [(frame, image) for frame, image in zip(ours.frames, theirs, strict=True)][1:]
    assert not all(close(frame.image, image) for frame, image in later)


def test_everything_off_is_the_plain_flux_draw_of_the_canvas(tiny_flux):
    """Without mixing and anchoring each canvas is FLUX's own draw of the authors' sentence at twice the frame's
    height (the comparison is the canvas, not a vanilla frame: the frame is half of a picture drawn whole)."""
    off = run(tiny_flux, settings={"mixing_strength": 0, "anchoring": False})
    story = off.plan.story
    backbone = tiny_flux.backbone
    board = storyboards(story)[0][0]
    sampling = dataclasses.replace(Sampling.of(backbone, story.settings), height=2 * story.settings.height)
    for frame in off.frames[1:]:
        prompt = canvas_prompt(story, board, frame.index)
        assert frame.metadata["prompt"] == prompt
        conditioning = backbone.encode([prompt], None, width=128, height=256, guidance=sampling.guidance)
        plain = sample(backbone, conditioning, [make_generator(frame.seed, "cpu")], sampling).images[0]
        assert np.array_equal(pixels(frame.image), pixels(split_canvas(plain)[1]))
        assert frame.metadata["mixed_tokens"] == {} and frame.metadata["anchor_bytes"] == 0


# -- what frames read, memory, resuming ------------------------------------------------------------------------


def friends(tom_text="{tom} fishing at a lake"):
    frames = [
        {"text": "{mara} reading on a bench"},
        {"text": tom_text},
        {"text": "{mara} riding a bike"},
        {"text": "{tom} cooking soup"},
        {"text": "{mara} asleep"},
        {"text": "an empty street at night"},
    ]
    return two_friends(frames)


def test_a_frame_reads_only_its_own_storyboard_and_anchors_do_not_grow_with_the_story(tiny_flux):
    small = dict(GEN, width=64, height=64)
    first = run(tiny_flux, friends(), generation=small)
    edited = run(tiny_flux, friends("{tom} fishing in the rain"), generation=small)
    for index in (0, 2, 4, 5):  # mara's frames and the frame naming nobody: tom's edit is not theirs
        assert np.array_equal(pixels(first.frames[index].image), pixels(edited.frames[index].image)), index
    assert not np.array_equal(pixels(first.frames[3].image), pixels(edited.frames[3].image))
    assert first.frames[4].metadata["storyboard"] == "mara" and first.frames[3].metadata["storyboard"] == "tom"
    assert first.frames[5].metadata["role"] == "plain frame"
    # One storyboard's anchors: blocks x steps x (panel tokens x inner dim), whatever the story's length.
    denoiser = tiny_flux.backbone.denoiser
    expected = len(flux_blocks(denoiser)) * 3 * 16 * denoiser.inner_dim * 4
    longer = friends()
    longer["frames"] += [{"text": "{mara} painting"}, {"text": "{mara} singing"}, {"text": "{mara} running"}]
    many = run(tiny_flux, longer, generation=small)
    assert {f.metadata["anchor_bytes"] for f in [*first.frames[:5], *many.frames] if "anchor_bytes" in f.metadata} == {
        expected
    }


def test_editing_a_reference_frame_redraws_exactly_its_readers(tiny_flux, tmp_path):
    small = dict(GEN, width=64, height=64)
    options = RunOptions(out_dir=tmp_path / "run", storyboard=False)
    first = generate_story(parse_story(friends()), "story2board", tiny_flux, options, generation=small)
    assert first.drawn == [0, 1, 2, 3, 4, 5]
    edited = friends()
    edited["frames"][0]["text"] = "{mara} reading under a tree"
    plan = plan_for("story2board", edited, preset="tiny-flux", generation=small, out_dir=tmp_path / "run")
    assert plan.frames_to_draw == [0, 2, 4]  # mara's reference row (frames 0 and 2) and its reader
    again = generate_story(parse_story(edited), "story2board", tiny_flux, options, generation=small)
    assert again.drawn == [0, 2, 4] and again.kept == [1, 3, 5]


def test_a_reader_without_its_reference_row_names_the_fix(tiny_flux):
    plan = plan_for("story2board", FOX, preset="tiny-flux", model=tiny_flux, generation=dict(GEN, width=64, height=64))
    assert [(g.frames, g.group.depends_on) for g in plan.groups] == [((0, 1), ()), ((2,), (0,)), ((3,), (0,))]
    method = plan.method(tiny_flux, plan.settings)
    with pytest.raises(StorycastError, match=r"reference panel of 'fox'.*restore"):
        method.generate(plan.story, (2,), RunContext())


# -- refusals and cost ------------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_any_model_loads(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("bad input must be refused before the model loads")

    monkeypatch.setattr("storycast.models.loading.load_models", no_loading)
    nobody = {"title": "Empty", "frames": [{"text": "a street"}, {"text": "a field"}]}
    with pytest.raises(StorycastError, match=r"no character.*two frames.*vanilla"):
        plan_for("story2board", nobody, preset="tiny-flux")
    once_each = two_friends(two_friends()["frames"][:4])  # mara, tom, the pair and nobody: each cast once
    with pytest.raises(StorycastError, match="no character"):
        plan_for("story2board", once_each, preset="tiny-flux")
    for settings, field in [
        ({"mixing_strength": 1.5}, "mixing_strength"),
        ({"first_mixing_step": 0}, "first_mixing_step"),
        ({"first_mixing_step": 5, "last_mixing_step": 4}, "last_mixing_step"),
        ({"first_mixing_block": 9, "last_mixing_block": 3}, "last_mixing_block"),
        ({"attention_decay": 1}, "attention_decay"),
        ({"min_region_tokens": 0}, "min_region_tokens"),
    ]:
        with pytest.raises(SettingsError, match=field):
            plan_for("story2board", FOX, preset="tiny-flux", settings=settings)
    with pytest.raises(SettingsError, match="true_cfg_scale"):
        plan_for("story2board", FOX, preset="tiny-flux", generation={**GEN, "true_cfg_scale": 2.0})
    for preset in ("tiny", "tiny-sd15"):
        with pytest.raises(SettingsError, match="runs on flux"):
            plan_for("story2board", FOX, preset=preset)


def test_the_authors_defaults_and_a_frames_cost_in_transformer_evaluations(tiny_flux, ours):
    assert Story2BoardMethod.generation_defaults("flux") == {
        "steps": 28, "guidance_scale": 3.5, "width": 1024, "height": 512, "seed": 42, "seed_policy": "same",
    }  # fmt: skip
    settings = plan_for("story2board", FOX, preset="tiny-flux").settings
    assert settings.mixing_blocks(57) == range(30, 57) and settings.mixing_steps() == range(1, 22)
    assert settings.mixing_blocks(6) == range(3, 6)  # the same share on the tiny transformer
    vanilla = draw(parse_story(FOX), "vanilla", tiny_flux, generation=GEN)
    per_frame = vanilla.frames[0].metadata["denoiser_evaluations"]
    assert per_frame == GEN["steps"]
    # A canvas costs vanilla's evaluations (each over twice the image tokens); the reference row's gives two frames.
    assert [f.metadata["denoiser_evaluations"] for f in ours.frames] == [per_frame] * 4
    assert [f.metadata["canvas"] for f in ours.frames] == [[128, 256]] * 4
    assert {f.seed for f in ours.frames} == {42}  # the same noise for every canvas (seed policy "same")

"""CharaConsist on tiny FLUX, end to end: equal to a naive reference of the authors' story loop (and not when its
matching, re-positioning, merge or background sharing is changed), plain FLUX with its mechanisms off, the cost of
the first pass, frames reading only the characters they name, a bank that does not grow with the story, resume
after an edit, and bad input refused before any model loads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import RunContext
from storycast.models.spec import ModelSpec
from storycast.runs.draw import draw
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import parse_story
from tests.methods.characonsist_reference import AuthorsRun, text_lengths
from tests.methods.helpers import GEN, pixels, plan_for, two_friends

DESCRIPTION = "a young woman with short red hair"
BACKGROUNDS = ["in a quiet park,", "on a busy street,", "in a small kitchen,"]
# 128 px (8 x 8 image tokens) and seed 2, frames from seeds 2, 3, 4: on the random-weight model these give each
# reading frame several matched points, each matched to another place of the identity frame (checked below).
REFERENCE_GEN = {"steps": 3, "width": 128, "height": 128}


def one_character(seed=2, policy="per-frame"):
    return {
        "title": "Mara",
        "characters": [{"id": "mara", "description": DESCRIPTION, "class_word": "woman"}],
        "frames": [{"text": f"{background} {{mara}}"} for background in BACKGROUNDS],
        "settings": {"seed": seed, "seed_policy": policy},
    }


def planned(data, model=None, settings=None, generation=GEN, out_dir=None):
    return plan_for("characonsist", data, preset="tiny-flux", model=model, settings=settings, generation=generation,
                    out_dir=out_dir)  # fmt: skip


def draw_plan(plan, models, latents=None):
    """Every group in plan order with one method object; the final latents of each frame into ``latents``."""
    method = plan.method(models, plan.settings)
    backbone = models.backbone
    decode = backbone.decode
    if latents is not None:
        backbone.decode = lambda final: (latents.append(final), decode(final))[1]
    try:
        results = [r for group in plan.groups for r in method.generate(plan.story, group.frames, RunContext())]
    finally:
        backbone.decode = decode
    return method, sorted(results, key=lambda r: r.index)


@pytest.mark.parametrize("share_background", [False, True])
def test_the_story_equals_the_authors_loop_and_not_when_a_part_is_changed(tiny_flux, share_background):
    backbone = tiny_flux.backbone
    plan = planned(one_character(), tiny_flux, {"share_background": share_background}, REFERENCE_GEN)
    ours: list = []
    _, frames = draw_plan(plan, tiny_flux, ours)
    assert [f.metadata["matched_points"]["mara"] for f in frames[1:]] == [3, 5]
    story, s = plan.story, plan.settings
    prompts = [story.prompt(i) for i in range(len(story))]
    lengths = [
        text_lengths(backbone.tokenizer, b, p, backbone.max_sequence_length)
        for b, p in zip(BACKGROUNDS, prompts, strict=True)
    ]
    windows = (s.attention_start, s.attention_end, s.mask_step, s.merge_start, s.merge_decay, s.merge_end)
    assert windows == (1, 2, 1, 1, 1, 2)  # the authors' 1, 41, 10, 1, 11, 31 of 50 steps, at 3 steps
    seeds = [story.frame_seed(i) for i in range(len(story))]

    def authors(perturb=None, share=share_background):
        return AuthorsRun(backbone, 3, 128, windows, share_bg=share, perturb=perturb).draw(prompts, lengths, seeds)

    def largest_difference(reference):
        return max(float((a - b).abs().max()) for a, b in zip(ours, reference, strict=True))

    assert largest_difference(authors()) <= 1e-6
    for perturb in ("roll-matches", "keep-positions", "half-merge"):
        assert largest_difference(authors(perturb)) > 2e-5, perturb
    if share_background:
        assert largest_difference(authors(share=False)) > 2e-5


@pytest.fixture(scope="module")
def two_friend_runs(tiny_flux):
    """The two-friends story drawn with every mechanism off, with the defaults (the bank's reads recorded per
    frame), and by vanilla FLUX, at the same generation settings."""
    off = {"share_foreground": "false", "share_background": "false", "merge": "false"}
    _, plain = draw_plan(planned(two_friends(), tiny_flux, off), tiny_flux)
    plan = planned(two_friends(), tiny_flux)
    method = plan.method(tiny_flux, plan.settings)
    reads: dict[int, set] = {}
    get = method.bank.get
    frames = []
    for group in plan.groups:
        (index,) = group.frames
        reads[index] = set()
        method.bank.get = lambda key, index=index: (reads[index].add(key[0]), get(key))[1]
        frames += method.generate(plan.story, group.frames, RunContext())
    method.bank.get = get
    vanilla = draw(parse_story(two_friends()), "vanilla", tiny_flux, generation={**GEN, "seed_policy": "same"})
    return {"plan": plan, "off": plain, "frames": sorted(frames, key=lambda r: r.index), "reads": reads,
            "vanilla": vanilla.frames}  # fmt: skip


def test_with_its_mechanisms_off_every_frame_is_vanilla_flux_pixel_for_pixel(two_friend_runs):
    off, vanilla = two_friend_runs["off"], two_friend_runs["vanilla"]
    assert len({f.seed for f in vanilla}) == 1  # the authors' one seed for every image
    for mine, plain in zip(off, vanilla, strict=True):
        assert np.array_equal(pixels(mine.image), pixels(plain.image)), mine.index
        assert mine.metadata["denoiser_evaluations"] == plain.metadata["denoiser_evaluations"] == GEN["steps"]
    # With the defaults, identity frames and the frame naming nobody are plain FLUX too; the readers are not.
    frames = two_friend_runs["frames"]
    for index in (0, 1, 3):
        assert np.array_equal(pixels(frames[index].image), pixels(vanilla[index].image)), index


def test_a_reading_frame_costs_vanilla_steps_plus_the_first_pass_to_the_mask_step(two_friend_runs):
    plan, frames, vanilla = two_friend_runs["plan"], two_friend_runs["frames"], two_friend_runs["vanilla"]
    steps, mask_step = plan.generation.steps, plan.settings.mask_step
    assert (steps, mask_step) == (3, 1)
    evaluations = [f.metadata["denoiser_evaluations"] for f in frames]
    assert [v.metadata["denoiser_evaluations"] for v in vanilla] == [steps] * 5
    # identity, identity, reader (both), nobody, reader: vanilla's T, or T + mask_step + 1 (at 50 steps: 61 / 50).
    assert evaluations == [steps, steps, steps + mask_step + 1, steps, steps + mask_step + 1]


def test_a_frame_reads_only_the_characters_it_names(two_friend_runs):
    reads, frames = two_friend_runs["reads"], two_friend_runs["frames"]
    assert reads == {0: set(), 1: set(), 2: {"mara", "tom"}, 3: set(), 4: {"mara"}}
    assert frames[4].metadata["reads"] == ["mara"] and frames[2].metadata["reads"] == ["mara", "tom"]
    assert set(frames[4].metadata["matched_points"]) == {"mara"}


def test_the_bank_does_not_grow_with_the_frames_that_read_it(tiny_flux):
    sizes = {}
    for readers in (2, 6):
        frames = [{"text": "{mara} reading on a bench"}] + [{"text": f"{{mara}} in scene {i}"} for i in range(readers)]
        method, results = draw_plan(planned(two_friends(frames), tiny_flux), tiny_flux)
        assert {r.metadata["bank_bytes"] for r in results} == {method.bank.nbytes}
        sizes[readers] = method.bank.nbytes
    assert sizes[2] == sizes[6] > 0


def test_editing_an_identity_frame_redraws_exactly_its_readers_and_a_resume_restores_it(tiny_flux, tmp_path):
    out = tmp_path / "run"
    options = RunOptions(out_dir=out, storyboard=False)
    first = generate_story(parse_story(two_friends()), "characonsist", tiny_flux, options, generation=GEN)
    assert first.drawn == [0, 1, 2, 3, 4]
    before = pixels(Image.open(out / "frames" / "frame_004.png"))
    edited = two_friends()
    edited["frames"][0] = {"text": "{mara} reading under a tree"}
    assert planned(edited, out_dir=out).frames_to_draw == [0, 2, 4]  # mara's identity frame and its readers
    (out / "frames" / "frame_004.png").unlink()
    resumed = generate_story(parse_story(two_friends()), "characonsist", tiny_flux, options, generation=GEN)
    assert resumed.drawn == [4]  # mara's identity frame restored in memory, not redrawn to disk
    assert np.array_equal(pixels(Image.open(out / "frames" / "frame_004.png")), before)
    again = generate_story(parse_story(edited), "characonsist", tiny_flux, options, generation=GEN)
    assert again.drawn == [0, 2, 4] and again.kept == [1, 3]


def test_bad_input_is_refused_before_any_model_loads(monkeypatch):
    import storycast.models.flux_components

    def no_loading(*args, **kwargs):
        raise AssertionError("bad input must be refused before the model loads")

    monkeypatch.setattr(storycast.models.flux_components, "tiny_flux_components", no_loading)
    monkeypatch.setattr("storycast.models.loading.load_models", no_loading)
    nobody = two_friends([{"text": "an empty street"}, {"text": "a quiet lake"}])
    with pytest.raises(StorycastError, match=r"no frame names a character.*--method vanilla"):
        planned(nobody)
    never_alone = two_friends([{"text": "{mara} reading"}, {"text": "{mara} and {tom} having tea"}])
    with pytest.raises(StorycastError, match=r"'tom' never appear\(s\) alone"):
        planned(never_alone)
    for settings, message in [
        ({"merge_weight": "1.5"}, "merge_weight"),
        ({"similarity_threshold": "2"}, "similarity_threshold"),
        ({"attention_start": "0"}, r"attention_start=0.*starts at step 1"),
        ({"merge_start": "2", "merge_decay": "1"}, r"merge_start=2 is after merge_decay=1"),
        ({"foreground_every": "0"}, "foreground_every"),
        ({"mask_step": "3"}, r"mask_step=3: a 3-step run"),
        ({"attention_end": "9"}, r"attention_end=9 is past the run's 3 steps"),
        ({"background_frames": [7]}, r"background_frames=\[7\]: the story has frames 0 to 4"),
    ]:
        with pytest.raises(SettingsError, match=message):
            planned(two_friends(), settings=settings)
    with pytest.raises(SettingsError, match=r"true_cfg_scale=3.0.*leave true_cfg_scale unset"):
        planned(two_friends(), generation={**GEN, "true_cfg_scale": 3.0, "negative_prompt": "blurry"})
    for preset in ("tiny", "tiny-sd15"):
        with pytest.raises(SettingsError, match=r"'characonsist' runs on flux models, but the model is sd"):
            plan_for("characonsist", two_friends(), preset=preset, model=ModelSpec(source=preset))


def test_the_plan_draws_identity_frames_first_and_readers_depend_on_them():
    plan = planned(two_friends())
    assert [(g.frames, g.group.depends_on, g.group.role) for g in plan.groups] == [
        ((0,), (), "identity frame of mara"),
        ((1,), (), "identity frame of tom"),
        ((2,), (0, 1), "frames"),
        ((3,), (), "plain frame"),
        ((4,), (0,), "frames"),
    ]
    # The authors' defaults at 50 steps, and their generation settings.
    full = plan_for("characonsist", two_friends(), preset="tiny-flux", generation={"steps": 50})
    s = full.settings
    assert (s.attention_start, s.attention_end, s.mask_step, s.merge_start, s.merge_decay, s.merge_end) == (
        1, 41, 10, 1, 11, 31
    )  # fmt: skip
    assert full.generation.guidance_scale == 3.5 and full.generation.seed_policy == "same"


def test_masks_are_saved_beside_the_frames_when_asked(tiny_flux):
    _, frames = draw_plan(planned(one_character(), tiny_flux, {"save_masks": "true"}, REFERENCE_GEN), tiny_flux)
    for frame in frames:
        mask = np.asarray(frame.extras["mask"])
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
        # The 8 x 8 token grid, each token a 16 x 16 block; as many foreground tokens as the frame reports.
        assert int((mask[::16, ::16] == 255).sum()) == frame.metadata["foreground_tokens"]
    assert {frame.metadata["foreground_tokens"] for frame in frames} != {0}

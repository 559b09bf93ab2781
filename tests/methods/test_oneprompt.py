"""1Prompt1Story: Singular-Value Reweighting against hand-computed values and a numpy reference of the authors'
code, the single prompt and its circular window, and the method on tiny SDXL (end to end, 2T UNet evaluations
per frame, switched off it is vanilla SDXL, bad input refused before drawing, a benchmark run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from storycast.errors import SettingsError, StoryError
from storycast.methods.base import RunContext
from storycast.methods.oneprompt import prompts as P
from storycast.methods.oneprompt.method import OnePromptOneStoryMethod
from storycast.methods.oneprompt.settings import OnePromptSettings
from storycast.methods.oneprompt.svr import (
    END_DECAY,
    Reweighting,
    reweight_encoders,
    reweight_prompt,
    reweight_singular_values,
)
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.models.tiny import tiny_tokenizer
from storycast.pipelines.families import prompt_encoder
from storycast.pipelines.noise import count_evaluations
from storycast.story.parse import parse_story
from tests.methods.helpers import pixels, plan_for, two_friends

GEN = {"steps": 4, "width": 64, "height": 64}
OFF = {"svr_mode": "off", "ipca": "false"}


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def planned(data, model=None, settings=None, generation=GEN):
    return plan_for("1prompt1story", data, preset="tiny", model=model, settings=settings, generation=generation)


def fox(frames=("wearing a scarf in a meadow", "playing in the snow", "at the edge of a village with river"), **extra):
    """The authors' main.py example: one subject, frames given as contexts."""
    return {
        "title": "Red fox",
        "style": "A photo of",
        "characters": [{"id": "fox", "description": "a red fox with coat", "class_word": "fox"}],
        "frames": [{"text": "{fox} " + context, "context": context} for context in frames],
        **extra,
    }


# -- Singular-Value Reweighting -------------------------------------------------------------------------------


def numpy_svr(rows, alpha, beta):
    """``punish_wight``: X = rows^T, sigma' = beta sigma exp(-alpha sigma), back as rows."""
    u, sigma, vt = np.linalg.svd(rows.T, full_matrices=False)
    return (u @ np.diag(beta * sigma * np.exp(-alpha * sigma)) @ vt).T


def numpy_authors_prompt(embeds, phrases, express, ends, mode, suppress, enhance):
    """The pipeline's loop over ``swr_single_prompt_embeds``: each other phrase in order, then the frame's own."""
    out = embeds.astype(np.float64).copy()
    order = [i for i in range(len(phrases)) if i != express] + [express]
    for i in order:
        alpha, beta = enhance if i == express else suppress
        if mode == "svr-eot":
            out[ends] *= 0.9
            indices = sorted(set(phrases[i]))
        else:
            indices = sorted(set(phrases[i]) | set(ends))
        if indices:
            out[indices] = numpy_svr(out[indices], alpha, beta)
    return out


def test_svr_of_a_rank_one_block_is_the_hand_computed_one():
    # Rows 0 and 2 are (3, 0) and (4, 0): X = [[3, 4], [0, 0]] has one singular value, 5, with right singular
    # vector (0.6, 0.8); alpha 0.1, beta 2 make it 2 * 5 * exp(-0.5) = 6.0653.
    embeds = torch.tensor([[3.0, 0.0], [1.0, 2.0], [4.0, 0.0], [-1.0, 5.0]])
    out = reweight_singular_values(embeds, [0, 2], alpha=0.1, beta=2.0)
    sigma = 2 * 5 * math.exp(-0.5)
    expected = torch.tensor([[0.6 * sigma, 0.0], [1.0, 2.0], [0.8 * sigma, 0.0], [-1.0, 5.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert torch.equal(embeds[0], torch.tensor([3.0, 0.0]))  # the input is not changed in place


def test_svr_matches_numpy_and_is_the_identity_at_alpha_0_beta_1():
    embeds = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    positions = [1, 4, 7]
    for alpha, beta in ((0.01, 0.05), (-0.01, 1.0), (0.3, 1.5)):
        expected = embeds.numpy().astype(np.float64).copy()
        expected[positions] = numpy_svr(expected[positions], alpha, beta)
        torch.testing.assert_close(
            reweight_singular_values(embeds, positions, alpha, beta), torch.from_numpy(expected).float(),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
    torch.testing.assert_close(reweight_singular_values(embeds, positions, 0.0, 1.0), embeds, rtol=0, atol=1e-6)
    halved = embeds.clone()
    halved[positions] *= 0.5
    torch.testing.assert_close(reweight_singular_values(embeds, positions, 0.0, 0.5), halved, rtol=0, atol=1e-6)
    assert torch.equal(reweight_singular_values(embeds, [], 0.3, 0.1), embeds)


@pytest.mark.parametrize("mode", ["svr", "svr-eot"])
def test_prompt_reweighting_suppresses_the_others_in_order_then_expresses_as_the_authors(mode):
    embeds = torch.randn(12, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phrases, ends = [[1, 2, 3], [4, 5], [6, 7, 8]], [9, 10, 11]
    suppress, enhance = (0.01, 0.05), (-0.01, 1.0)
    for express in range(3):
        out = reweight_prompt(embeds, phrases, express, ends, mode=mode, suppress=Reweighting(*suppress),
                              enhance=Reweighting(*enhance))  # fmt: skip
        expected = numpy_authors_prompt(embeds.numpy(), phrases, express, ends, mode, suppress, enhance)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[0], embeds[0])  # the start token is never reweighted
    if mode == "svr-eot":  # the end rows only decay, once per reweighting (two suppressed, one expressed)
        torch.testing.assert_close(out[ends], embeds[ends] * END_DECAY**3)
    # The order is the authors': expressing first would give another result.
    swapped = numpy_authors_prompt(embeds.numpy(), phrases[::-1], 0, ends, mode, suppress, enhance)
    expressed_first = reweight_prompt(embeds, phrases, 2, ends, mode=mode)
    assert mode == "svr-eot" or np.abs(expressed_first.numpy() - swapped).max() > 1e-6
    assert torch.equal(reweight_prompt(embeds, phrases, 0, ends, mode="off"), embeds)


def test_each_encoders_part_is_reweighted_on_its_own():
    embeds = torch.randn(1, 10, 10, generator=torch.Generator().manual_seed(2))
    phrases, ends = [[1, 2], [3, 4, 5]], [6, 7, 8, 9]
    out = reweight_encoders(embeds, [4, 6], phrases, 1, ends)
    parts = [reweight_prompt(embeds[0, :, :4], phrases, 1, ends), reweight_prompt(embeds[0, :, 4:], phrases, 1, ends)]
    torch.testing.assert_close(out[0], torch.cat(parts, dim=-1), rtol=0, atol=0)
    assert (out[0] - reweight_prompt(embeds[0], phrases, 1, ends)).abs().max() > 1e-4  # not one 10-wide SVD
    with pytest.raises(ValueError, match="do not add up"):
        reweight_encoders(embeds, [4, 4], phrases, 1, ends)


# -- the single prompt and its window -------------------------------------------------------------------------


def test_circular_windows_and_the_authors_word_count():
    assert P.circular_windows(4, 2) == [[0, 1], [1, 2], [2, 3], [3, 0]]
    identity = " ".join(["w"] * 17)
    phrase = " ".join(["w"] * 20)
    assert P.words_window(identity, [phrase] * 5) == 2  # 37, 57 fit; 77 reaches the limit
    assert P.words_window(identity, [phrase] * 5, suffix="a b c d") == 2
    assert P.words_window(identity, [phrase] * 5, suffix=" ".join(["s"] * 20)) == 1


def test_the_token_window_fits_every_window_not_only_the_first():
    # Identity 10 tokens, phrases 30, 5, 30, 5; with start and end tokens a prompt holds 77.
    assert P.tokens_window(10, [30, 5, 30, 5], 0, 77) == 3  # 12 + 65 = 77 for both windows holding two 30s
    assert P.tokens_window(10, [30, 5, 30, 5], 1, 77) == 2
    assert P.tokens_window(10, [5, 5, 5], 0, 77) == 3
    assert P.tokens_window(70, [10], 0, 77) == 0


def test_frames_are_drawn_from_the_whole_prompt_or_their_circular_window():
    chain = P.Chain(("fox",), "A photo of a red fox", (0, 1, 2), ("in a meadow", "in the snow", "by a river"))
    count = lambda text: len(text.split())  # noqa: E731
    whole = P.chain_prompts(chain, window_length=10, counting="tokens", token_count=count, limit=77)
    assert {p.text for p in whole} == {"A photo of a red fox in a meadow in the snow by a river"}
    assert [p.express for p in whole] == [0, 1, 2] and whole[1].suppress == (0, 2)
    windowed = P.chain_prompts(chain, window_length=2, counting="tokens", token_count=count, limit=77)
    assert [p.text for p in windowed] == [
        "A photo of a red fox in a meadow in the snow",
        "A photo of a red fox in the snow by a river",
        "A photo of a red fox by a river in a meadow",
    ]
    assert [p.express for p in windowed] == [0, 0, 0] and windowed[2].frames == (2, 0)
    # Not even one phrase fits beside the identity prompt: a window of one (the prompt is truncated).
    tight = P.chain_prompts(chain, window_length=10, counting="tokens", token_count=count, limit=8)
    assert [p.window for p in tight] == [1, 1, 1]


def test_the_story_is_split_by_cast_and_phrases_leave_the_characters_out():
    story = parse_story(two_friends())
    chains = P.story_chains(story)
    assert [(c.cast, c.frames, c.phrases) for c in chains] == [
        (("mara",), (0, 4), ("reading on a bench", "riding a bike")),
        (("tom",), (1,), ("fishing at a lake",)),
        (("mara", "tom"), (2,), ("having tea",)),
        ((), (3,), ("an empty street at night",)),
    ]
    assert chains[2].identity == (
        "A watercolor illustration of a young woman with short red hair and an old man with a grey beard"
    )
    assert chains[3].identity == "A watercolor illustration of"
    later = parse_story(
        two_friends([{"text": "a cat watching {mara} cook"}, {"text": "{tom}, asleep", "context": "x"}])
    )
    assert P.frame_phrase(later, 0) == "a cat watching the woman cook"
    possessive = parse_story(two_friends([{"text": "{mara}'s dog, {tom} and {mara}, asleep"}]))
    assert P.frame_phrase(possessive, 0) == "the woman's dog, the man and the woman, asleep"
    assert P.frame_phrase(parse_story(two_friends([{"text": "{tom}, {mara}: at sea"}])), 0) == "at sea"
    assert P.frame_phrase(later, 1) == "x"  # a context wins


def test_phrase_positions_are_their_own_tokens(sdxl):
    tokenizer = sdxl.pipeline.tokenizer
    chain = P.Chain(("fox",), "A photo of a red fox", (0, 1, 2), ("in the snow", "by a river", "in the snow"))
    prompt = P.chain_prompts(chain, window_length=10, counting="tokens", token_count=P.token_counter(tokenizer),
                             limit=77)[2]  # fmt: skip
    tokens = P.prompt_tokens(tokenizer, prompt)
    ids = tokenizer(prompt.text, padding="max_length", max_length=77).input_ids
    for phrase, positions in zip(prompt.phrases, tokens.phrases, strict=True):
        assert [ids[i] for i in positions] == P.content_ids(tokenizer, phrase)
    # The third phrase repeats the first: it gets its own tokens, where the authors' search finds the first.
    assert tokens.phrases[2] != tokens.phrases[0] and tokens.phrases[2][0] > tokens.phrases[1][-1]
    assert ids[tokens.eot] == tokenizer.eos_token_id and tokens.end_positions == tuple(range(tokens.eot, 77))
    assert tokens.eot == 1 + sum(len(P.content_ids(tokenizer, t)) for t in (prompt.identity, *prompt.phrases))
    assert P.identity_positions(tokenizer, "A photo of a red fox") == tuple(
        range(1 + len(P.content_ids(tokenizer, "A photo of a red fox")))
    )
    # A phrase the 77 tokens cut off has no positions.
    long = P.FramePrompt("a " * 72 + "in the snow", "a " * 72, ("in the snow",), 0, (0,), 1)
    assert P.prompt_tokens(tokenizer, long).phrases == ((),)


# -- the method on tiny SDXL ------------------------------------------------------------------------------------


def test_defaults_are_the_authors():
    settings = OnePromptSettings()
    assert settings.flat_dict() == {
        "window_length": 10,
        "window_count": "tokens",
        "scheduler": "euler",
        "freeu": False,
        "svr_mode": "svr",
        "alpha_weaken": 0.01,
        "beta_weaken": 0.05,
        "alpha_enhance": -0.01,
        "beta_enhance": 1.0,
        "ipca": True,
        "ipca_dropout": 0.0,
        "ipca_start_step": 0,
    }
    defaults = OnePromptOneStoryMethod.generation_defaults("sdxl")
    assert defaults == {"steps": 50, "guidance_scale": 5.0, "seed_policy": "same"}
    assert OnePromptOneStoryMethod.benchmark_protocol() == {"seed": 42, "seed_policy": "same"}
    assert OnePromptSettings.from_mapping({"ipca": "false", "svr_mode": "svr-eot"}).ipca.enabled is False


def test_a_one_character_story_end_to_end(tmp_path):
    from storycast.cli.main import main

    story = tmp_path / "fox.yaml"
    story.write_text(yaml.safe_dump(fox()))
    out = tmp_path / "run"
    assert main(["generate", str(story), "--method", "1prompt1story", "--preset", "tiny", "--steps", "4",
                 "--width", "64", "--height", "64", "--out", str(out)]) == 0  # fmt: skip
    records = json.loads((out / "manifest.json").read_text())["frames"]
    assert len(records) == 3 and {r["seed"] for r in records} == {0}  # the same initial noise for every frame
    whole = "A photo of a red fox with coat wearing a scarf in a meadow playing in the snow at the edge of a village with river"
    identity_words = len(P.content_ids(tiny_tokenizer(), "A photo of a red fox with coat"))
    for record, context in zip(records, fox()["frames"], strict=True):
        meta = record["metadata"]
        assert meta["one_prompt"] == whole and meta["expressed"] == context["context"]
        assert len(meta["suppressed"]) == 2 and meta["window"] == 3
        assert meta["denoiser_evaluations"] == 2 * 4  # 2T: no identity pass
        assert meta["ipca_tokens"] == 1 + identity_words  # the start token and the identity prompt's words
    assert (out / "storyboard.png").is_file()


def test_a_two_character_story_end_to_end(tmp_path):
    from storycast.cli.main import main

    story = tmp_path / "friends.yaml"
    story.write_text(yaml.safe_dump(two_friends()))
    out = tmp_path / "run"
    assert main(["generate", str(story), "--method", "1prompt1story", "--preset", "tiny", "--steps", "2",
                 "--width", "64", "--height", "64", "--out", str(out)]) == 0  # fmt: skip
    records = json.loads((out / "manifest.json").read_text())["frames"]
    meta = [r["metadata"] for r in records]
    assert [m["identity_prompt"].removeprefix("A watercolor illustration of").strip() for m in meta] == [
        "a young woman with short red hair",
        "an old man with a grey beard",
        "a young woman with short red hair and an old man with a grey beard",
        "",  # nobody: the style alone, and the frame still draws
        "a young woman with short red hair",
    ]
    assert meta[0]["one_prompt"] == meta[4]["one_prompt"] and meta[4]["suppressed"] == ["reading on a bench"]
    assert all(m["denoiser_evaluations"] == 2 * 2 for m in meta)


def test_denoiser_evaluations_are_2T_per_frame(sdxl):
    plan = planned(fox(), model=sdxl, generation={**GEN, "steps": 3})
    method = OnePromptOneStoryMethod(sdxl, plan.settings)
    with count_evaluations(sdxl.pipeline.unet) as counter:
        method.prepare(plan.story, RunContext())
        results = method.generate(plan.story, (0, 1, 2), RunContext())
    assert counter.evaluations == 3 * 2 * 3 == sum(r.metadata["denoiser_evaluations"] for r in results)


def test_switched_off_it_is_vanilla_sdxl_and_each_part_changes_the_frame(sdxl):
    from storycast.methods.vanilla import VanillaMethod

    data = {"title": "t", "style": "A watercolor illustration of", "frames": [{"text": "a lighthouse at dusk"}],
            "settings": {"negative_prompt": "blurry", "seed": 5}}  # fmt: skip
    images = {}
    for name, settings in (("off", OFF), ("svr", {"ipca": "false"}), ("ipca", {"svr_mode": "off"})):
        plan = planned(data, model=sdxl, settings=settings)
        result = OnePromptOneStoryMethod(sdxl, plan.settings).generate(plan.story, (0,), RunContext())[0]
        assert result.metadata["one_prompt"] == plan.story.prompt(0) and result.seed == 5
        images[name] = pixels(result.image)
    vanilla = VanillaMethod(sdxl).generate(plan.story, (0,), RunContext())[0]
    assert np.abs(images["off"] - pixels(vanilla.image)).max() <= 1
    assert np.abs(images["svr"] - images["off"]).mean() > 0.1  # random tiny weights: small, but not rounding
    assert np.abs(images["ipca"] - images["off"]).mean() > 0.1


def test_the_conditioning_is_reweighted_per_encoder_and_the_pooled_embedding_kept(sdxl):
    plan = planned(fox(), model=sdxl)
    method = OnePromptOneStoryMethod(sdxl, plan.settings)
    prompt = method.frame_prompts(plan.story)[1]
    plain = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([prompt.text], [""], width=64, height=64)
    pair = method.encode(plan.story, prompt, None)
    assert not pair.uncond.embeds.any() and not pair.uncond.pooled.any()  # no negative prompt: zeros, as diffusers
    assert torch.equal(pair.cond.pooled, plain.cond.pooled)
    tokens = P.prompt_tokens(sdxl.pipeline.tokenizer, prompt)
    widths = method.encoder_widths(plain.cond.embeds.shape[-1])
    assert widths == [32, 32]  # the tiny encoders; SDXL's are 768 and 1280
    expected = reweight_encoders(plain.cond.embeds, widths, tokens.phrases, 1, tokens.end_positions)
    torch.testing.assert_close(pair.cond.embeds, expected, rtol=0, atol=0)
    changed = (pair.cond.embeds - plain.cond.embeds)[0].abs().amax(dim=-1) > 0
    touched = {*tokens.end_positions, *(i for span in tokens.phrases for i in span)}
    assert set(changed.nonzero().flatten().tolist()) == touched  # the identity prompt's tokens are not reweighted
    negative = method.encode(plan.story, prompt, "blurry")
    assert negative.uncond.embeds.any()
    ids = method.identity_tokens(plan.story, prompt.identity)
    alone = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([prompt.identity], [""], width=64, height=64)
    assert torch.equal(
        ids, alone.cond.embeds[:, : len(P.identity_positions(sdxl.pipeline.tokenizer, prompt.identity))]
    )


def test_a_long_story_is_drawn_through_circular_windows(sdxl):
    contexts = [f"in place {i}" for i in range(6)]
    plan = planned(fox(contexts), model=sdxl, settings={"window_length": 4}, generation={**GEN, "steps": 1})
    method = OnePromptOneStoryMethod(sdxl, plan.settings)
    prompts = method.frame_prompts(plan.story)
    assert [prompts[i].frames for i in range(6)] == [tuple((i + j) % 6 for j in range(4)) for i in range(6)]
    result = method.generate(plan.story, (4,), RunContext())[0]
    assert result.metadata["window"] == 4 and result.metadata["expressed"] == contexts[4]
    assert result.metadata["suppressed"] == [contexts[5], contexts[0], contexts[1]]
    # Long phrases: every window fits CLIP's 77 tokens. Counted in words, as the authors do, the windows are
    # longer and their prompts pass 77 tokens (their last phrases are cut off).
    tokenizer = sdxl.pipeline.tokenizer
    long = fox([f"standing in place number {i} under a sky of colour {i}" for i in range(12)])
    words = planned(long, model=sdxl, settings={"window_count": "words"})
    by_tokens = OnePromptOneStoryMethod(sdxl, planned(long, model=sdxl).settings).frame_prompts(words.story)
    by_words = OnePromptOneStoryMethod(sdxl, words.settings).frame_prompts(words.story)
    assert all(len(tokenizer(p.text).input_ids) <= 77 for p in by_tokens.values())
    assert 1 < by_tokens[0].window < by_words[0].window < 12
    assert len(tokenizer(by_words[0].text).input_ids) > 77


def test_ipca_key_dropout_is_seeded_by_the_frame(sdxl):
    plan = planned(fox(), model=sdxl, settings={"ipca_dropout": "0.5"}, generation={**GEN, "steps": 1})
    method = OnePromptOneStoryMethod(sdxl, plan.settings)
    first, again = (pixels(method.generate(plan.story, (0,), RunContext())[0].image) for _ in range(2))
    assert np.array_equal(first, again)
    plain = planned(fox(), model=sdxl, generation={**GEN, "steps": 1})
    full = pixels(OnePromptOneStoryMethod(sdxl, plain.settings).generate(plain.story, (0,), RunContext())[0].image)
    assert np.abs(first - full).max() > 0


def test_editing_a_frame_redraws_the_frames_of_its_cast_only():
    before = planned(two_friends())
    frames = [dict(f) for f in two_friends()["frames"]]
    frames[0]["text"] = "{mara} reading on a sofa"
    after = planned(two_friends(frames))
    changed = [a.key != b.key for a, b in zip(before.groups, after.groups, strict=True)]
    assert changed == [True, False, False, False, True]  # frames 0 and 4 share mara's prompt


def test_bad_input_is_refused_before_any_drawing(sdxl, tmp_path):
    with pytest.raises(SettingsError, match="runs on sdxl"):
        plan_for("1prompt1story", fox(), preset="tiny-sd15", generation=GEN)
    with pytest.raises(SettingsError, match="window_length must be at least 1"):
        planned(fox(), settings={"window_length": "0"})
    with pytest.raises(SettingsError, match="ipca_dropout must be at least 0 and below 1"):
        planned(fox(), settings={"ipca_dropout": "1"})
    with pytest.raises(SettingsError, match="did you mean 'alpha_weaken'"):
        planned(fox(), settings={"alpha_weakn": "0.1"})
    long = fox([("a very long context " * 12).strip(), "in the snow"])
    plan = planned(long, model=sdxl)
    with count_evaluations(sdxl.pipeline.unet) as counter, pytest.raises(StoryError) as info:
        OnePromptOneStoryMethod(sdxl, plan.settings).prepare(plan.story, RunContext())
    assert counter.evaluations == 0
    assert "frames[0].text: its phrase and the identity prompt of its characters take" in str(info.value)
    assert "frames[1]" not in str(info.value) and "Fix: shorten the frame text" in str(info.value)

    from storycast.cli.main import main

    story = tmp_path / "long.yaml"
    story.write_text(yaml.safe_dump(long))
    assert main(["generate", str(story), "--method", "1prompt1story", "--preset", "tiny", "--steps", "1",
                 "--width", "64", "--height", "64", "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    assert not list((tmp_path / "run").glob("frames/*.png"))


def test_the_settings_are_listed_with_their_sources(capsys):
    from storycast.cli.main import main

    assert main(["methods", "1prompt1story"]) == 0
    out = capsys.readouterr().out
    for text in ("svr_mode = 'svr'", "Alpha_weaken 0.01", "ipca = True", "window_length = 10", "gen_benchmark.py"):
        assert text in out


def test_a_benchmark_run_uses_the_authors_seed_and_svr_mode(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from storycast.cli.main import main
    from tests.evaluation.fakes import write_suite

    suite = write_suite(tmp_path / "suite", stories=1, frames=2)
    out = tmp_path / "bench"
    assert main(["benchmark", str(suite), "--method", "1prompt1story", "--preset", "tiny", "--steps", "1",
                 "--width", "64", "--height", "64", "--out", str(out)]) == 0  # fmt: skip
    manifest = json.loads((out / "suite" / "story_000" / "manifest.json").read_text())
    assert {frame["seed"] for frame in manifest["frames"]} == {42}
    assert manifest["frames"][0]["metadata"]["one_prompt"] == (
        "A close-up photo of young woman with short red hair standing in place number 0 standing in place number 1"
    )
    assert json.loads((out / "benchmark.json").read_text())["protocol"] == {"seed": 42, "seed_policy": "same"}
    assert manifest["method"]["settings"]["svr"]["mode"] == "svr-eot"  # gen_benchmark.py's, not the demo's "svr"
    assert (out / "results.json").is_file()

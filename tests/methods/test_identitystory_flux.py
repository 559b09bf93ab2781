"""IdentityStory on FLUX through PuLID-FLUX (our extension), on tiny FLUX with random PuLID weights and tiny face
models: stage 2 from the sweet spot equals the naive full formulation, the masked passes change only what is inside
the masks, discovery in PuLID's space is reused and never mixes with SDXL identities, one to three characters a frame,
bad input refused before drawing, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from storycast.identity.library import IdentityLibrary
from storycast.methods.base import RunContext
from storycast.methods.identitystory import flux, flux_injection, injection
from storycast.methods.identitystory.method import IdentityStoryMethod
from storycast.methods.identitystory.settings import IdentityStorySettings
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.noise import count_evaluations
from storycast.runs.plan import resolve_generation
from storycast.story.parse import parse_story
from storycast.utils.torch_utils import make_generator

SMALL = {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1, "mask_provider": "attention"}
STEPS = 4


@pytest.fixture(scope="module")
def models():
    """Tiny FLUX of its own (PuLID-FLUX is attached to it)."""
    return load_models(ModelSpec(source="tiny-flux", device="cpu"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def make_method(models, **settings):
    return IdentityStoryMethod(models, IdentityStorySettings.from_mapping({**SMALL, **settings}))


CHARACTERS = (
    ("ana", "a young woman with a red coat", "woman"),
    ("leo", "an old man with a grey beard", "man"),
    ("kid", "a small boy with a blue cap", "boy"),
)


def story_of(frames, models, method, **generation):
    characters = [{"id": i, "description": d, "class_word": w} for i, d, w in CHARACTERS]
    story = parse_story({"title": "t", "style": "A photo of", "characters": characters, "frames": frames})
    generation = {"steps": STEPS, **generation}
    return dataclasses.replace(story, settings=resolve_generation(story, models, method, generation))


@pytest.fixture(scope="module")
def space(models, cache):
    method = make_method(models)
    folder = flux.face_models_folder(method.settings.flux, models, cache)
    return flux.pulid_space(models, method.settings, folder)


def frame_inputs(models, space, method, story, count, seed=0):
    """The frame's conditioning, initial noise and schedule, and ``count`` regions with random ID tokens."""
    gen = story.settings
    size = {"width": gen.width, "height": gen.height}
    schedule = method._schedule(story, method.resolved_settings(story))
    conditioning = models.backbone.encode([story.prompt(0)], [""], guidance=schedule.guidance, **size)
    generator = torch.Generator().manual_seed(seed)
    characters = story.frame_characters(0)[:count]
    texts = [flux.region_prompt(story, c, count) for c in characters]
    pair = models.backbone.encode(texts, [""] * count, guidance=schedule.guidance, **size)
    regions = [
        flux_injection.PulidRegion(c.id, pair.rows(k, k + 1), 3 * torch.randn(*space.token_shape, generator=generator))
        for k, c in enumerate(characters)
    ]
    initial = models.backbone.initial_latents(
        models.backbone.scheduler(gen.steps, **size), [make_generator(5)], **size
    )
    return conditioning, regions, initial, schedule


def square_masks(count, size=128):
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for k in range(count):
        masks[k, 8 + 36 * k : 40 + 36 * k, 16 + 30 * k : 56 + 30 * k] = True
    return masks


@pytest.mark.parametrize("count", [1, 2])
def test_stage_two_from_the_sweet_spot_equals_the_naive_full_formulation(models, space, count):
    method = make_method(models)
    story = story_of([{"text": "{ana} and {leo} in a garden"}], models, method)
    conditioning, regions, initial, schedule = frame_inputs(models, space, method, story, count)
    assert schedule.guidance.embedded == 3.5 and schedule.guidance.halves == 1  # FLUX.1-dev's guidance
    masks = square_masks(count)
    transformer = models.backbone.denoiser
    with count_evaluations(transformer) as fast_count:
        stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
        passes = flux_injection.PulidPasses(space, regions, schedule, id_weight=1.0)
        fast = injection.redenoise(models.backbone, stage1, passes, masks, schedule)
    with count_evaluations(transformer) as slow_count:
        slow, reference_stage1 = flux_injection.reference_redenoise(
            space, conditioning, regions, masks, initial, schedule, id_weight=1.0
        )
    torch.testing.assert_close(stage1.latents, reference_stage1.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    # T + K (T - s + 1) transformer rows against the naive 2T + K (T - s + 1): the re-denoising starts at s - 1.
    s = schedule.sweet_spot_step
    assert fast_count.evaluations == STEPS + count * (STEPS - s + 1)
    assert slow_count.evaluations == 2 * STEPS + count * (STEPS - s + 1)
    # The identities act: other ID tokens draw another frame, and the branch is detached after the stage.
    assert (fast - stage1.latents).abs().max() > 1e-3
    other = [dataclasses.replace(r, id_tokens=-r.id_tokens) for r in regions]
    changed = injection.redenoise(
        models.backbone, stage1, flux_injection.PulidPasses(space, other, schedule, 1.0), masks, schedule
    )
    assert (changed - fast).abs().max() > 1e-4
    assert not any(block._forward_hooks for block in transformer.transformer_blocks)


def test_the_masked_passes_change_only_latents_inside_their_masks(models, space):
    method = make_method(models)
    story = story_of([{"text": "{ana} and {leo} talking"}], models, method)
    conditioning, regions, initial, schedule = frame_inputs(models, space, method, story, 2)
    masks = square_masks(2)
    stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
    final = injection.redenoise(
        models.backbone, stage1, flux_injection.PulidPasses(space, regions, schedule, 1.0), masks, schedule
    )
    inside = injection.step_masks(masks, STEPS - 1, schedule, tuple(final.shape[-2:])).sum(dim=0)[0] > 0
    assert inside.any() and (~inside).any()
    assert torch.equal(final[..., ~inside], stage1.latents[..., ~inside])
    assert not torch.equal(final[..., inside], stage1.latents[..., inside])


def test_a_frame_costs_t_plus_k_times_the_redenoised_steps_and_a_frame_without_characters_is_vanilla(models, cache):
    from storycast.methods.vanilla import VanillaMethod

    method = make_method(models)
    story = story_of([{"text": "{ana} reading"}, {"text": "an empty street at night"}], models, method)
    context = RunContext(cache_dir=cache)
    method.prepare(story, context)
    with_character, empty = method.generate(story, (0, 1), context)
    vanilla = VanillaMethod(models).generate(story, (1,), RunContext())[0]
    s = method.resolved_settings(story).injection.sweet_spot_step
    assert s == 2  # round(0.4 * 4), FLUX's fraction
    assert with_character.metadata["denoiser_evaluations"] == STEPS + (STEPS - s + 1)
    assert empty.metadata["denoiser_evaluations"] == STEPS
    difference = np.abs(np.asarray(empty.image, dtype=np.int16) - np.asarray(vanilla.image, dtype=np.int16))
    assert difference.max() <= 1
    assert set(with_character.extras) == {"stage1", "mask_ana"}


def test_discovery_in_pulids_space_is_stored_under_the_generator_and_reused(models, tmp_path):
    method = make_method(models)
    story = story_of([{"text": "{ana} reading"}], models, method)
    transformer = models.backbone.denoiser
    with count_evaluations(transformer) as first:
        method.prepare(story, RunContext(cache_dir=tmp_path))
    library = IdentityLibrary(tmp_path / "identities")
    (key,) = library.keys()
    record = library.get(key)
    assert record.info["generator"] == "flux+pulid-flux" and record.info["source"] == "discovered"
    assert record.info["prompt"] == "a young woman with a red coat"  # the description, no trigger word
    assert record.embedding.numel() == method.pulid.token_shape[0] * method.pulid.token_shape[1]
    assert record.info["denoiser_evaluations"] == first.evaluations == (12 + 1) * STEPS
    assert len(record.info["kept"][0]) == 2  # 12 -> 7 -> 4 -> 2 with the test budget
    again = make_method(models)
    with count_evaluations(transformer) as second:
        again.prepare(story, RunContext(cache_dir=tmp_path))
    assert second.evaluations == 0  # no candidate drawn the second time
    assert torch.equal(again._identities["ana"].embedding, record.embedding)


def test_sdxl_identities_are_never_read_for_a_flux_run(models, tmp_path):
    from storycast.errors import StorycastError
    from storycast.identity.discovery import IdentityFinder

    method = make_method(models)
    method._face_models = flux.face_models_folder(method.settings.flux, models, tmp_path)
    story = story_of([{"text": "{ana} reading"}], models, method)
    finder = flux.identity_finder(method, story, IdentityLibrary(tmp_path / "identities"), RunContext())
    # The same parts make another key once the generator is named: an SDXL entry under the parts is never looked up.
    sdxl = IdentityFinder(finder.adapter, finder.library, finder.model_info, finder.adapter_id, finder.budget)
    parts = {"prompt": finder.search(story.characters[0]), "model": finder.model, "adapter": finder.adapter_id,
             "budget": finder.budget.__dict__}  # fmt: skip
    sdxl_key = sdxl.key(parts)
    assert finder.key(parts) != sdxl_key
    library = finder.library
    library.put(sdxl_key, torch.ones(finder.adapter().token_shape[0] * finder.adapter().token_shape[1]),
                {"character": "ana", "source": "discovered"})  # fmt: skip
    read = []
    get = library.get
    library.get = lambda key: read.append(key) or get(key)
    found = finder.identity(story.characters[0])
    assert sdxl_key not in read and found.key != sdxl_key and not torch.equal(found.embedding, torch.ones(1))
    # Named explicitly, an SDXL + PhotoMaker identity is refused for FLUX.
    named = dataclasses.replace(story.characters[0], identity=sdxl_key)
    with pytest.raises(StorycastError, match=r"made by sdxl\+photomaker, not by FLUX \+ PuLID-FLUX"):
        finder.identity(named)


def test_reference_photos_replace_discovery(models, space, tmp_path, caplog):
    from PIL import Image

    from storycast.identity.photomaker_faces import NoFaceError
    from storycast.vision.tiny_faces import paint_tiny_face

    canvas = np.zeros((128, 128, 3), dtype=np.uint8)
    paint_tiny_face(canvas, 32, 32, 64, np.eye(4))
    Image.fromarray(canvas).save(tmp_path / "ana.png")
    method = make_method(models)
    frames = [{"text": "{ana} reading"}]
    story = story_of(frames, models, method)
    story = dataclasses.replace(
        story, characters=[dataclasses.replace(story.characters[0], references=[tmp_path / "ana.png"]),
                           *story.characters[1:]]
    )  # fmt: skip
    with count_evaluations(models.backbone.denoiser) as counter:
        method.prepare(story, RunContext(cache_dir=tmp_path))
    assert counter.evaluations == 0
    expected = space.photo_tokens([Image.open(tmp_path / "ana.png").convert("RGB")], ["ana"]).reshape(-1)
    torch.testing.assert_close(method._identities["ana"].embedding, expected)
    assert method._identities["ana"].info["generator"] == "flux+pulid-flux"
    # Photos with no face for antelopev2 (a stylised drawing): discovered from the description, with a warning.
    Image.new("RGB", (128, 128)).save(tmp_path / "blank.png")
    blank = dataclasses.replace(story.characters[0], references=[tmp_path / "blank.png"])
    with pytest.raises(NoFaceError, match="no face was found"):
        space.photo_tokens([Image.open(tmp_path / "blank.png").convert("RGB")], ["blank"])
    method = make_method(models)
    with count_evaluations(models.backbone.denoiser) as counter, caplog.at_level("WARNING"):
        method.prepare(
            dataclasses.replace(story, characters=[blank, *story.characters[1:]]), RunContext(cache_dir=tmp_path)
        )
    assert counter.evaluations > 0 and method._identities["ana"].info["source"] == "discovered"
    assert "no face was found" in caplog.text and "discovered from its description instead" in caplog.text


def test_three_characters_in_one_frame(models, cache):
    method = make_method(models)
    frames = [{"text": "{ana}, {leo} and {kid} at a picnic"}, {"text": "{leo} and {kid} fishing"}]
    story = story_of(frames, models, method)
    context = RunContext(cache_dir=cache)
    method.prepare(story, context)
    results = method.generate(story, (0, 1), context)
    s = method.resolved_settings(story).injection.sweet_spot_step
    for result, count in zip(results, (3, 2), strict=True):
        assert result.metadata["denoiser_evaluations"] == STEPS + count * (STEPS - s + 1)
        assert result.metadata["mask_provider"] == "attention"
    masks = np.stack([np.asarray(results[0].extras[f"mask_{cid}"]) > 0 for cid in ("ana", "leo", "kid")])
    assert masks.any(axis=(1, 2)).all() and (masks.sum(axis=0) <= 1).all()
    # The encoders went to the CPU once the identities were known, and come back when an image is embedded.
    assert method.pulid._parked


def test_bad_input_is_refused_before_drawing(models, tmp_path):
    from storycast.errors import MissingWeightsError, SettingsError, StorycastError
    from storycast.runs.plan import plan_run

    data = {"characters": [{"id": "ana", "description": "a young woman", "class_word": "woman"}],
            "frames": [{"text": "{ana} at the window"}]}  # fmt: skip
    spec = ModelSpec(source="tiny-flux")
    for settings, message in (
        ({"controlnet": "tiny"}, "ControlNets are not supported on FLUX"),
        ({"freeu": "true"}, "FreeU scales a UNet's skip connections"),
        ({"sweet_spot_fraction": "1.5"}, "sweet_spot_fraction must be between 0 and 1"),
        ({"id_weight": "-1"}, "id_weight must be at least 0"),
    ):
        with pytest.raises(SettingsError, match=message):
            plan_run(parse_story(data), "identitystory", model=spec, method_settings=settings, generation={"steps": 4})
    transformer = models.backbone.denoiser
    method = make_method(models)
    # The class word beyond the T5 tokens FLUX reads (512).
    missing_word = story_of([{"text": "very " * 300 + "woman", "characters": ["ana"]}], models, method)
    with count_evaluations(transformer) as counter:
        with pytest.raises(StorycastError, match=r"class word 'woman' of 'ana' is not in the frame's prompt"):
            method.prepare(missing_word, RunContext(cache_dir=tmp_path))
        reading = story_of([{"text": "{ana} reading"}], models, method)
        with pytest.raises(MissingWeightsError, match="face_models"):
            make_method(models, face_models=str(tmp_path / "nowhere")).prepare(reading, RunContext(cache_dir=tmp_path))
        with pytest.raises(MissingWeightsError, match="face_parsing"):
            make_method(models, face_parsing=str(tmp_path / "nowhere")).prepare(
                reading, RunContext(cache_dir=tmp_path)
            )
    assert counter.evaluations == 0


def test_the_cli_draws_a_story_on_tiny_flux_end_to_end(tmp_path):
    from storycast.cli.main import main
    from tests.helpers import write_benchmark_file

    out = tmp_path / "run"
    story = write_benchmark_file(tmp_path / "story_001.json", "single", frames=2)
    args = ["generate", str(story), "--method", "identitystory", "--preset", "tiny-flux", "--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--set", "discovery_candidates=12", "--set", "preview_images=1"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 2
    frame = manifest["frames"][0]
    s = 2  # round(0.4 * 4)
    assert frame["metadata"]["denoiser_evaluations"] == STEPS + (STEPS - s + 1)
    assert frame["metadata"]["sweet_spot_step"] == s


def test_the_benchmark_runs_on_tiny_flux_with_its_protocol_recorded(tmp_path):
    from storycast.methods.registry import get_method
    from tests.methods.helpers import tiny_flux_benchmark

    recorded, manifest = tiny_flux_benchmark("identitystory", tmp_path)
    assert (
        recorded["protocol"] == get_method("identitystory").benchmark_protocol() == {"seed": 0, "seed_policy": "same"}
    )
    assert {frame["seed"] for frame in manifest["frames"]} == {0}
    assert manifest["generation"]["guidance_scale"] == 3.5  # FLUX.1-dev's own, not the authors' SDXL 7
    assert all(frame["metadata"]["denoiser_evaluations"] == 2 + 2 for frame in manifest["frames"])  # s = 1


class RecordingProvider:
    """A mask provider that keeps what the provider it wraps returned."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def __call__(self, inputs):
        self.calls.append(self.inner(inputs))
        return self.calls[-1]


def test_grounded_sam_masks_on_flux_are_the_masks_stage_two_redenoises_inside(models, cache, tmp_path, monkeypatch):
    """mask_provider=grounded-sam (tiny random GroundingDINO and SAM) on FLUX: the provider's masks of stage 1's
    image, cleaned, are the masks of stage 2; outside them the frame's latents are stage 1's."""
    from storycast.masks.ops import clean_masks, scale_pixels
    from tests.masks.tiny_grounded_sam import save_tiny_grounded_sam

    detector, segmenter = save_tiny_grounded_sam(tmp_path)
    method = make_method(models, mask_provider="grounded-sam", detector=str(detector), segmenter=str(segmenter),
                         box_threshold=0.0, text_threshold=0.0)  # fmt: skip
    story = story_of([{"text": "{ana} at the window"}], models, method)
    context = RunContext(cache_dir=cache)
    method.prepare(story, context)
    recorder = RecordingProvider(method.mask_provider("grounded-sam"))
    method._providers["grounded-sam"] = recorder
    seen = {}
    redenoise = injection.redenoise

    def recording_redenoise(backbone, stage1, passes, clean, schedule, **kwargs):
        seen.update(stage1=stage1.latents.clone(), masks=clean, schedule=schedule)
        seen["latents"] = redenoise(backbone, stage1, passes, clean, schedule, **kwargs)
        return seen["latents"]

    monkeypatch.setattr(injection, "redenoise", recording_redenoise)
    result = method.generate(story, (0,), context)[0]
    assert result.metadata["mask_provider"] == "grounded-sam"
    (raw,) = recorder.calls
    gen = story.settings
    dilation = scale_pixels(method.resolved_settings(story).masks.cleanup_dilation, (gen.height, gen.width))
    expected = clean_masks(raw["ana"].bool().cpu()[None], dilation)
    assert expected.any() and not expected.all()
    assert torch.equal(seen["masks"], expected)
    assert torch.equal(torch.from_numpy(np.asarray(result.extras["mask_ana"]) > 0), expected[0])
    final, first = seen["latents"], seen["stage1"]
    inside = injection.step_masks(expected, STEPS - 1, seen["schedule"], tuple(final.shape[-2:])).sum(dim=0)[0] > 0
    assert inside.any() and (~inside).any()
    assert torch.equal(final[..., ~inside], first[..., ~inside])
    assert not torch.equal(final[..., inside], first[..., inside])


def naive_true_cfg_redenoise(space, conditioning, regions, clean_masks, initial, schedule):
    """IdentityStory on FLUX with true CFG, written out from the algorithm one transformer row at a time: every
    prediction is uncond + w (cond - uncond), each half its own evaluation; stage 1 plain FLUX over the negative
    prompt; stage 2 drawn again from the noise, from step s - 1 on stage 1's prediction outside the masks and inside
    each character's its own guided prediction, the ID branch given the character's tokens on the cond half and
    PuLID's negative ID tokens on the uncond half."""
    from storycast.identity.pulid_discovery import branch_acting
    from storycast.identity.pulid_flux_branch import IDTarget
    from storycast.pipelines.conditioning import GuidancePair
    from storycast.pipelines.denoise import denoise

    backbone, scale = space.backbone, schedule.guidance.scale
    one_half = dataclasses.replace(schedule.guidance, scale=None)  # the embedded guidance alone

    def evaluate(x, t, text, tokens):
        rows = None if tokens is None else [[IDTarget(tokens, weight=1.0)]]
        with branch_acting(space, rows):
            return backbone.guided_noise(x, t, GuidancePair(None, text), one_half)

    def guided(x, t, pair, tokens=None, negative_tokens=None):
        uncond, cond = evaluate(x, t, pair.uncond, negative_tokens), evaluate(x, t, pair.cond, tokens)
        return uncond + scale * (cond - uncond)

    def scheduler():
        width, height = backbone.image_size(initial)
        return backbone.scheduler(schedule.num_steps, width=width, height=height)

    kept = []
    stage1 = denoise(scheduler(), initial, lambda x, t, i: kept.append(guided(x, t, conditioning)) or kept[-1])

    def second(x, t, i):
        if i + 1 < schedule.sweet_spot_step:
            return guided(x, t, conditioning)
        masks = injection.step_masks(clean_masks, i, schedule, tuple(x.shape[-2:]))
        noise = kept[i] * (1 - masks.sum(dim=0).clamp(max=1))
        for k, region in enumerate(regions):
            noise = noise + masks[k] * guided(x, t, region.conditioning, region.id_tokens, region.uncond_tokens)
        return noise

    return denoise(scheduler(), initial, second), stage1


def test_true_cfg_gives_the_negative_rows_pulids_negative_id_tokens_and_equals_a_naive_formulation(models, space):
    """true_cfg_scale > 1 on FLUX: stage 2's uncond rows get PuLID's negative ID tokens (IDFormer of zeros), each
    character's cond row its own, and the frame equals the formulation written one row at a time."""
    from storycast.identity.library import IdentityRecord

    method = make_method(models)
    story = story_of([{"text": "{ana} and {leo} in a garden"}], models, method, true_cfg_scale=2.5)
    schedule = method._schedule(story, method.resolved_settings(story))
    assert schedule.guidance.halves == 2 and schedule.guidance.scale == 2.5 and schedule.guidance.embedded == 3.5
    characters = story.frame_characters(0)
    generator = torch.Generator().manual_seed(3)
    identities = {c.id: IdentityRecord(c.id, 3 * torch.randn(space.token_shape, generator=generator).reshape(-1), {},
                                       None) for c in characters}  # fmt: skip
    negative = "blurry"
    regions = flux.regions(space, story, 0, characters, identities, negative, schedule.guidance)
    uncond = space.uncond_tokens()
    assert not torch.equal(uncond, torch.zeros_like(uncond))
    passes = flux_injection.PulidPasses(space, regions, schedule, id_weight=1.0)
    # [uncond x K, cond x K], as guided_noise lays the rows out: the negative ID tokens, then each character's own.
    laid_out = [row[0].tokens for row in passes.targets]
    assert all(torch.equal(tokens, uncond) for tokens in laid_out[:2])
    for tokens, character in zip(laid_out[2:], characters, strict=True):
        assert torch.equal(tokens, identities[character.id].embedding.reshape(space.token_shape))
    gen = story.settings
    conditioning = models.backbone.encode([story.prompt(0)], [negative], width=gen.width, height=gen.height,
                                          guidance=schedule.guidance)  # fmt: skip
    initial = models.backbone.initial_latents(
        models.backbone.scheduler(gen.steps, width=gen.width, height=gen.height), [make_generator(5)],
        width=gen.width, height=gen.height,
    )  # fmt: skip
    masks = square_masks(2)
    stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
    fast = injection.redenoise(models.backbone, stage1, passes, masks, schedule)
    slow, slow_stage1 = naive_true_cfg_redenoise(space, conditioning, regions, masks, initial, schedule)
    torch.testing.assert_close(stage1.latents, slow_stage1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    # The negative rows' tokens act: FLUX's plain uncond rows (no negative ID tokens) draw another frame.
    plain = [dataclasses.replace(r, uncond_tokens=None) for r in regions]
    other = injection.redenoise(
        models.backbone, stage1, flux_injection.PulidPasses(space, plain, schedule, 1.0), masks, schedule
    )
    assert (other - fast).abs().max() > 1e-4


def test_discovery_decodes_its_candidates_one_at_a_time_and_puts_the_vae_back(models):
    """16 candidates at 1024 px decoded at once need ~32 GB (RESULTS.md): discovery decodes them one by one, with the
    same images, and leaves the VAE as it found it."""
    from storycast.identity.pulid_discovery import decoding_one_at_a_time

    backbone = models.backbone
    vae = backbone.pipe.vae
    latents = torch.randn(3, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    together = [np.asarray(image) for image in backbone.decode(latents)]
    sizes: list[int] = []
    original = vae._decode
    vae._decode = lambda z, *a, **k: sizes.append(z.shape[0]) or original(z, *a, **k)
    try:
        with decoding_one_at_a_time(backbone):
            apart = [np.asarray(image) for image in backbone.decode(latents)]
    finally:
        del vae._decode
    assert sizes == [1, 1, 1] and not vae.use_slicing
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(apart, together, strict=True))

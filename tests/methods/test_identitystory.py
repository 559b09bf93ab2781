from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from storycast.identity.library import IdentityLibrary
from storycast.masks.base import MaskNotFoundError
from storycast.methods.base import RunContext
from storycast.methods.identitystory import injection, prompts
from storycast.methods.identitystory.method import IdentityStoryMethod
from storycast.methods.identitystory.settings import IdentityStorySettings
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.conditioning import GuidancePair
from storycast.pipelines.noise import count_evaluations
from storycast.runs.plan import resolve_generation
from storycast.runs.runner import RunOptions, generate_story
from storycast.story.parse import load_story, parse_story
from storycast.utils.torch_utils import make_generator
from tests.helpers import write_benchmark_file

SMALL = {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1}


@pytest.fixture(scope="module")
def models():
    """Tiny SDXL of its own: PhotoMaker changes the pipeline (LoRA, trigger token)."""
    return load_models(ModelSpec(source="tiny", device="cpu"))


def make_method(models, **settings):
    return IdentityStoryMethod(models, IdentityStorySettings.from_mapping({**SMALL, **settings}))


def story_of(data, models, method, **generation):
    story = parse_story(data)
    return dataclasses.replace(story, settings=resolve_generation(story, models, method, generation))


def two_character_data(frames):
    return {
        "title": "t",
        "style": "A photo of",
        "characters": [
            {"id": "ana", "description": "a young woman with a red coat", "class_word": "woman"},
            {"id": "leo", "description": "an old man with a grey beard", "class_word": "man"},
            {"id": "kid", "description": "a small boy with a blue cap", "class_word": "boy"},
        ],
        "frames": frames,
    }


def frame_inputs(models, method, story, index, identity_seed=0):
    """Conditioning, regions (random identities) and initial noise of a frame, built the method's way."""
    adapter = method.adapter
    characters = story.frame_characters(index)
    negative = story.negative_prompt(index)
    gen = story.settings
    size = {"width": gen.width, "height": gen.height}
    conditioning = models.backbone.encode([story.prompt(index)], [negative], **size)
    regions_prompts = [prompts.region_prompt(story, c, len(characters)) for c in characters]
    pair, positions = adapter.encode(regions_prompts, [negative] * len(characters), **size)
    generator = torch.Generator().manual_seed(identity_seed)
    regions = [
        injection.RegionInput(
            c.id,
            GuidancePair(pair.uncond.rows(k), pair.cond.rows(k)),
            positions[k],
            torch.randn(64, generator=generator),
        )
        for k, c in enumerate(characters)
    ]
    scheduler = models.backbone.scheduler(gen.steps, **size)
    initial = models.backbone.initial_latents(scheduler, [make_generator(5)], **size)
    return conditioning, regions, initial


def square_masks(count, size=128):
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for k in range(count):
        top = 8 + 40 * k
        masks[k, top : top + 32, 16 + 30 * k : 56 + 30 * k] = True
    return masks


@pytest.mark.parametrize("fuse_mode", ["repeated", "once"])
@pytest.mark.parametrize("count", [1, 2])
def test_optimised_injection_equals_the_authors_formulation(models, fuse_mode, count):
    method = make_method(models)
    frames = [{"text": "{ana} and {leo} in a garden" if count == 2 else "{ana} in a garden"}]
    story = story_of(two_character_data(frames), models, method, steps=6, width=128, height=128)
    conditioning, regions, initial = frame_inputs(models, method, story, 0)
    schedule = injection.InjectionSchedule(6, 3, 7.0, 12, fuse_mode=fuse_mode)
    masks = square_masks(count)
    unet = models.pipeline.unet

    with count_evaluations(unet) as fast_count:
        stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
        fast = injection.stage_two(models.backbone, method.adapter, stage1, regions, masks, schedule)
    with count_evaluations(unet) as slow_count:
        ref_stage1, slow = injection.reference_redenoise(
            models.backbone, method.adapter, conditioning, regions, masks, initial, schedule
        )
    # Called with gradients on, no graph is kept: memory does not grow with the steps.
    assert torch.is_grad_enabled() and not fast.requires_grad and not stage1.latents.requires_grad
    torch.testing.assert_close(stage1.latents, ref_stage1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    # 2T + 2k(T - s + 1) against the authors' 4T + 4T + 2k(T - s + 1).
    assert fast_count.evaluations == 2 * 6 + 2 * count * 4
    assert slow_count.evaluations == 8 * 6 + 2 * count * 4
    # The identity passes changed the frame.
    assert (fast - stage1.latents).abs().max() > 1e-3


def test_lora_fused_for_stage_two_draws_the_same_and_leaves_the_weights_exactly_as_they_were(models):
    method = make_method(models)
    story = story_of(two_character_data([{"text": "{ana} and {leo} in a garden"}]), models, method, steps=5)
    conditioning, regions, initial = frame_inputs(models, method, story, 0)
    schedule = injection.InjectionSchedule(5, 2, 7.0, 12)
    masks = square_masks(2)
    unet = models.pipeline.unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
    switched = injection.stage_two(models.backbone, method.adapter, stage1, regions, masks, schedule)
    fused = injection.stage_two(models.backbone, method.adapter, stage1, regions, masks, schedule, fuse_lora=True)
    torch.testing.assert_close(fused, switched, rtol=1e-4, atol=1e-4)
    assert (fused - stage1.latents).abs().max() > 1e-3  # the identity passes ran with the LoRA
    after = dict(unet.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)  # put back bit for bit
    assert not any(getattr(m, "merged_adapters", []) for m in unet.modules())
    again = injection.stage_two(models.backbone, method.adapter, stage1, regions, masks, schedule)
    assert torch.equal(again, switched)  # and the LoRA is switched as before


def test_stage_one_of_several_frames_batched_draws_the_frames_of_one_by_one(models, tmp_path):
    frames = [{"text": "{ana} in a garden"}, {"text": "an empty street"}, {"text": "{ana} and {leo} talking"}]
    method = make_method(models)
    one_by_one = story_of(two_character_data(frames), models, method, steps=4, batch_size=1)
    batched = story_of(two_character_data(frames), models, method, steps=4, batch_size=2)
    assert [g.frames for g in IdentityStoryMethod.plan(batched, method.settings)] == [(0, 1), (2,)]
    context = RunContext(cache_dir=tmp_path)
    method.prepare(one_by_one, context)
    alone = [r for i in range(3) for r in method.generate(one_by_one, (i,), context)]
    unet = models.pipeline.unet
    calls = []
    hook = unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with count_evaluations(unet) as counter:
            together = method.generate(batched, (0, 1), context)
    finally:
        hook.remove()
    # Stage 1 of both frames in one call per step, then frame 0's stage 2 (frame 1 names nobody): not 4 + 4 + ...
    stage_two = method._schedule(batched, method.resolved_settings(batched)).injection_steps
    assert len(calls) == 4 + stage_two
    for a, b in zip(alone[:2], together, strict=True):
        assert np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max() <= 1
        assert a.metadata["denoiser_evaluations"] == b.metadata["denoiser_evaluations"]
        assert a.seed == b.seed
    assert counter.evaluations == sum(r.metadata["denoiser_evaluations"] for r in together)


def test_latents_outside_every_mask_equal_stage_one_exactly(models):
    method = make_method(models)
    story = story_of(two_character_data([{"text": "{ana} and {leo} talking"}]), models, method, steps=5)
    conditioning, regions, initial = frame_inputs(models, method, story, 0)
    schedule = injection.InjectionSchedule(5, 2, 7.0, 16)
    masks = square_masks(2)
    stage1 = injection.stage_one(models.backbone, conditioning, initial, schedule)
    final = injection.stage_two(models.backbone, method.adapter, stage1, regions, masks, schedule)
    last = injection.step_masks(masks, 4, schedule, (16, 16)).sum(dim=0)[0] > 0
    outside = ~last
    assert outside.any() and last.any()
    assert torch.equal(final[..., outside], stage1.latents[..., outside])
    assert not torch.equal(final[..., last], stage1.latents[..., last])


def test_lora_off_is_the_plain_unet_and_on_changes_it(models):
    from storycast.models.tiny import tiny_sdxl_components

    method = make_method(models)
    unet = models.pipeline.unet
    untouched = tiny_sdxl_components()["unet"]  # the same base weights, never given a LoRA
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(2)),
        "added_cond_kwargs": {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)},
    }
    with torch.no_grad():
        plain = untouched(x, 10, **kwargs).sample
        off = unet(x, 10, **kwargs).sample
        with method.adapter.lora(True):
            on = unet(x, 10, **kwargs).sample
        after = unet(x, 10, **kwargs).sample
    torch.testing.assert_close(off, plain, rtol=0, atol=1e-6)  # LoRA off: the plain SDXL UNet
    torch.testing.assert_close(after, plain, rtol=0, atol=1e-6)  # and switched back off after the block
    assert (on - off).abs().max() > 1e-4


def test_frame_without_characters_is_the_vanilla_frame(models, tmp_path):
    from storycast.methods.vanilla import VanillaMethod

    method = make_method(models)
    data = two_character_data([{"text": "an empty street at night"}])
    story = story_of(data, models, method, steps=3)
    result = method.generate(story, (0,), RunContext(cache_dir=tmp_path))[0]
    plain = VanillaMethod(models).generate(story, (0,), RunContext())[0]
    assert result.metadata["denoiser_evaluations"] == 2 * 3
    assert np.abs(np.asarray(result.image, dtype=np.int16) - np.asarray(plain.image, dtype=np.int16)).max() <= 1


def test_identity_library_hit_skips_discovery(models, tmp_path):
    method = make_method(models)
    story = story_of(two_character_data([{"text": "{ana} reading"}]), models, method, steps=2)
    unet = models.pipeline.unet
    with count_evaluations(unet) as first:
        method.prepare(story, RunContext(cache_dir=tmp_path))
    library = IdentityLibrary(tmp_path / "identities")
    assert len(library.keys()) == 1
    record = library.get(library.keys()[0])
    assert record.embedding.shape == (64,) and record.preview_path is not None
    assert record.info["denoiser_evaluations"] == first.evaluations > 0
    assert len(record.info["kept"][0]) == 2  # 12 -> 7 -> 4 -> 2 with the test budget

    again = make_method(models)
    with count_evaluations(unet) as second:
        again.prepare(story, RunContext(cache_dir=tmp_path))
    assert second.evaluations == 0
    assert torch.equal(again._identities["ana"].embedding, record.embedding)

    other_seed = make_method(models, discovery_seed=1)
    with count_evaluations(unet) as third:
        other_seed.prepare(story, RunContext(cache_dir=tmp_path))
    assert third.evaluations > 0 and len(library.keys()) == 2


def test_a_character_naming_a_library_identity_takes_it_without_discovering(models, tmp_path):
    from storycast.errors import StorycastError

    library = IdentityLibrary(tmp_path / "identities")
    stored = library.put("another-story-ana", torch.linspace(-1, 1, 64), {"character": "someone", "source": "test"})
    data = two_character_data([{"text": "{ana} reading"}])
    data["characters"][0]["identity"] = "another-story-ana"
    method = make_method(models)
    story = story_of(data, models, method, steps=2)
    with count_evaluations(models.pipeline.unet) as counter:
        method.prepare(story, RunContext(cache_dir=tmp_path))
    assert counter.evaluations == 0 and library.keys() == ["another-story-ana"]
    assert torch.equal(method._identities["ana"].embedding, stored.embedding)
    data["characters"][0]["identity"] = "not-there"
    with pytest.raises(StorycastError, match=r"character 'ana': identity 'not-there' is not in the identity library"):
        make_method(models).prepare(story_of(data, models, method, steps=2), RunContext(cache_dir=tmp_path))
    library.put("too-short", torch.zeros(8), {"character": "x"})
    data["characters"][0]["identity"] = "too-short"
    with pytest.raises(StorycastError, match="has 8 values, but this PhotoMaker's ID embeddings have 64"):
        make_method(models).prepare(story_of(data, models, method, steps=2), RunContext(cache_dir=tmp_path))


def test_preview_sheet_puts_the_previews_side_by_side():
    from PIL import Image

    from storycast.identity.discovery import preview_sheet as _sheet

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    sheet = _sheet([Image.new("RGB", (8, 6), colour) for colour in colours])
    assert sheet.mode == "RGB" and sheet.size == (24, 6)
    assert [sheet.getpixel((8 * i + 4, 3)) for i in range(3)] == colours
    assert _sheet([]) is None


def test_identity_from_reference_photos(models, tmp_path):
    from PIL import Image

    photo = tmp_path / "ana.png"
    Image.new("RGB", (64, 64), (200, 120, 90)).save(photo)
    data = two_character_data([{"text": "{ana} reading"}])
    data["characters"][0]["references"] = [str(photo)]
    method = make_method(models)
    story = story_of(data, models, method, steps=2)
    with count_evaluations(models.pipeline.unet) as counter:
        method.prepare(story, RunContext(cache_dir=tmp_path))
    assert counter.evaluations == 0
    expected = method.adapter.embed([Image.open(photo).convert("RGB")])[0]
    torch.testing.assert_close(method._identities["ana"].embedding, expected)


def test_three_character_frame_and_frames_with_zero_one_two(models, tmp_path):
    method = make_method(models, mask_provider="attention")
    frames = [
        {"text": "{ana}, {leo} and {kid} at a picnic"},
        {"text": "{leo} fishing"},
        {"text": "{ana} and {kid} reading"},
        {"text": "a lake at dawn"},
    ]
    story = story_of(two_character_data(frames), models, method, steps=3)
    context = RunContext(cache_dir=tmp_path)
    method.prepare(story, context)
    results = method.generate(story, (0, 1, 2, 3), context)
    steps, s = 3, 1  # sweet spot: max(1, round(10 * 3 / 50)) = 1
    for result, count in zip(results, (3, 1, 2, 0), strict=True):
        assert result.metadata["denoiser_evaluations"] == 2 * steps + 2 * count * (steps - s + 1)
        assert {k for k in result.extras if k.startswith("mask_")} == {
            f"mask_{cid}" for cid in story.frames[result.index].characters
        }
    masks = np.stack([np.asarray(results[0].extras[f"mask_{cid}"]) > 0 for cid in ("ana", "leo", "kid")])
    assert masks.any(axis=(1, 2)).all()
    assert (masks.sum(axis=0) <= 1).all()  # never overlapping


class FailingMasks:
    name = "failing"

    def __init__(self):
        self.calls = 0

    def __call__(self, inputs):
        self.calls += 1
        raise MaskNotFoundError(f"frame {inputs.frame_index + 1}: no '{inputs.characters[0].class_word}' found")


def test_mask_failure_retries_a_bounded_number_of_times_then_names_frame_and_character(models, tmp_path):
    method = make_method(models, mask_retries=2)
    failing = FailingMasks()
    method._providers["attention"] = failing
    method._providers["user"] = failing
    story = story_of(two_character_data([{"text": "{ana} swimming"}]), models, method, steps=2)
    method.prepare(story, RunContext(cache_dir=tmp_path))
    with pytest.raises(MaskNotFoundError) as info:
        method.generate(story, (0,), RunContext(cache_dir=tmp_path))
    assert failing.calls == 3
    message = str(info.value)
    assert "frame 1" in message and "'woman'" in message and "3 attempt(s)" in message


def test_user_masks_are_used(models, tmp_path):
    from PIL import Image

    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (20, 20, 80, 100))
    mask.save(tmp_path / "ana.png")
    data = two_character_data([{"text": "{ana} dancing", "masks": {"ana": str(tmp_path / "ana.png")}}])
    method = make_method(models)
    story = story_of(data, models, method, steps=2)
    method.prepare(story, RunContext(cache_dir=tmp_path))
    result = method.generate(story, (0,), RunContext(cache_dir=tmp_path))[0]
    assert result.metadata["mask_provider"] == "user"
    drawn = np.asarray(result.extras["mask_ana"]) > 0
    assert drawn[50, 50] and not drawn[5, 5] and not drawn[120, 120]


def test_class_word_missing_from_a_prompt_is_refused_before_drawing(models, tmp_path):
    from storycast.errors import StorycastError

    data = two_character_data([{"text": "very " * 80 + "woman", "characters": ["ana"]}])
    method = make_method(models)
    with pytest.raises(StorycastError, match=r"frames\[0\]: the class word 'woman' of 'ana'"):
        method.prepare(story_of(data, models, method, steps=2), RunContext(cache_dir=tmp_path))

    data = two_character_data([{"text": "{ana} walking"}])
    data["characters"][0]["description"] = "a " + "very " * 80 + "tall woman"
    with pytest.raises(StorycastError, match="region prompt of 'ana' is too long"):
        method.prepare(story_of(data, models, method, steps=2), RunContext(cache_dir=tmp_path))


def test_authors_multi_character_prompt_for_benchmark_stories(tmp_path):
    story = load_story(write_benchmark_file(tmp_path / "story_000.json", "multi-2"))
    expected = (
        "A close-up photo of a young Middle Eastern boy and a young South Asian girl "
        "playing video games on a shared screen"
    )
    assert prompts.global_prompt(story, 0, "auto") == expected
    assert prompts.global_prompt(story, 0, "story") == story.prompt(0)
    region = prompts.region_prompt(story, story.characters[0], 2)
    assert region.startswith("A close-up photo of young Middle Eastern boy img with")


def test_whole_story_through_the_runner_and_cli(tmp_path):
    from storycast.cli.main import main

    out = tmp_path / "run"
    story = write_benchmark_file(tmp_path / "story_001.json", "single", frames=10)
    args = ["generate", str(story), "--method", "identitystory", "--preset", "tiny"]
    args += ["--out", str(out), "--steps", "2", "--set", "discovery_candidates=12", "--set", "preview_images=1"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 10
    frame = manifest["frames"][0]
    assert frame["metadata"]["denoiser_evaluations"] == 2 * 2 + 2 * 2
    character = frame["characters"][0]
    assert set(frame["extras"]) == {"stage1", f"mask_{character}"}
    assert (out / frame["extras"][f"mask_{character}"]).is_file()


def test_settings_validation():
    from storycast.errors import SettingsError

    with pytest.raises(SettingsError, match="svd_keep_ratio"):
        IdentityStorySettings.from_mapping({"svd_keep_ratio": 1.5})
    with pytest.raises(SettingsError, match="mask_provider"):
        IdentityStorySettings.from_mapping({"mask_provider": "magic"})
    with pytest.raises(ValueError, match="sweet_spot_step"):
        injection.InjectionSchedule(num_steps=4, sweet_spot_step=9, guidance_scale=7.0, max_dilation=10)


def test_generation_uses_the_authors_defaults_on_real_models(models):
    method = make_method(models)
    fake = dataclasses.replace(models, info={**models.info, "tiny": False})
    assert IdentityStoryMethod(fake, method.settings).generation_defaults() == {"steps": 50, "guidance_scale": 7.0}
    assert method.default_negative_prompt() == "noisy, blurry, soft, deformed, ugly"


def test_storyboard_run_resumes_without_rediscovery(models, tmp_path):
    story = load_story(write_benchmark_file(tmp_path / "story_002.json", "single", frames=2))
    options = RunOptions(out_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    settings = {**SMALL}
    generate_story(story, "identitystory", models, options, method_settings=settings, generation={"steps": 2})
    with count_evaluations(models.pipeline.unet) as counter:
        again = generate_story(
            story, "identitystory", models, options, method_settings=settings, generation={"steps": 2}
        )
    assert again.drawn == [] and counter.evaluations == 0


def test_controlnet_conditions_stage_one_when_the_frame_has_a_control_image(models, tmp_path):
    from PIL import Image

    control = tmp_path / "pose.png"
    pose = Image.new("RGB", (128, 128), (0, 0, 0))
    pose.paste((255, 255, 255), (30, 10, 90, 120))
    pose.save(control)
    data = two_character_data([{"text": "an empty room", "control_image": str(control)}, {"text": "an empty room"}])
    plain = make_method(models)
    story = story_of(data, models, plain, steps=2)
    without = plain.generate(story, (0,), RunContext(cache_dir=tmp_path))[0]
    controlled = make_method(models, controlnet="tiny", controlnet_scale=1.0)
    with_control = controlled.generate(story, (0, 1), RunContext(cache_dir=tmp_path))
    zero = make_method(models, controlnet="tiny", controlnet_scale=0.0).generate(
        story, (0,), RunContext(cache_dir=tmp_path)
    )[0]
    as_array = lambda image: np.asarray(image, dtype=np.int16)  # noqa: E731
    assert np.abs(as_array(with_control[0].image) - as_array(without.image)).max() > 2
    assert np.abs(as_array(zero.image) - as_array(without.image)).max() <= 1
    # A frame without a control image is drawn as without a ControlNet.
    assert (
        np.abs(as_array(with_control[1].image) - as_array(plain.generate(story, (1,), RunContext())[0].image)).max()
        <= 1
    )


def test_control_image_in_the_story_file_is_validated(write_story):
    from storycast.story.parse import validate_story_file

    data = two_character_data([{"text": "{ana} dancing", "control_image": "missing_pose.png"}])
    problems = validate_story_file(write_story(data))
    assert [p.field for p in problems] == ["frames[0].control_image"]


def test_adapter_file_in_the_official_layout_loads_into_the_pipeline(tmp_path):
    """photomaker-v1.bin written as the official file is (a torch pickle of id_encoder + lora_weights) and loaded
    from its folder behaves like the same weights given in memory: same ID embeddings, same LoRA'd UNet."""
    from PIL import Image

    from storycast.adapters.tiny import tiny_photomaker_weights
    from storycast.identity.photomaker import PhotoMakerConfig

    from_file = load_models(ModelSpec(source="tiny", device="cpu"))
    weights = tiny_photomaker_weights(from_file.pipeline.unet, seed=3)
    folder = tmp_path / "PhotoMaker"
    folder.mkdir()
    torch.save(weights, folder / "photomaker-v1.bin")

    from storycast.identity.photomaker_adapter import PhotoMakerAdapter

    adapter = PhotoMakerAdapter.load(from_file.pipeline, folder, config=PhotoMakerConfig.tiny())
    in_memory = load_models(ModelSpec(source="tiny", device="cpu"))
    reference = PhotoMakerAdapter.load(in_memory.pipeline, weights, config=PhotoMakerConfig.tiny())

    image = Image.new("RGB", (128, 128), (180, 140, 120))
    torch.testing.assert_close(adapter.embed([image]), reference.embed([image]))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1)),
        "added_cond_kwargs": {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)},
    }
    with torch.no_grad(), adapter.lora(True), reference.lora(True):
        torch.testing.assert_close(
            from_file.pipeline.unet(x, 5, **kwargs).sample, in_memory.pipeline.unet(x, 5, **kwargs).sample
        )


def test_grounded_sam_masks_through_the_method_settings(models, tmp_path):
    """mask_provider=grounded-sam with local detector and segmenter folders (tiny random models)."""
    from tests.masks.tiny_grounded_sam import save_tiny_grounded_sam

    detector, segmenter = save_tiny_grounded_sam(tmp_path)
    method = make_method(
        models,
        mask_provider="grounded-sam",
        detector=str(detector),
        segmenter=str(segmenter),
        box_threshold=0.0,
        text_threshold=0.0,
    )
    story = story_of(two_character_data([{"text": "{ana} at the window"}]), models, method, steps=2)
    method.prepare(story, RunContext(cache_dir=tmp_path))
    result = method.generate(story, (0,), RunContext(cache_dir=tmp_path))[0]
    assert result.metadata["mask_provider"] == "grounded-sam"
    assert (np.asarray(result.extras["mask_ana"]) > 0).any()
    missing = make_method(models, mask_provider="grounded-sam", detector=str(tmp_path / "nowhere"))
    from storycast.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="detector setting"):
        missing.prepare(story, RunContext(cache_dir=tmp_path))
        missing.generate(story, (0,), RunContext(cache_dir=tmp_path))


def test_attention_masks_are_found_in_non_square_frames(models, tmp_path):
    """The class words' maps are gathered at any aspect ratio (they were skipped for non-square latents, so
    every attempt failed)."""
    method = make_method(models, mask_provider="attention")
    story = story_of(two_character_data([{"text": "{ana} and {leo} on a bench"}]), models, method, steps=3, width=192)
    context = RunContext(cache_dir=tmp_path)
    method.prepare(story, context)
    result = method.generate(story, (0,), context)[0]
    assert result.image.size == (192, 128) and result.metadata["mask_attempts"] >= 1
    for cid in ("ana", "leo"):
        mask = np.asarray(result.extras[f"mask_{cid}"]) > 0
        assert mask.shape == (128, 192) and mask.any()


def test_a_fallback_from_the_authors_detector_is_said_and_recorded(models, tmp_path, caplog, monkeypatch):
    """mask_provider=auto with the detector allowed but not on this machine: the attention maps are used, a
    warning says why and how to get the authors' masks, and the frame's metadata records the fall-back."""
    import logging

    monkeypatch.setattr("storycast.masks.registry.detector_available", lambda settings: False)
    method = make_method(models, auto_detector=True)
    story = story_of(two_character_data([{"text": "{ana} at the window"}]), models, method, steps=3)
    context = RunContext(cache_dir=tmp_path)
    method.prepare(story, context)
    with caplog.at_level(logging.WARNING, logger="storycast"):
        result = method.generate(story, (0,), context)[0]
    assert result.metadata["mask_provider"] == "attention" and result.metadata["mask_fallback"] is True
    said = [r.getMessage() for r in caplog.records if "GroundingDINO + SAM" in r.getMessage()]
    assert len(said) == 1 and "storycast download grounding-dino sam" in said[0]
    explicit = make_method(models, mask_provider="attention")
    explicit.prepare(story, context)
    assert explicit.generate(story, (0,), context)[0].metadata["mask_fallback"] is False


def test_a_discovery_budget_too_small_for_the_svd_filter_is_refused_before_drawing():
    from storycast.errors import SettingsError
    from storycast.runs.plan import plan_run

    data = two_character_data([{"text": "{ana} at the window"}])
    with pytest.raises(SettingsError, match=r"discovery_candidates=4 leave 2 candidate\(s\) in SVD round 2.*Fix"):
        plan_run(parse_story(data), "identitystory", model=ModelSpec(source="tiny"), method_settings={
            "discovery_candidates": "4"}, generation={"steps": 2})  # fmt: skip

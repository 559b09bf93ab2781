"""Story-Adapter on tiny SDXL: rounds kept in the run folder and resumed round by round, (1 + rounds) x 2 x T UNet
evaluations and one CLIP encoding per frame per round, the 4N reference tokens in one softmax (diffusers' own
IP-Adapter processor against a naive reference), round 0 alone is vanilla SDXL, the pipeline left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from storycast.adapters.ip_adapter import IPAdapterSettings, attach_ip_adapter
from storycast.errors import MissingWeightsError, SettingsError
from storycast.methods.base import ProgressEvent, RunContext
from storycast.methods.story_adapter.method import StoryAdapterMethod
from storycast.methods.story_adapter.settings import (
    STYLE_WRAPPERS,
    StoryAdapterSettings,
    scale_schedule,
    styled_prompt,
    wrapper_for,
)
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.noise import count_evaluations
from tests.methods.helpers import pixels, plan_for, two_friends

GEN = {"steps": 2, "width": 64, "height": 64}
ONE_CHARACTER = {
    "title": "Mara alone",
    "characters": [{"id": "mara", "description": "a young woman with short red hair", "class_word": "woman"}],
    "frames": [{"text": "{mara} reading on a bench"}, {"text": "{mara} riding a bike"}],
}
THREE_FRAMES = two_friends(
    [
        {"text": "{mara} reading on a bench"},
        {"text": "{tom} fishing at a lake"},
        {"text": "{mara} and {tom} having tea"},
    ]
)


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def planned(data, model=None, settings=None, generation=GEN, out_dir=None):
    return plan_for("story-adapter", data, preset="tiny", model=model, settings=settings, generation=generation,
                    out_dir=out_dir)  # fmt: skip


def method_for(models, plan):
    method = StoryAdapterMethod(models, plan.settings)
    method.prepare(plan.story, RunContext())
    return method


def cli(story_file, out, *extra):
    from storycast.cli.main import main

    return main(["generate", str(story_file), "--method", "story-adapter", "--preset", "tiny", "--out", str(out),
                 "--steps", "2", "--width", "64", "--height", "64", "--no-progress", *extra])  # fmt: skip


def open_rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


# -- the pure parts ---------------------------------------------------------------------------------


def test_the_schedule_and_wrappers_are_the_authors():
    assert scale_schedule(0.3, 0.5, 10) == tuple(float(s) for s in np.linspace(0.3, 0.5, 10))
    assert scale_schedule(0.3, 0.5, 10)[0] == 0.3 and scale_schedule(0.3, 0.5, 10)[-1] == 0.5
    assert scale_schedule(0.3, 0.5, 0) == ()
    assert StoryAdapterSettings().scales == scale_schedule(0.3, 0.5, 10)
    assert styled_prompt("comic", "a cat") == (
        "best quality, high quality, comic a cat . graphic illustration, comic art, graphic novel art, vibrant, "
        "highly detailed"
    )
    assert styled_prompt("realistic", "a cat") == "best quality, high quality, a cat"
    assert styled_prompt("none", "a cat") == "a cat"
    assert set(STYLE_WRAPPERS) == {"comic", "film", "realistic", "none"}
    assert wrapper_for("auto", "", "") == "comic"  # the authors' default for a story without a style
    assert wrapper_for("auto", "A watercolor illustration of", "") == "none"  # the story's own style wins
    assert wrapper_for("film", "A watercolor illustration of", "") == "film"
    with pytest.raises(SettingsError, match="rounds must be between 0 and 100"):
        StoryAdapterSettings.from_mapping({"rounds": "-1"})


def test_defaults_follow_run_py():
    settings = StoryAdapterSettings()
    assert (settings.rounds, settings.scale_start, settings.scale_end, settings.reference_size) == (10, 0.3, 0.5, 256)
    assert settings.scheduler == "ddim" and settings.ip_adapter.file == "ip-adapter_sdxl.safetensors"
    defaults = StoryAdapterMethod.generation_defaults("sdxl")
    assert defaults == {"steps": 50, "guidance_scale": 5.0, "width": 1024, "height": 1024, "seed_policy": "same"}
    plan = planned(ONE_CHARACTER)
    assert plan.story.negative_prompt(0) == "monochrome, lowres, bad anatomy, worst quality, low quality"
    assert plan.story.frame_seed(0) == plan.story.frame_seed(1)  # one seed for every frame, as run.py
    (group,) = plan.groups
    assert group.frames == (0, 1) and dict(group.group.inputs) == {"scales": list(settings.scales)}


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [ONE_CHARACTER, THREE_FRAMES], ids=["one character", "two characters"])
def test_a_story_is_drawn_end_to_end_with_every_round_kept(tmp_path, data):
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert cli(story, out, "--set", "rounds=2") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    frames = len(data["frames"])
    for record in manifest["frames"]:
        meta = record["metadata"]
        assert meta["denoiser_evaluations"] == (1 + 2) * 2 * 2  # (1 + rounds) x 2 x T
        assert meta["clip_encodings"] == 2  # each frame of the round before encoded once per round
        assert meta["scales"] == [0.3, 0.5] and meta["rounds_reused"] == []
        assert meta["round_files"] == [f"rounds/round_{r:02d}/frame_{record['index']:03d}.png" for r in range(3)]
        final = pixels(open_rgb(out / record["file"]))
        assert np.array_equal(final, pixels(open_rgb(out / meta["round_files"][-1])))  # the last round's frame
    for number in range(3):
        round_record = json.loads((out / f"rounds/round_{number:02d}/round.json").read_text())
        assert round_record["round"] == number and round_record["frames"] == list(range(frames))
        assert round_record["scale"] == (None, 0.3, 0.5)[number]
    changed = [pixels(open_rgb(out / f"rounds/round_{r:02d}/frame_000.png")) for r in range(3)]
    assert np.abs(changed[1] - changed[0]).max() > 0 and np.abs(changed[2] - changed[1]).max() > 0
    assert manifest["method"]["settings"]["rounds"] == 2
    assert cli(story, out, "--set", "rounds=2") == 0  # a finished run: nothing to draw
    assert json.loads((out / "manifest.json").read_text())["frames"] == manifest["frames"]


class Stop(Exception):
    """Raised by the test's progress callback: the run is killed there."""


def test_a_run_stopped_after_round_1_resumes_from_round_2(sdxl, tmp_path):
    from storycast.runs.runner import RunOptions, generate_story
    from storycast.story.parse import parse_story

    story = parse_story(THREE_FRAMES)
    settings = {"rounds": "3"}

    def stop_after_round_1(event: ProgressEvent) -> None:
        if event.stage == "rounds" and event.completed == 2:  # rounds 0 and 1 written
            raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop), count_evaluations(sdxl.pipeline.unet) as first:
        generate_story(story, "story-adapter", sdxl, RunOptions(out), method_settings=settings, generation=GEN,
                       progress=stop_after_round_1)  # fmt: skip
    assert first.evaluations == 3 * 2 * (2 * 2)  # frames x rounds 0, 1 x 2T
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert not (out / "rounds/round_02").exists() and not (out / "frames").exists()
    kept = {p: p.stat().st_mtime_ns for p in (out / "rounds").rglob("*") if p.is_file()}
    assert len(kept) == 2 * (3 + 1)  # rounds 0 and 1: three frames and round.json each

    with count_evaluations(sdxl.pipeline.unet) as second:
        result = generate_story(
            story, "story-adapter", sdxl, RunOptions(out), method_settings=settings, generation=GEN
        )
    assert second.evaluations == 3 * 2 * (2 * 2)  # frames x rounds 2, 3 x 2T: rounds 0 and 1 are not redrawn
    assert result.drawn == [0, 1, 2]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    records = json.loads((out / "manifest.json").read_text())["frames"]
    assert [r["metadata"]["rounds_reused"] for r in records] == [[0, 1]] * 3
    assert [r["metadata"]["denoiser_evaluations"] for r in records] == [2 * 2 * 2] * 3

    # --overwrite draws every round again.
    with count_evaluations(sdxl.pipeline.unet) as third:
        generate_story(story, "story-adapter", sdxl, RunOptions(out, overwrite=True), method_settings=settings,
                       generation=GEN)  # fmt: skip
    assert third.evaluations == 3 * 4 * (2 * 2)  # frames x rounds 0..3 x 2T

    # The resumed frames are those of a run never stopped.
    whole = generate_story(story, "story-adapter", sdxl, RunOptions(tmp_path / "whole"), method_settings=settings,
                           generation=GEN)  # fmt: skip
    for resumed, straight in zip(result.frame_paths, whole.frame_paths, strict=True):
        assert np.array_equal(pixels(open_rgb(resumed)), pixels(open_rgb(straight)))


def test_a_round_drawn_from_other_inputs_is_redrawn(sdxl, tmp_path):
    from storycast.methods.story_adapter.rounds import RoundStore

    plan = planned(ONE_CHARACTER, model=sdxl, settings={"rounds": "1"})
    method = method_for(sdxl, plan)
    context = RunContext(run_dir=tmp_path)
    method.generate(plan.story, plan.groups[0].frames, context)
    store = RoundStore(tmp_path)
    keys = json.loads((tmp_path / "rounds/round_01/round.json").read_text())["key"]
    assert store.load(1, keys, [0, 1]) is not None and store.load(1, "other", [0, 1]) is None
    # Another scale: round 0 is read back, round 1 is drawn again.
    plan = planned(ONE_CHARACTER, model=sdxl, settings={"rounds": "1", "scale_start": "0.8"})
    with count_evaluations(sdxl.pipeline.unet) as counter:
        results = StoryAdapterMethod(sdxl, plan.settings).generate(plan.story, (0, 1), context)
    assert counter.evaluations == 2 * 2 * 2 and results[0].metadata["rounds_reused"] == [0]
    # Another prompt: every round is drawn again.
    other = {**ONE_CHARACTER, "frames": [{"text": "{mara} at the sea"}, {"text": "{mara} riding a bike"}]}
    plan = planned(other, model=sdxl, settings={"rounds": "1"})
    results = StoryAdapterMethod(sdxl, plan.settings).generate(plan.story, (0, 1), context)
    assert results[0].metadata["rounds_reused"] == []


def test_every_frame_reads_every_frame_of_the_round_before(sdxl, tmp_path):
    other = dict(THREE_FRAMES, frames=[*THREE_FRAMES["frames"][:2], {"text": "{tom} asleep in a boat"}])
    drawn = {}
    for name, data in (("story", THREE_FRAMES), ("edited", other)):
        plan = planned(data, model=sdxl, settings={"rounds": "1"})
        method_for(sdxl, plan).generate(plan.story, (0, 1, 2), RunContext(run_dir=tmp_path / name))
        drawn[name] = [pixels(open_rgb(tmp_path / name / f"rounds/round_{r:02d}/frame_000.png")) for r in (0, 1)]
    # Frame 0's own text and seed are the same: its round 0 is too, but its round 1 read frame 2 of round 0.
    assert np.array_equal(drawn["story"][0], drawn["edited"][0])
    assert np.abs(drawn["story"][1] - drawn["edited"][1]).max() > 0


def test_denoiser_evaluations_and_clip_encodings_per_frame(sdxl):
    plan = planned(THREE_FRAMES, model=sdxl, settings={"rounds": "2"}, generation={**GEN, "batch_size": 2})
    method = method_for(sdxl, plan)
    encoder = method.adapter.image_encoder
    encoded: list[int] = []

    def count_images(module, args, kwargs):
        encoded.append(len(args[0] if args else kwargs["pixel_values"]))

    hook = encoder.register_forward_pre_hook(count_images, with_kwargs=True)
    try:
        with count_evaluations(sdxl.pipeline.unet) as counter:
            results = method.generate(plan.story, (0, 1, 2), RunContext())
    finally:
        hook.remove()
    frames, rounds, steps = 3, 2, GEN["steps"]
    assert counter.evaluations == frames * (1 + rounds) * 2 * steps
    assert sum(encoded) == rounds * frames  # N per round, not the authors' N^2
    assert all(r.metadata["denoiser_evaluations"] == (1 + rounds) * 2 * steps for r in results)
    assert all(r.metadata["round_files"] == [] for r in results)  # no run folder: nothing kept


def test_batched_frames_equal_frames_drawn_one_at_a_time(sdxl):
    one = planned(THREE_FRAMES, model=sdxl, settings={"rounds": "1"})
    two = planned(THREE_FRAMES, model=sdxl, settings={"rounds": "1"}, generation={**GEN, "batch_size": 3})
    alone = method_for(sdxl, one).generate(one.story, (0, 1, 2), RunContext())
    together = method_for(sdxl, two).generate(two.story, (0, 1, 2), RunContext())
    for a, b in zip(alone, together, strict=True):
        assert np.abs(pixels(a.image) - pixels(b.image)).max() <= 1


def test_round_0_alone_is_vanilla_sdxl(sdxl):
    from storycast.methods.vanilla import VanillaMethod

    plan = planned(THREE_FRAMES, model=sdxl, settings={"rounds": "0", "scheduler": "model", "style": "none"},
                   generation={**GEN, "seed_policy": "per-frame"})  # fmt: skip
    method = StoryAdapterMethod(sdxl, plan.settings)
    with count_evaluations(sdxl.pipeline.unet) as counter:
        results = method.generate(plan.story, (0, 1, 2), RunContext())
    plain = VanillaMethod(sdxl).generate(plan.story, (0, 1, 2), RunContext())
    assert counter.evaluations == 3 * 2 * GEN["steps"]
    for ours, theirs in zip(results, plain, strict=True):
        assert ours.seed == theirs.seed
        assert np.abs(pixels(ours.image) - pixels(theirs.image)).max() <= 1


# -- Global Reference Cross-Attention: diffusers' processor against a naive reference -----------------------


def naive_grca(attn, hidden, text, tokens, to_k_ip, to_v_ip, scale, *, one_softmax=True):
    """out = to_out(Attn(q, K_text, V_text) + scale x Attn(q, K_ip, V_ip)), written out with explicit softmaxes;
    ``tokens`` (B, N, 4, C). ``one_softmax=False`` is the alternative the test must tell apart: each reference
    attended on its own and the N results averaged."""
    heads = attn.heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def attend(q, k, v):
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return weights @ v

    q = split(attn.to_q(hidden))
    out = attend(q, split(attn.to_k(text)), split(attn.to_v(text)))
    batch, references = tokens.shape[:2]
    if one_softmax:
        flat = tokens.reshape(batch, -1, tokens.shape[-1])  # the 4N tokens, one sequence
        out = out + scale * attend(q, split(to_k_ip(flat)), split(to_v_ip(flat)))
    else:
        parts = [attend(q, split(to_k_ip(tokens[:, n])), split(to_v_ip(tokens[:, n]))) for n in range(references)]
        out = out + scale * torch.stack(parts).mean(dim=0)
    out = out.transpose(1, 2).reshape(batch, hidden.shape[1], -1)
    return attn.to_out[1](attn.to_out[0](out))


def test_the_4n_reference_tokens_are_attended_in_one_softmax(sdxl):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    adapter = attach_ip_adapter(sdxl, IPAdapterSettings())
    unet = sdxl.pipeline.unet
    generator = torch.Generator().manual_seed(0)
    references, batch = 3, 2
    embeds = torch.randn(batch, references, adapter.embedding_dim, generator=generator)
    with adapter.enabled(0.4):
        # The UNet's projection: each reference to 4 tokens, the references kept apart as (B, N, 4, C).
        (tokens,) = unet.encoder_hid_proj([embeds])
        layer = adapter.projection.image_projection_layers[0]
        per_image = layer(embeds.reshape(batch * references, -1)).reshape(batch, references, 4, -1)
        torch.testing.assert_close(tokens, per_image)
        name = next(key for key in adapter.processors if key.startswith("up_blocks"))
        processor = unet.attn_processors[name]
        assert isinstance(processor, IPAdapterAttnProcessor2_0) and processor.scale == [0.4]
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = torch.randn(batch, 16, attn.to_q.in_features, generator=generator)
        text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
        with torch.no_grad():
            ours = attn(hidden, encoder_hidden_states=(text, [tokens]))
            to_k_ip, to_v_ip = processor.to_k_ip[0], processor.to_v_ip[0]
            reference = naive_grca(attn, hidden, text, tokens, to_k_ip, to_v_ip, 0.4)
            averaged = naive_grca(attn, hidden, text, tokens, to_k_ip, to_v_ip, 0.4, one_softmax=False)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    assert (ours - averaged).abs().max() > 1e-3  # the test tells one softmax from per-reference attention


# -- the adapter on the loaded models ---------------------------------------------------------------------


def unet_output(models):
    unet = models.pipeline.unet
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    added = {
        "text_embeds": torch.randn(1, 32, generator=generator),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    with torch.no_grad():
        return unet(x, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample


def test_attaching_enabling_and_detaching_leave_the_pipeline_as_it_was():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    models = load_models(ModelSpec(source="tiny", device="cpu"))
    pipe, unet = models.pipeline, models.pipeline.unet
    processors = dict(unet.attn_processors)
    configs = (pipe.config.image_encoder, pipe.config.feature_extractor)
    before = unet_output(models)

    def as_loaded():
        assert all(unet.attn_processors[key] is processor for key, processor in processors.items())
        assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
        assert pipe.image_encoder is None and pipe.feature_extractor is None
        assert (pipe.config.image_encoder, pipe.config.feature_extractor) == configs
        assert torch.equal(unet_output(models), before)

    adapter = attach_ip_adapter(models, IPAdapterSettings())
    as_loaded()  # loaded, and the pipeline put back at once
    assert attach_ip_adapter(models, IPAdapterSettings()) is adapter  # once per loaded models
    cross = {key for key in processors if key.endswith("attn2.processor")}
    assert set(adapter.processors) == cross
    with adapter.enabled(0.3):
        assert all(isinstance(unet.attn_processors[key], IPAdapterAttnProcessor2_0) for key in cross)
        assert all(unet.attn_processors[key] is processors[key] for key in set(processors) - cross)
        assert unet.config.encoder_hid_dim_type == "ip_image_proj"
    as_loaded()
    adapter.detach()
    assert not models.attachments
    as_loaded()


def test_real_loading_reads_a_local_file_and_encoder_folder(sdxl, tmp_path):
    """The path real weights take (a safetensors file with image_proj./ip_adapter. keys, an image_encoder folder
    beside it), with the tiny architecture written in the official layout."""
    from safetensors.torch import save_file

    from storycast.adapters.tiny import tiny_ip_adapter_weights
    from storycast.identity.image_encoder import tiny_image_encoder

    encoder = tiny_image_encoder(0)
    weights = tiny_ip_adapter_weights(sdxl.pipeline.unet, encoder.config.projection_dim, seed=0)
    folder = tmp_path / "IP-Adapter" / "sdxl_models"
    folder.mkdir(parents=True)
    save_file({f"{part}.{k}": v for part in weights for k, v in weights[part].items()},
              folder / "ip-adapter_sdxl.safetensors")  # fmt: skip
    encoder.save_pretrained(folder / "image_encoder")
    random = attach_ip_adapter(sdxl, IPAdapterSettings())  # the tiny preset's own: the same random weights
    for source in (str(tmp_path / "IP-Adapter"), str(folder / "ip-adapter_sdxl.safetensors")):
        settings = IPAdapterSettings(source=source)
        assert settings.encoder_source() == str(folder / "image_encoder")
        loaded = attach_ip_adapter(sdxl, settings)
        assert loaded.source.endswith("ip-adapter_sdxl.safetensors")
        for key, processor in loaded.processors.items():
            assert torch.equal(processor.to_k_ip[0].weight, random.processors[key].to_k_ip[0].weight)
        proj, tiny = loaded.projection.image_projection_layers[0], random.projection.image_projection_layers[0]
        assert torch.equal(proj.image_embeds.weight, tiny.image_embeds.weight)
        assert torch.equal(proj.norm.weight, tiny.norm.weight)


def test_random_weights_have_the_layout_of_the_real_sdxl_file():
    """For full-size SDXL (built without memory), the random IP-Adapter has ip-adapter_sdxl.bin's keys and shapes:
    70 cross-attention layers with ids 1, 3, ... 139, and a 1280 -> 4 x 2048 projection."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from storycast.adapters.tiny import tiny_ip_adapter_weights
    from storycast.models.random_full import SDXL_UNET

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
    weights = tiny_ip_adapter_weights(unet, 1280)
    assert set(weights["ip_adapter"]) == {f"{i}.to_{kv}_ip.weight" for i in range(1, 140, 2) for kv in "kv"}
    assert weights["ip_adapter"]["1.to_k_ip.weight"].shape == (640, 2048)  # down_blocks.1, the first with attention
    assert weights["ip_adapter"]["139.to_v_ip.weight"].shape == (1280, 2048)  # the mid block's, last in order
    shapes = {k: tuple(v.shape) for k, v in weights["image_proj"].items()}
    assert shapes == {"proj.weight": (8192, 1280), "proj.bias": (8192,), "norm.weight": (2048,), "norm.bias": (2048,)}


def test_missing_adapter_weights_are_an_error_before_drawing(tmp_path, capsys):
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(ONE_CHARACTER))
    out = tmp_path / "run"
    assert cli(story, out, "--set", f"ip_adapter={tmp_path / 'nowhere' / 'ip-adapter_sdxl.safetensors'}") == 2
    assert "IP-Adapter weights" in capsys.readouterr().err and not out.exists()
    with pytest.raises(MissingWeightsError, match=r"holds no sdxl_models/ip-adapter_sdxl.safetensors"):
        planned(ONE_CHARACTER, settings={"ip_adapter": str(tmp_path)})
    with pytest.raises(MissingWeightsError, match=r"image encoder folder .* does not exist"):
        planned(ONE_CHARACTER, settings={"image_encoder": str(tmp_path / "no-encoder")})
    planned(ONE_CHARACTER, settings={"ip_adapter": str(tmp_path), "rounds": "0"})  # round 0 needs no adapter
    with pytest.raises(SettingsError, match="runs on sdxl"):
        plan_for("story-adapter", ONE_CHARACTER, preset="tiny-sd15", generation=GEN)


def test_a_guidance_embedded_lcm_unet_is_evaluated_once_per_step(tmp_path):
    """run_fast.py's variant: an LCM-distilled UNet (``time_cond_proj_dim``) with LCMScheduler takes its guidance
    as an embedding, so each step is one evaluation, as in the SDXL pipeline (built here from the tiny UNet's
    config: the real latent-consistency/lcm-sdxl cannot be downloaded in tests)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors.torch import save_file

    from storycast.adapters.tiny import tiny_ip_adapter_weights
    from storycast.identity.image_encoder import tiny_image_encoder
    from storycast.models.loading import models_from_pipeline
    from storycast.models.tiny import tiny_sdxl_components
    from storycast.utils.torch_utils import seeded as _seeded

    components = tiny_sdxl_components(0)
    with _seeded(0):
        config = {k: v for k, v in components["unet"].config.items() if not k.startswith("_")}
        components["unet"] = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 8}).eval()
    models = models_from_pipeline(StableDiffusionXLPipeline(**components), source="tiny-lcm")
    encoder = tiny_image_encoder(0)
    weights = tiny_ip_adapter_weights(models.pipeline.unet, encoder.config.projection_dim)
    save_file({f"{part}.{k}": v for part in weights for k, v in weights[part].items()}, tmp_path / "ip.safetensors")
    encoder.save_pretrained(tmp_path / "image_encoder")
    settings = {"rounds": "1", "scheduler": "lcm", "ip_adapter": str(tmp_path / "ip.safetensors")}
    images = []
    for guidance in (8.0, 3.0):
        plan = planned(ONE_CHARACTER, model=models, settings=settings, generation={**GEN, "guidance_scale": guidance})
        method = method_for(models, plan)
        with count_evaluations(models.pipeline.unet) as counter:
            results = method.generate(plan.story, (0, 1), RunContext())
        assert counter.evaluations == 2 * (1 + 1) * GEN["steps"]  # frames x (1 + rounds) x T: no uncond pass
        images.append(pixels(results[0].image))
    assert np.abs(images[0] - images[1]).max() > 0  # the guidance reaches the UNet through its embedding

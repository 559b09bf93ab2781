"""The PhotoMaker baseline with v2 weights on tiny SDXL: identities from photos and their ArcFace embeddings (the
tiny ONNX face pack), one copy of the class token per ID token, 2T UNet evaluations per frame; characters without
photos, photos without faces and v2 weights where a method reads v1 are refused before anything is drawn."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from storycast.adapters.photomaker import PhotoMakerSettings, attach_photomaker
from storycast.adapters.tiny import tiny_photomaker_v2_weights
from storycast.errors import ModelLoadError, SettingsError, StoryError
from storycast.identity.photomaker_adapter import PhotoMakerAdapter
from storycast.identity.photomaker_v2 import PhotoMakerV2Config
from storycast.methods.base import RunContext
from storycast.methods.photomaker.method import PhotoMakerMethod
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.families import prompt_encoder
from tests.methods.helpers import face_photo as photo
from tests.methods.helpers import plan_for, two_friends

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny face pack

from storycast.vision.tiny_faces import write_tiny_face_pack

STEPS = 4
GEN = {"steps": STEPS, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_tiny_face_pack(tmp_path_factory.mktemp("buffalo_l"))


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def v2_settings(faces, **extra):
    return {"photomaker_file": "photomaker-v2.bin", "face_models": str(faces), **extra}


def cli(tmp_path, data, settings):
    from storycast.cli.main import main

    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    sets = [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]
    args = ["generate", str(story), "--method", "photomaker", "--preset", "tiny", "--out", str(out), "--steps",
            str(STEPS), "--cache-dir", str(tmp_path / "cache"), *sets]  # fmt: skip
    return main(args), out


def test_v2_draws_a_one_character_story_from_a_photo_end_to_end(tmp_path, faces):
    data = two_friends([{"text": "{mara} reading on a bench"}, {"text": "an empty street at night"}])
    data["characters"] = data["characters"][:1]
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png", 1)]
    code, out = cli(tmp_path, data, v2_settings(faces))
    assert code == 0
    records = json.loads((out / "manifest.json").read_text())["frames"]
    assert [r["metadata"]["photomaker_version"] for r in records] == ["v2", "v2"]
    assert records[0]["metadata"]["identities"] == {"mara": "photos (1)"}
    assert records[1]["metadata"]["identities"] == {}
    for record in records:
        assert record["metadata"]["denoiser_evaluations"] == 2 * STEPS  # one guided pass per step: 2T
        assert (out / record["file"]).is_file()


def _prepared(sdxl, tmp_path, faces, data):
    plan = plan_for("photomaker", data, preset="tiny", model=sdxl, settings=v2_settings(faces), generation=GEN)
    method = PhotoMakerMethod(sdxl, plan.settings)
    method.prepare(plan.story, RunContext(cache_dir=tmp_path))
    return method, plan.story


def test_each_id_token_is_fused_into_its_own_copy_of_the_class_token(sdxl, tmp_path, faces):
    data = two_friends([{"text": "{mara} reading on a bench"}])
    data["characters"][0]["references"] = [photo(tmp_path / "a.png", 1), photo(tmp_path / "b.png", 2)]
    method, story = _prepared(sdxl, tmp_path, faces, data)
    adapter = method.adapter
    assert adapter.version == "v2"
    identity = method._identities["mara"]
    assert identity.shape == (4, 64)  # 2 photos x 2 tokens, photo by photo
    assert not torch.allclose(identity[:2], identity[2:])

    prompt = story.prompt(0)
    triggered = {"mara": prompt.replace("woman", "woman img", 1)}
    position = adapter.class_token_position(triggered["mara"])
    plain = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([prompt], [""], width=64, height=64)
    merged = adapter.fuse_identity_tokens(plain, prompt, triggered, method._identities)
    text, pooled, spans = adapter._encode_expanded(prompt, [position], [4])
    assert spans == [[position, position + 1, position + 2, position + 3]]
    changed = (merged.cond.embeds - text).abs().amax(dim=-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == spans[0]
    with torch.no_grad():
        for k, at in enumerate(spans[0]):
            torch.testing.assert_close(
                merged.cond.embeds[0, at], adapter.encoder.fuse_module(text[0, at], identity[k])
            )
    # CLIP's text encoders are causal: before the class token, the expanded prompt reads as the plain one.
    torch.testing.assert_close(text[0, :position], plain.cond.embeds[0, :position])
    assert torch.equal(merged.uncond.embeds, plain.uncond.embeds)
    torch.testing.assert_close(merged.cond.pooled, pooled)  # after the merge step: the expanded prompt's pooled
    assert not torch.allclose(merged.cond.pooled, plain.cond.pooled)


def test_the_expanded_encoding_without_copies_is_the_pipelines_own(sdxl, tmp_path, faces):
    """Equivalence: ids encoded by the adapter (as v2 needs) equal diffusers' encode_prompt of the same prompt."""
    adapter = attach_photomaker(sdxl, PhotoMakerSettings(file="photomaker-v2.bin"), versions=("v2",))
    prompt = "A watercolor illustration of a young woman with short red hair reading on a bench"
    plain = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([prompt], [""], width=64, height=64)
    embeds, pooled, spans = adapter._encode_expanded(prompt, [7], [1])
    assert spans == [[7]]
    torch.testing.assert_close(embeds, plain.cond.embeds)
    torch.testing.assert_close(pooled, plain.cond.pooled)


def test_two_characters_in_a_frame_get_their_own_copies(sdxl, tmp_path, faces):
    data = two_friends([{"text": "{mara} and {tom} having tea"}])
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png", 1)]
    data["characters"][1]["references"] = [photo(tmp_path / "tom1.png", 2), photo(tmp_path / "tom2.png", 3)]
    method, story = _prepared(sdxl, tmp_path, faces, data)
    from storycast.identity.photomaker_prompt import triggered_prompts

    triggered = triggered_prompts(story, 0, method._identities)
    plain = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([story.prompt(0)], [""], width=64, height=64)
    merged = method.adapter.fuse_identity_tokens(plain, story.prompt(0), triggered, method._identities)
    positions = [method.adapter.class_token_position(triggered[c]) for c in ("mara", "tom")]
    text, _, spans = method.adapter._encode_expanded(story.prompt(0), positions, [2, 4])
    assert [len(span) for span in spans] == [2, 4] and spans[1][0] == positions[1] + 1  # after mara's extra copy
    changed = ((merged.cond.embeds - text).abs().amax(dim=-1)[0] > 0).nonzero().flatten().tolist()
    assert changed == spans[0] + spans[1]
    result = method.generate(story, (0,), RunContext())[0]
    assert result.metadata["identities"] == {"mara": "photos (1)", "tom": "photos (2)"}
    assert result.metadata["denoiser_evaluations"] == 2 * STEPS


def test_a_character_without_photos_is_refused_before_drawing(tmp_path, faces, capsys):
    data = two_friends()
    data["characters"][0]["references"] = [photo(tmp_path / "mara.png", 1)]
    code, out = cli(tmp_path, data, v2_settings(faces))
    assert code == 2
    message = capsys.readouterr().err
    assert "characters[1].references: PhotoMaker v2 needs reference photos" in message
    assert "but 'tom' has none" in message and "--set photomaker_file=photomaker-v1.bin" in message
    assert not (out / "frames").exists()
    with pytest.raises(SettingsError, match="identity=discovered gives PhotoMaker v1 ID embeddings"):
        plan_for("photomaker", data, preset="tiny", settings=v2_settings(faces, identity="discovered"), generation=GEN)


def test_a_library_identity_is_refused_under_v2_before_drawing(tmp_path, faces, capsys):
    data = two_friends()
    for number, character in enumerate(data["characters"]):
        character["references"] = [photo(tmp_path / f"{number}.png", number + 1)]
    data["characters"][0]["identity"] = "abc123"
    code, out = cli(tmp_path, data, v2_settings(faces))
    assert (
        code == 2 and "characters[0].identity: 'mara' names the library identity 'abc123'" in capsys.readouterr().err
    )
    assert not (out / "frames").exists()


def test_a_photo_without_a_face_is_refused_before_drawing(tmp_path, faces, capsys):
    data = two_friends([{"text": "{mara} reading on a bench"}])
    data["characters"] = data["characters"][:1]
    blank = tmp_path / "blank.png"
    Image.new("RGB", (640, 640), (60, 60, 60)).save(blank)
    data["characters"][0]["references"] = [str(blank)]
    code, out = cli(tmp_path, data, v2_settings(faces))
    assert code == 2
    assert f"no face was found in 1 reference photo(s) of 'mara': {blank}" in capsys.readouterr().err
    assert not (out / "frames").exists()


def test_v2_weights_under_another_name_are_detected_when_loaded_and_checked_before_drawing(tmp_path):
    """The name decides nothing: a v2 file called pm.bin is read as v2, and a character without photos is refused
    once the weights are loaded, before any frame is drawn."""
    models = load_models(ModelSpec(source="tiny", device="cpu"))
    path = tmp_path / "pm.bin"
    torch.save(tiny_photomaker_v2_weights(models.pipeline.unet, seed=2), path)
    adapter = PhotoMakerAdapter.load(models.pipeline, path, config=PhotoMakerV2Config.tiny())
    models.attachments[("photomaker", f"{path}:photomaker-v1.bin")] = adapter  # as attach_photomaker shares it
    data = two_friends([{"text": "{tom} fishing at a lake"}])
    plan = plan_for(
        "photomaker", data, preset="tiny", model=models, settings={"photomaker": str(path)}, generation=GEN
    )
    method = PhotoMakerMethod(models, plan.settings)
    with pytest.raises(StoryError, match=r"characters\[1\]\.references: PhotoMaker v2 needs reference photos"):
        method.prepare(plan.story, RunContext(cache_dir=tmp_path))


def test_a_v2_file_in_the_official_layout_loads_into_the_pipeline(tmp_path):
    """photomaker-v2.bin written as the official file is, loaded from its folder, behaves like the same weights
    given in memory: version v2, the same ID tokens, the same LoRA'd UNet."""
    from_file = load_models(ModelSpec(source="tiny", device="cpu"))
    weights = tiny_photomaker_v2_weights(from_file.pipeline.unet, seed=3)
    assert any(key.startswith("qformer_perceiver.") for key in weights["id_encoder"])
    folder = tmp_path / "PhotoMaker-V2"
    folder.mkdir()
    torch.save(weights, folder / "photomaker-v2.bin")
    config = PhotoMakerV2Config.tiny()
    adapter = PhotoMakerAdapter.load(from_file.pipeline, folder, weight_name="photomaker-v2.bin", config=config)
    in_memory = load_models(ModelSpec(source="tiny", device="cpu"))
    reference = PhotoMakerAdapter.load(in_memory.pipeline, weights, config=config)
    assert adapter.version == reference.version == "v2"

    image = Image.new("RGB", (128, 128), (180, 140, 120))
    arcface = torch.randn(1, 512, generator=torch.Generator().manual_seed(4)) * 20
    torch.testing.assert_close(adapter.id_tokens([image], arcface), reference.id_tokens([image], arcface))
    with pytest.raises(Exception, match="these PhotoMaker weights are v2"):
        adapter.embed([image])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1)),
        "added_cond_kwargs": {"text_embeds": torch.zeros(2, 32), "time_ids": torch.zeros(2, 6)},
    }
    with torch.no_grad(), adapter.lora(True), reference.lora(True):
        torch.testing.assert_close(
            from_file.pipeline.unet(x, 5, **kwargs).sample, in_memory.pipeline.unet(x, 5, **kwargs).sample
        )


def test_methods_that_read_v1_refuse_v2_weights_and_official_names_are_not_mixed():
    models = load_models(ModelSpec(source="tiny", device="cpu"))
    with pytest.raises(ModelLoadError, match="are PhotoMaker v2, and this method reads PhotoMaker v1 only"):
        attach_photomaker(models, PhotoMakerSettings(file="photomaker-v2.bin"))  # identitystory, storydiffusion
    with pytest.raises(SettingsError, match=r"photomaker=TencentARC/PhotoMaker holds photomaker-v1\.bin"):
        PhotoMakerSettings(source="TencentARC/PhotoMaker", file="photomaker-v2.bin")
    with pytest.raises(SettingsError, match="--set photomaker=TencentARC/PhotoMaker \\(or auto\\)"):
        PhotoMakerSettings(source="TencentARC/PhotoMaker-V2", file="photomaker-v1.bin")
    v2 = PhotoMakerSettings(source="TencentARC/PhotoMaker-V2", file="photomaker-v2.bin")
    assert (v2.expected_version(), PhotoMakerSettings(file="photomaker-v2.bin").location()) == (
        "v2",
        "TencentARC/PhotoMaker-V2",
    )
    assert (
        PhotoMakerSettings().location() == "TencentARC/PhotoMaker" and PhotoMakerSettings().expected_version() == "v1"
    )
    assert PhotoMakerSettings(source="/models/photomaker-v2.bin").expected_version() == "v2"

"""``--method pulid`` on tiny FLUX: end to end through the CLI from reference photos (the tiny antelopev2 pack);
id_weight 0 is vanilla FLUX pixel for pixel, an identity changes exactly the frames that name a character, PuLID's
true CFG is FluxPipeline's where the ID is off; what it cannot draw is refused before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from storycast.errors import MissingWeightsError, SettingsError, StoryError
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.runs.draw import draw
from storycast.runs.plan import plan_run
from storycast.story.parse import parse_story
from tests.methods.helpers import face_photo, pixels, two_friends

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny face pack

from storycast.vision.tiny_faces import write_tiny_face_pack

STEPS = 3
GEN = {"steps": STEPS, "width": 64, "height": 64, "guidance_scale": 4.0}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_tiny_face_pack(tmp_path_factory.mktemp("antelopev2"), pack="antelopev2")


@pytest.fixture(scope="module")
def flux():
    return load_models(ModelSpec(source="tiny-flux", device="cpu"))


@pytest.fixture(scope="module")
def story_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    data = two_friends()
    data["characters"][0]["references"] = [face_photo(folder / "mara.png", 1)]
    data["characters"][1]["references"] = [face_photo(folder / "tom1.png", 2), face_photo(folder / "tom2.png", 3)]
    return data


def test_a_story_with_reference_photos_is_drawn_end_to_end_from_the_cli(tmp_path, faces, story_data):
    from storycast.cli.main import main

    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(story_data))
    out = tmp_path / "run"
    args = ["generate", str(story), "--method", "pulid", "--preset", "tiny-flux", "--out", str(out), "--steps",
            str(STEPS), "--width", "64", "--height", "64", "--set", f"face_models={faces}"]  # fmt: skip
    assert main(args) == 0
    records = json.loads((out / "manifest.json").read_text())["frames"]
    identities = [r["metadata"]["identity"] for r in records]
    assert identities == [
        {"mara": "photos (1)"}, {"tom": "photos (2)"}, {"mara": "photos (1)"}, {}, {"mara": "photos (1)"}
    ]  # fmt: skip
    assert all(r["metadata"]["denoiser_evaluations"] == STEPS for r in records)
    assert all((out / r["file"]).is_file() for r in records)


def _draw(flux, data, method, tmp_path, settings=None, generation=GEN):
    result = draw(parse_story(data), method, flux, method_settings=settings, generation=generation, cache_dir=tmp_path)
    return [pixels(frame.image) for frame in result.frames], result


def test_weight_zero_is_vanilla_and_an_identity_changes_exactly_the_frames_naming_a_character(
    flux, faces, story_data, tmp_path
):
    vanilla, _ = _draw(flux, story_data, "vanilla", tmp_path)
    off, _ = _draw(flux, story_data, "pulid", tmp_path, {"face_models": str(faces), "id_weight": 0})
    assert all(np.array_equal(a, b) for a, b in zip(off, vanilla, strict=True))
    on, _ = _draw(flux, story_data, "pulid", tmp_path, {"face_models": str(faces)})
    changed = [not np.array_equal(a, b) for a, b in zip(on, vanilla, strict=True)]
    assert changed == [True, True, True, False, True]
    late, _ = _draw(flux, story_data, "pulid", tmp_path, {"face_models": str(faces), "start_step": STEPS})
    assert all(np.array_equal(a, b) for a, b in zip(late, vanilla, strict=True))  # never reaches its start step


def test_true_cfg_is_flux_pipelines_true_cfg_where_the_id_is_off_and_costs_a_second_row(
    flux, faces, story_data, tmp_path
):
    negative = "blurry"
    data = {**story_data, "settings": {"negative_prompt": negative}}
    settings = {"face_models": str(faces), "true_cfg": 2.5, "start_cfg_step": 0, "id_weight": 0}
    ours, result = _draw(flux, data, "pulid", tmp_path, settings)
    theirs, _ = _draw(flux, data, "vanilla", tmp_path, generation={**GEN, "true_cfg_scale": 2.5})
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert all(f.metadata["negative_prompt"] == negative for f in result.frames)
    _, late = _draw(flux, data, "pulid", tmp_path, {**settings, "start_cfg_step": 1, "id_weight": 1})
    assert [f.metadata["denoiser_evaluations"] for f in late.frames] == [1 + 2 * (STEPS - 1)] * 5


def test_several_photos_give_the_mean_of_their_id_tokens_and_negative_tokens_are_the_encoders_of_zeros(
    flux, faces, story_data
):
    from PIL import Image

    from storycast.adapters.pulid_flux import PuLIDFluxSettings, attach_pulid_flux
    from storycast.identity.pulid_faces import PuLIDFaces

    reader = PuLIDFaces.from_folder(faces)
    read = [reader.read(Image.open(p), p) for p in story_data["characters"][1]["references"]]
    assert read[0].arcface.shape == (512,) and read[0].face.shape == (3, 512, 512)
    assert torch.equal(read[0].face[0], read[0].face[1])  # grey
    adapter = attach_pulid_flux(flux, PuLIDFluxSettings())
    both, negative = adapter.id_tokens(read)
    one, negative_one = adapter.id_tokens(read[:1])
    two, _ = adapter.id_tokens(read[1:])
    torch.testing.assert_close(both, (one + two) / 2)
    torch.testing.assert_close(negative, negative_one)
    assert both.shape == (adapter.pulid.config.num_queries, adapter.pulid.config.output_dim)


def test_what_pulid_cannot_draw_is_refused_before_any_model_loads(monkeypatch, tmp_path, faces, story_data):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for input that planning refuses")

    monkeypatch.setattr("storycast.models.loading.load_models", no_loading)

    def plan(data, preset="tiny-flux", settings=None, generation=None):
        settings = {"face_models": str(faces), **(settings or {})}
        return plan_run(parse_story(data), "pulid", model=ModelSpec(source=preset), method_settings=settings,
                        generation=generation)  # fmt: skip

    with pytest.raises(SettingsError, match="runs on flux models, but the model is sdxl"):
        plan(story_data, preset="tiny")
    with pytest.raises(StoryError, match=r"characters\[0\]\.references.*identity=photos .*'mara' has none"):
        plan(two_friends(), settings={"identity": "photos"})
    with pytest.raises(SettingsError, match="freeu: discovery's FreeU"):
        plan(two_friends(), settings={"freeu": "true"})
    with pytest.raises(SettingsError, match=r"leave 2 candidate\(s\) in SVD round 2"):
        plan(two_friends(), settings={"discovery_candidates": 4, "svd_rank": 2})
    plan(two_friends())  # identity=auto: characters without photos are discovered
    plan(two_friends(), settings={"face_models": None})  # the tiny stand-ins are written when the models are known
    with pytest.raises(SettingsError, match=r"Fix: --set true_cfg=3\.0"):
        plan({**story_data, "settings": {"negative_prompt": "x"}}, generation={"true_cfg_scale": 3.0})
    with pytest.raises(MissingWeightsError, match="face_models"):
        plan(story_data, settings={"face_models": str(tmp_path / "nowhere")})
    with pytest.raises(SettingsError, match="id_weight must be at least 0"):
        plan(story_data, settings={"id_weight": -1})


def test_with_facexlibs_parser_the_background_classes_of_the_aligned_face_go_white(faces, story_data, tmp_path):
    from PIL import Image

    from storycast.identity.pulid_faces import PuLIDFaces, aligned_face, resize_long_side
    from storycast.vision.face_parsing import PULID_BACKGROUND, BiSeNet

    torch.manual_seed(0)
    torch.save(BiSeNet().state_dict(), tmp_path / "parsing_bisenet.pth")
    plain = PuLIDFaces.from_folder(faces)
    parsed = PuLIDFaces.from_folder(faces, parsing=tmp_path)
    path = story_data["characters"][0]["references"][0]
    grey, whitened = plain.read(Image.open(path), path), parsed.read(Image.open(path), path)
    aligned = grey.face[None]  # grey's channels are equal, so the parser's labels of it equal those of the colour
    rgb = resize_long_side(Image.open(path).convert("RGB"))
    labels = parsed.parser.labels(aligned_face(rgb, plain.detector.detect(rgb)[0]))
    background = torch.isin(labels[0], torch.tensor(PULID_BACKGROUND))
    assert background.any() and (~background).any()
    assert torch.all(whitened.face[:, background] == 1.0)
    assert torch.equal(whitened.face[:, ~background], aligned[0][:, ~background])
    assert torch.equal(whitened.arcface, grey.arcface)

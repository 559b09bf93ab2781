"""``--method pulid`` for characters without reference photos (``identity`` auto / discovered, our extension), on
tiny FLUX with random PuLID weights and the tiny face pack: identities discovered in PuLID's ID-token space through
the identity library and shared with ``identitystory`` on FLUX both ways, photos and discovery chosen per character
as ``identity`` says and recorded in each frame's manifest, and ``storycast benchmark`` on a ConsiStory-Human suite
end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from storycast.identity.library import IdentityLibrary
from storycast.methods.base import RunContext
from storycast.methods.registry import get_method
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from storycast.pipelines.noise import count_evaluations
from storycast.runs.draw import draw
from storycast.runs.plan import resolve_generation
from storycast.story.parse import parse_story
from tests.methods.helpers import face_photo, pixels, tiny_flux_benchmark, two_friends

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it to write the tiny face pack

SMALL = {"discovery_candidates": 12, "svd_rank": 2, "preview_images": 1}
STEPS = 2
# The same generation for both methods: on FLUX discovery draws with the generation's steps and guidance, which are
# part of an identity's key (PuLID's own default guidance, 4, is not identitystory's 3.5 on FLUX.1-dev).
GEN = {"steps": STEPS, "width": 64, "height": 64, "guidance_scale": 3.5}
CANDIDATES = 12 + 1  # one loop of 12 candidates, one preview


@pytest.fixture(scope="module")
def models():
    return load_models(ModelSpec(source="tiny-flux", device="cpu"))


def prepared(name, models, cache):
    """``name`` (pulid or identitystory) prepared for a one-frame story of mara: its method, the denoiser
    evaluations it spent."""
    method_class = get_method(name)
    extra = {"mask_provider": "attention"} if name == "identitystory" else {}
    method = method_class(models, method_class.settings_class.from_mapping({**SMALL, **extra}))
    story = parse_story(two_friends([{"text": "{mara} reading"}]))
    story = dataclasses.replace(story, settings=resolve_generation(story, models, method_class, GEN))
    with count_evaluations(models.backbone.denoiser) as counter:
        method.prepare(story, RunContext(cache_dir=cache))
    return method, counter.evaluations


def tokens_of(method, character):
    """The character's ID tokens as the library keeps them (flattened, on the CPU)."""
    if isinstance(method._identities[character], tuple):  # pulid: (ID tokens, negative ID tokens)
        return method._identities[character][0].reshape(-1).cpu()
    return method._identities[character].embedding


@pytest.mark.parametrize("first, second", [("identitystory", "pulid"), ("pulid", "identitystory")])
def test_an_identity_discovered_by_either_method_is_reused_by_the_other(models, tmp_path, first, second):
    finder, spent = prepared(first, models, tmp_path)
    assert spent == CANDIDATES * STEPS
    library = IdentityLibrary(tmp_path / "identities")
    (key,) = library.keys()
    record = library.get(key)
    assert record.info["generator"] == "flux+pulid-flux" and record.info["source"] == "discovered"
    reader, again = prepared(second, models, tmp_path)
    assert again == 0  # no candidate drawn the second time
    assert library.keys() == [key]
    for method in (finder, reader):
        torch.testing.assert_close(tokens_of(method, "mara"), record.embedding, rtol=0, atol=0)
    pulid = finder if first == "pulid" else reader
    assert pulid._sources["mara"] == f"discovered ({key})"
    # The negative ID tokens of true CFG: IDFormer's of zeros, whatever the identity.
    torch.testing.assert_close(pulid._identities["mara"][1], pulid.pulid.uncond_tokens().to(models.device))


def test_identity_says_photos_or_discovery_per_character_and_each_frame_records_which(models, tmp_path):
    data = two_friends([{"text": "{mara} reading"}, {"text": "{tom} fishing"}, {"text": "a quiet street"}])
    data["characters"][0]["references"] = [face_photo(tmp_path / "mara.png", 1)]

    def run(method, settings=None):
        result = draw(parse_story(data), method, models, method_settings=settings, generation=GEN, cache_dir=tmp_path)
        return [pixels(f.image) for f in result.frames], [f.metadata.get("identity") for f in result.frames]

    vanilla, _ = run("vanilla")
    auto, auto_sources = run("pulid", SMALL)
    (tom_key,) = IdentityLibrary(tmp_path / "identities").keys()
    assert auto_sources == [{"mara": "photos (1)"}, {"tom": f"discovered ({tom_key})"}, {}]
    changed = [not np.array_equal(a, b) for a, b in zip(auto, vanilla, strict=True)]
    assert changed == [True, True, False]  # the discovered identity acts; a frame naming nobody is plain FLUX
    discovered, sources = run("pulid", {**SMALL, "identity": "discovered"})
    keys = IdentityLibrary(tmp_path / "identities").keys()
    (mara_key,) = set(keys) - {tom_key}
    assert sources == [{"mara": f"discovered ({mara_key})"}, {"tom": f"discovered ({tom_key})"}, {}]
    assert not np.array_equal(discovered[0], auto[0]) and np.array_equal(discovered[1], auto[1])
    # A library key the story names wins, even with identity=photos (nothing to discover, no photo needed).
    data["characters"][1]["identity"] = tom_key
    named, sources = run("pulid", {**SMALL, "identity": "photos"})
    assert sources == [{"mara": "photos (1)"}, {"tom": f"library ({tom_key})"}, {}]
    assert all(np.array_equal(a, b) for a, b in zip(named, auto, strict=True))


def test_the_benchmark_of_a_consistory_human_suite_runs_on_tiny_flux_with_its_protocol_recorded(tmp_path):
    recorded, manifest = tiny_flux_benchmark("pulid", tmp_path)
    assert recorded["protocol"] == get_method("pulid").benchmark_protocol()
    (key,) = IdentityLibrary(tmp_path / "cache" / "identities").keys()
    frames = manifest["frames"]
    assert [f["metadata"]["identity"] for f in frames] == [{"woman": f"discovered ({key})"}] * 2
    assert manifest["method"]["settings"]["identity"] == "auto"
    assert manifest["method"]["settings"]["discovery"]["candidates"] == 12
    assert all(f["metadata"]["denoiser_evaluations"] == 2 for f in frames)  # the ID branch adds no evaluation


def test_with_identity_auto_a_character_whose_photos_show_no_face_is_discovered(models, tmp_path):
    """ViStoryBench's stylised people: antelopev2 may find no face in a drawing. 'auto' discovers them instead of
    failing the story (recorded); 'photos' still refuses, naming the photo."""
    from PIL import Image

    from storycast.identity.photomaker_faces import NoFaceError

    Image.new("RGB", (64, 64), (40, 60, 80)).save(tmp_path / "drawing.png")  # dark: the tiny detector fires on none
    data = two_friends([{"text": "{mara} reading"}])
    data["characters"][0]["references"] = [str(tmp_path / "drawing.png")]
    result = draw(parse_story(data), "pulid", models, method_settings=SMALL, generation=GEN, cache_dir=tmp_path)
    (key,) = IdentityLibrary(tmp_path / "identities").keys()
    assert result.frames[0].metadata["identity"] == {"mara": f"discovered ({key}; no face found in its photos)"}
    with pytest.raises(NoFaceError, match=r"drawing\.png"):
        draw(parse_story(data), "pulid", models, method_settings={**SMALL, "identity": "photos"}, generation=GEN,
             cache_dir=tmp_path)  # fmt: skip

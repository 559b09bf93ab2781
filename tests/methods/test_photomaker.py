"""The PhotoMaker baseline on tiny SDXL: identities from photos or discovered (shared with identitystory through
the identity library), merged from the demos' step, 2T UNet evaluations per frame, the model left as it was."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from storycast.errors import StoryError
from storycast.methods.base import RunContext
from storycast.methods.photomaker.method import PhotoMakerMethod
from storycast.models.loading import load_models
from storycast.models.spec import ModelSpec
from tests.methods.helpers import plan_for, two_friends

GEN = {"steps": 4, "width": 64, "height": 64}
SMALL = {"discovery_candidates": "12", "preview_images": "1"}


@pytest.fixture(scope="module")
def sdxl():
    return load_models(ModelSpec(source="tiny", device="cpu"))


def planned(data, model=None, settings=None):
    return plan_for("photomaker", data, preset="tiny", model=model, settings={**SMALL, **(settings or {})},
                    generation=GEN)  # fmt: skip


def test_photos_and_discovered_identities_draw_a_two_character_story_end_to_end(tmp_path):
    from storycast.cli.main import main

    photo = tmp_path / "mara.png"
    Image.new("RGB", (64, 64), (200, 120, 90)).save(photo)
    data = two_friends()
    data["characters"][0]["references"] = [str(photo)]
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    args = ["generate", str(story), "--method", "photomaker", "--preset", "tiny", "--out", str(out), "--steps", "4",
            "--cache-dir", str(tmp_path / "cache"), *[part for k, v in SMALL.items() for part in ("--set", f"{k}={v}")]]  # fmt: skip
    assert main(args) == 0
    records = json.loads((out / "manifest.json").read_text())["frames"]
    assert records[0]["metadata"]["identities"] == {"mara": "photos (1)"}
    assert records[1]["metadata"]["identities"]["tom"].startswith("discovered (")
    assert records[2]["metadata"]["identities"].keys() == {"mara", "tom"}
    assert records[3]["metadata"]["identities"] == {}  # a frame naming nobody is plain SDXL with the LoRA
    for record in records:
        assert record["metadata"]["denoiser_evaluations"] == 2 * 4  # one guided pass per step: 2T


def test_the_identity_is_fused_into_the_class_token_alone_from_the_merge_step(sdxl, tmp_path):
    from storycast.pipelines.families import prompt_encoder

    photo = tmp_path / "mara.png"
    Image.new("RGB", (64, 64), (30, 160, 90)).save(photo)
    data = two_friends([{"text": "{mara} reading on a bench"}])
    data["characters"][0]["references"] = [str(photo)]
    plan = planned(data, model=sdxl, settings={"style_strength": "0.5"})
    method = PhotoMakerMethod(sdxl, plan.settings)
    method.prepare(plan.story, RunContext(cache_dir=tmp_path))
    assert method.generate(plan.story, (0,), RunContext())[0].metadata["merge_step"] == 2  # int(0.5 x 4)
    story = plan.story
    plain = prompt_encoder(sdxl.pipeline, "sdxl", "cpu")([story.prompt(0)], [""], width=64, height=64)
    triggered = {"mara": story.prompt(0).replace("woman", "woman img", 1)}
    fused = method.adapter.fuse_identities(plain, [triggered], method._identities)
    changed = (fused.cond.embeds - plain.cond.embeds).abs().amax(dim=-1)[0] > 0
    assert changed.sum() == 1 and int(changed.nonzero()) == method.adapter.class_token_position(triggered["mara"])
    assert torch.equal(fused.uncond.embeds, plain.uncond.embeds)
    assert torch.equal(fused.cond.pooled, plain.cond.pooled)  # pooled embeddings stay text-only


def test_bad_input_is_refused_before_any_model_loads():
    with pytest.raises(StoryError, match=r"characters\[1\]\.references: identity=photos needs reference photos"):
        planned(two_friends(), settings={"identity": "photos"})
    from storycast.errors import SettingsError

    with pytest.raises(SettingsError, match="runs on sdxl"):
        plan_for("photomaker", two_friends(), preset="tiny-sd15", generation=GEN)


def test_a_character_naming_a_library_identity_is_drawn_with_it(sdxl, tmp_path):
    from storycast.identity.library import IdentityLibrary

    library = IdentityLibrary(tmp_path / "cache" / "identities")
    stored = library.put("from-another-story", torch.linspace(-1, 1, 64), {"character": "someone"})
    data = two_friends(frames=[{"text": "{mara} reading on a bench"}])
    data["characters"][0]["identity"] = "from-another-story"
    plan = planned(data, model=sdxl)
    method = PhotoMakerMethod(sdxl, plan.settings)
    method.prepare(plan.story, RunContext(cache_dir=tmp_path / "cache"))
    assert torch.equal(method._identities["mara"], stored.embedding)
    result = method.generate(plan.story, (0,), RunContext(cache_dir=tmp_path / "cache"))[0]
    assert result.metadata["identities"] == {"mara": "library (from-another-story)"}
    assert library.keys() == ["from-another-story"]  # nothing discovered

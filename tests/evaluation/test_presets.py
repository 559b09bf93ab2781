"""Eval presets: the papers' protocols, their validation, customisation, and the published rows."""

from __future__ import annotations

import pytest

from storycast.errors import SettingsError
from storycast.evaluation import metrics
from storycast.evaluation import presets as P
from storycast.evaluation.published import PUBLISHED_ROWS, published_rows
from storycast.vision import faces
from storycast.vision import features as extractors


def test_constants_equal_those_of_the_modules_presets_does_not_import():
    assert P.PERCENT == metrics.PERCENT and P.HESSEL_W == metrics.HESSEL_W
    assert P.DEFAULT_DINO_CHECKPOINT == extractors.DEFAULT_DINO_CHECKPOINT
    assert tuple(faces.FACE_PACKS) == P.FACE_PACK_NAMES
    assert set(metrics.MISSING_FACE_POLICIES) == set(P.typing.get_args(P.MissingFacePolicy))


def test_the_three_protocols():
    identitystory = P.get_eval_preset("identitystory")
    assert identitystory.ordered_metrics == ("clip_t", "clip_t_c", "clip_i", "face_sim", "qalign_gen", "qalign_aes")
    assert identitystory.text_scale == identitystory.image_scale == identitystory.face_scale == 100.0
    assert identitystory.clip_t_text == "{prompt}" and identitystory.clip_t_c_text == "{context}"
    assert (
        identitystory.header_of("clip_t") == "CLIP-T ↑ (%)"
        and identitystory.header_of("qalign_gen") == "Q-Align-Gen ↑"
    )

    one_prompt = P.get_eval_preset("1p1s")
    assert one_prompt.name == "1prompt1story" and one_prompt.text_scale == 2.5 and not one_prompt.text_clamp
    assert (one_prompt.clip_model, one_prompt.clip_i_checkpoint) == (
        "openai/clip-vit-base-patch32",
        "openai/clip-vit-base-patch16",
    )
    assert one_prompt.clip_t_text.startswith("A photo depicts ") and one_prompt.unit_of("clip_i") == ""

    consistory = P.get_eval_preset("ConsiStory")
    assert consistory.aggregation == "flat" and consistory.text_clamp and consistory.text_scale == 2.5
    for preset in P.EVAL_PRESETS.values():
        assert preset.caveats and preset.sources and preset.aggregation in ("story", "flat")


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(SettingsError, match="identitystory, 1prompt1story, consistory"):
        P.get_eval_preset("dreamsim")


def test_metric_names_accept_labels_and_groups():
    assert P.metric_names(["CLIP-T", "clip-t-c", "Face-Sim(R)", "qalign"]) == (
        "clip_t",
        "clip_t_c",
        "face_sim_r",
        "qalign_gen",
        "qalign_aes",
    )
    with pytest.raises(SettingsError, match="metric 'fid' is not known"):
        P.metric_names(["fid"])


def test_customize_adds_removes_and_converts_fields():
    preset = P.get_eval_preset("identitystory").customize(
        add=["dino-i", "Face-Sim(R)"],
        remove=["qalign"],
        overrides={"face_missing": "zero", "text_scale": "2.5", "text_clamp": "true", "clip_i_model": "none"},
    )
    assert preset.ordered_metrics == ("clip_t", "clip_t_c", "clip_i", "dino_i", "face_sim", "face_sim_r")
    assert preset.face_missing == "zero" and preset.text_scale == 2.5 and preset.text_clamp is True
    assert preset.clip_i_model is None and preset.name == "identitystory"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"remove": ["clip_t", "clip_t_c", "clip_i", "face_sim", "qalign"]}, "has no metrics"),
        ({"overrides": {"nonsense": 1}}, "eval setting 'nonsense' is not known"),
        ({"overrides": {"face_missing": "ignore"}}, "'ignore' is not allowed"),
        ({"overrides": {"image_pairing": "all"}}, "'all' is not allowed"),
        ({"overrides": {"clip_t_text": "{prompt} {subject}"}}, "unknown placeholder"),
        ({"overrides": {"face_scale": "-1"}}, "must be positive"),
        ({"overrides": {"face_pack": "buffalo_s"}}, "buffalo_l, antelopev2"),
        ({"overrides": {"metrics": "clip_t"}}, "not known"),
    ],
)
def test_bad_customisations_are_refused_with_the_fix(change, message):
    with pytest.raises(SettingsError, match=message):
        P.get_eval_preset("identitystory").customize(**change)


def test_tiny_leaves_qalign_out_unless_asked():
    assert "qalign_gen" not in P.resolve_preset("identitystory", tiny=True).metrics
    kept = P.resolve_preset("identitystory", tiny=True, add=["qalign_aes"])
    assert "qalign_aes" in kept.metrics and "qalign_gen" not in kept.metrics
    assert "qalign_gen" in P.resolve_preset("identitystory").metrics


def test_published_rows_are_the_papers_numbers():
    rows = {r.method: r for r in published_rows("identitystory")}
    assert list(rows) == [
        "ConsiStory",
        "StoryDiffusion",
        "Story-Adapter",
        "1Prompt1Story",
        "IdentityStory",
        "PhotoMaker",
    ]
    assert rows["IdentityStory"].values == {
        "clip_t": 35.4,
        "clip_t_c": 31.1,
        "clip_i": 85.8,
        "face_sim": 55.5,
        "qalign_gen": 4.25,
        "qalign_aes": 4.92,
    }
    assert rows["PhotoMaker"].values == {"clip_t": 34.6, "clip_i": 84.1, "face_sim": 47.9, "qalign_gen": 3.84}
    one_prompt = {r.method: r for r in published_rows("1prompt1story")}
    assert (
        one_prompt["1Prompt1Story"].values["clip_t"] == 0.8942
        and one_prompt["1Prompt1Story"].benchmark == "ConsiStory+"
    )
    assert published_rows("consistory") == []
    assert all(r.source for r in PUBLISHED_ROWS)

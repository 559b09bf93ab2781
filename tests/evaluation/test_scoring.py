"""The scoring core on fixed tensors: each metric equals a naive computation, and aggregation is per story."""

from __future__ import annotations

import math

import pytest
import torch

from storycast.evaluation import metrics as M
from storycast.evaluation.presets import get_eval_preset
from storycast.evaluation.scoring import (
    FrameFaces,
    StoryInputs,
    StoryScores,
    character_faces,
    consistency,
    score_story,
    summarize,
)

IDENTITYSTORY = get_eval_preset("identitystory")
CLIP_ONLY = IDENTITYSTORY.customize(remove=["faces", "qalign"])


def _features(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _faces(*embeddings: torch.Tensor, x: float = 0.0, size: float = 10.0) -> FrameFaces:
    """Faces side by side from ``x``, the first the largest."""
    if not embeddings:
        return FrameFaces.none(8)
    boxes = [[x + 20 * i, 0.0, x + 20 * i + size - i, size - i] for i in range(len(embeddings))]
    return FrameFaces(M.l2_normalize(torch.stack(embeddings)), torch.tensor(boxes), torch.ones(len(embeddings)))


def test_text_alignment_is_scaled_cosine_and_context_only_where_given():
    images, prompts, contexts = _features(3, seed=1), _features(3, seed=2), _features(2, seed=3)
    inputs = StoryInputs(
        frames=3,
        clip_images=images,
        clip_t_texts=prompts,
        clip_t_c_texts=contexts,
        context_frames=(0, 2),
        clip_i_images=images,
    )
    scores = score_story(inputs, CLIP_ONLY)
    naive = [100 * _cos(images[i], prompts[i]) for i in range(3)]
    assert scores.values["clip_t"] == pytest.approx(sum(naive) / 3, abs=1e-4)
    assert [f["clip_t"] for f in scores.frames] == pytest.approx(naive, abs=1e-4)
    naive_context = [100 * _cos(images[0], contexts[0]), 100 * _cos(images[2], contexts[1])]
    assert scores.values["clip_t_c"] == pytest.approx(sum(naive_context) / 2, abs=1e-4)
    assert "clip_t_c" not in scores.frames[1]


def test_hessel_clamp_and_scale():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])
    preset = get_eval_preset("consistory").customize(remove=["clip_i"])
    scores = score_story(StoryInputs(frames=2, clip_images=images, clip_t_texts=texts), preset)
    assert [f["clip_t"] for f in scores.frames] == pytest.approx([0.0, 2.5 / math.sqrt(2)])


def test_pairwise_consistency_is_the_mean_of_each_frames_mean_to_the_others():
    features = _features(5, seed=4)
    value, per_frame = consistency(features, scale=100)
    naive = [_cos(features[i], features[j]) for i in range(5) for j in range(i + 1, 5)]
    assert value == pytest.approx(100 * sum(naive) / len(naive), abs=1e-4)
    assert sum(per_frame) / 5 == pytest.approx(value, abs=1e-4)
    assert per_frame[0] == pytest.approx(100 * sum(_cos(features[0], features[j]) for j in range(1, 5)) / 4, abs=1e-4)


def test_anchor_consistency_leaves_the_anchor_without_a_frame_value():
    features = _features(4, seed=5)
    value, per_frame = consistency(features, pairing="anchor", anchor=1)
    assert per_frame[1] is None
    assert value == pytest.approx(sum(_cos(features[i], features[1]) for i in (0, 2, 3)) / 3, abs=1e-6)
    assert math.isnan(consistency(features[:1])[0])


def test_single_character_face_sim_with_a_missing_face_and_both_policies():
    a, b = _features(2, seed=6)
    faces = (_faces(a), _faces(), _faces(a, b), _faces(b * 0.5 + a))  # frame 2: the largest face is a
    inputs = StoryInputs(frames=4, character_ids=("mara",), frame_characters=((0,),) * 4, faces=faces)
    skip = score_story(inputs, IDENTITYSTORY.customize(remove=["clip_t", "clip_t_c", "clip_i", "qalign"]))
    embeddings = [a, None, a, b * 0.5 + a]
    expected = M.face_similarity_pairwise(embeddings, scale=100)
    assert skip.values["face_sim"] == pytest.approx(expected.value, abs=1e-4)
    assert skip.details["face_coverage"] == {"expected": 4, "found": 3, "coverage": 0.75}
    assert skip.details["faces_found"] == [1, 0, 2, 1] and "face_sim" not in skip.frames[1]
    zero = score_story(
        inputs,
        IDENTITYSTORY.customize(remove=["clip_t", "clip_t_c", "clip_i", "qalign"], overrides={"face_missing": "zero"}),
    )
    assert zero.values["face_sim"] == pytest.approx(expected.value / 2, abs=1e-4)  # 3 of 6 pairs scored


def test_multi_character_faces_are_told_apart_by_the_first_frame_showing_both():
    a, b = M.l2_normalize(_features(2, seed=7))
    faces = (_faces(a, b), _faces(b, a), _faces(b), _faces(a, b, x=100))
    inputs = StoryInputs(frames=4, character_ids=("leo", "ana"), frame_characters=((0, 1),) * 3 + ((1,),), faces=faces)
    per_character = character_faces(inputs)
    assert per_character[0].frames == (0, 1, 2) and per_character[1].frames == (0, 1, 2, 3)
    for character, expected in zip(per_character, (a, b), strict=True):
        found = [e for e in character.embeddings if e is not None]
        assert all(_cos(e, expected) > 0.999 for e in found)
    assert per_character[0].embeddings[2] is None  # frame 2 shows only b's face: a is missing there
    scores = score_story(inputs, IDENTITYSTORY.customize(remove=["clip_t", "clip_t_c", "clip_i", "qalign"]))
    assert scores.values["face_sim"] == pytest.approx(100.0, abs=1e-3)
    assert [r["character"] for r in scores.details["face_sim"]] == ["leo", "ana"]


def test_face_sim_to_references_and_reference_anchors():
    a, b = M.l2_normalize(_features(2, seed=8))
    noisy = M.l2_normalize(b + 0.3 * a)
    faces = (_faces(noisy, a), _faces(a, noisy))
    inputs = StoryInputs(
        frames=2, character_ids=("leo", "ana"), frame_characters=((0, 1),) * 2, faces=faces, reference_faces=(a, b)
    )
    preset = IDENTITYSTORY.customize(add=["face_sim_r"], remove=["clip_t", "clip_t_c", "clip_i", "qalign"])
    scores = score_story(inputs, preset)
    assert scores.values["face_sim_r"] == pytest.approx((100 + 100 * _cos(noisy, b)) / 2, abs=1e-3)
    assert scores.frames[0]["face_sim_r"] == pytest.approx(scores.values["face_sim_r"], abs=1e-3)
    no_reference = StoryInputs(
        frames=2, character_ids=("leo", "ana"), frame_characters=((0, 1),) * 2, faces=faces, reference_faces=(a, None)
    )
    partial = score_story(no_reference, preset)
    assert partial.values["face_sim_r"] == pytest.approx(100.0, abs=1e-3)
    assert partial.details["face_sim_r"][1] == {"character": "ana", "value": None, "reason": "no reference"}


def test_story_without_characters_has_no_face_sim():
    inputs = StoryInputs(frames=2, faces=(_faces(), _faces()), frame_characters=((), ()))
    scores = score_story(inputs, IDENTITYSTORY.customize(remove=["clip_t", "clip_t_c", "clip_i", "qalign"]))
    assert math.isnan(scores.values["face_sim"])


def test_qalign_is_the_mean_of_the_frame_scores():
    quality = {"qalign_gen": torch.tensor([3.0, 4.0]), "qalign_aes": torch.tensor([4.5, 5.0])}
    preset = IDENTITYSTORY.customize(remove=["clip_t", "clip_t_c", "clip_i", "face_sim"])
    scores = score_story(StoryInputs(frames=2, quality=quality), preset)
    assert scores.values == {"qalign_gen": 3.5, "qalign_aes": 4.75}


def test_missing_inputs_name_the_field():
    with pytest.raises(M.MetricInputError, match="clip_t_texts"):
        score_story(StoryInputs(frames=2, clip_images=_features(2)), CLIP_ONLY)
    with pytest.raises(M.MetricInputError, match="3 rows for 2 frames"):
        score_story(StoryInputs(frames=2, clip_images=_features(3), clip_t_texts=_features(2)), CLIP_ONLY)


def test_story_mean_then_mean_over_stories_differs_from_the_flat_mean():
    long = StoryScores({"clip_t": 10.0, "clip_i": 50.0}, [{"clip_t": 10.0}] * 4)
    short = StoryScores({"clip_t": 40.0, "clip_i": math.nan}, [{"clip_t": 40.0}])
    preset = CLIP_ONLY.customize(remove=["clip_t_c"])
    per_story = summarize([long, short], preset)
    assert per_story["clip_t"].mean == 25.0 and per_story["clip_t"].over == "stories"
    assert per_story["clip_i"].mean == 50.0 and per_story["clip_i"].skipped == 1
    flat = summarize([long, short], preset.customize(overrides={"aggregation": "flat"}))
    assert flat["clip_t"].mean == pytest.approx(80 / 5) and flat["clip_t"].n == 5 and flat["clip_t"].over == "frames"
    assert flat["clip_i"].over == "stories"


def test_scores_round_trip_through_json_with_nan_as_null():
    scores = StoryScores({"clip_t": 1.25, "face_sim": math.nan}, [{"clip_t": 1.25}], {"faces_found": [0]})
    data = scores.to_dict()
    assert data["values"]["face_sim"] is None
    back = StoryScores.from_dict(data)
    assert back.values["clip_t"] == 1.25 and math.isnan(back.values["face_sim"])

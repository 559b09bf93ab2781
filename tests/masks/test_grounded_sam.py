import re

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.masks.base import CharacterQuery, MaskInputs, MaskNotFoundError, MaskProvider
from storycast.masks.grounded_sam import (
    Detections,
    GroundedSamMasks,
    GroundedSamSettings,
    assign_boxes,
    build_caption,
    class_words,
    cxcywh_to_xyxy,
    normalize_word,
    select_detections,
    word_token_positions,
)
from tests.masks.tiny_grounded_sam import build_tiny_grounded_sam

IMAGE_HEIGHT, IMAGE_WIDTH = 48, 80


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    """(detector, detector_processor, segmenter, segmenter_processor), seeded, fp32 on the CPU."""
    return build_tiny_grounded_sam(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _provider(parts, **settings) -> GroundedSamMasks:
    settings = {"box_threshold": 0.0, "text_threshold": 0.0, **settings}
    return GroundedSamMasks.from_models(*parts, settings=GroundedSamSettings(**settings))


# ---------------------------------------------------------------------------------------------------------------
# Settings.
# ---------------------------------------------------------------------------------------------------------------


def test_settings_defaults_are_the_authors():
    settings = GroundedSamSettings()
    assert settings.detector == "IDEA-Research/grounding-dino-base"
    assert settings.segmenter == "facebook/sam-vit-huge"
    assert (settings.box_threshold, settings.text_threshold) == (0.3, 0.25)
    assert (settings.passes, settings.order, settings.multimask, settings.dtype) == (
        "per-word",
        "score",
        False,
        "fp32",
    )


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("box_threshold", 1.5, "box_threshold must be a number"),
        ("text_threshold", -0.1, "text_threshold must be a number"),
        ("box_threshold", True, "box_threshold must be a number"),
        ("passes", "both", "per-word, joint"),
        ("order", "random", "score, left-to-right"),
        ("dtype", "fp8", "dtype 'fp8' is not known"),
        ("device", "tpu", "device 'tpu' is not known"),
        ("detector", "", "detector must be a Hub id"),
        ("multimask", "yes", "multimask, local_files_only and offload_idle"),
    ],
)
def test_settings_reject_bad_values(field, value, needle):
    with pytest.raises(SettingsError, match=re.escape(needle)):
        GroundedSamSettings(**{field: value})


# ---------------------------------------------------------------------------------------------------------------
# Caption and token positions.
# ---------------------------------------------------------------------------------------------------------------


def test_caption_is_lowercase_words_each_ended_by_a_dot():
    caption, spans = build_caption(["Woman", " man "])
    assert caption == "woman. man."
    assert [caption[a:b] for a, b in spans] == ["woman", "man"]
    caption, spans = build_caption(["police  Officer"])
    assert caption == "police officer."
    assert [caption[a:b] for a, b in spans] == ["police officer"]


def test_class_words_are_distinct_in_first_mention_order():
    characters = [CharacterQuery("a", "Woman"), CharacterQuery("b", "man"), CharacterQuery("c", "woman")]
    assert class_words(characters) == ["woman", "man"]


@pytest.mark.parametrize(("word", "needle"), [("", "empty"), ("  ", "empty"), ("wo.man", "contains '.'")])
def test_bad_class_words_are_refused(word, needle):
    with pytest.raises(ValueError, match=needle):
        normalize_word(word, "lena")


def test_word_token_positions_follow_the_offsets(tiny_parts):
    tokenizer = tiny_parts[1].tokenizer
    caption, spans = build_caption(["woman", "astronaut", "man"])
    offsets = tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
    # [CLS] woman . astro ##naut . man . [SEP]
    assert word_token_positions(offsets, spans) == [[1], [3, 4], [6]]


def test_word_token_positions_fail_for_a_truncated_word():
    offsets = [(0, 0), (0, 5), (5, 6), (0, 0)]  # "woman." then truncated
    with pytest.raises(ValueError, match="text length"):
        word_token_positions(offsets, [(0, 5), (7, 10)])


# ---------------------------------------------------------------------------------------------------------------
# From detector outputs to detections.
# ---------------------------------------------------------------------------------------------------------------


def _logits(probabilities) -> torch.Tensor:
    probs = torch.tensor(probabilities, dtype=torch.float32)
    return torch.where(probs > 0, torch.logit(probs.clamp(1e-6, 1 - 1e-6)), torch.tensor(float("-inf")))


def test_boxes_go_from_normalised_centre_size_to_pixel_corners():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    expected = torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 80.0, 40.0, 100.0]])
    torch.testing.assert_close(cxcywh_to_xyxy(boxes, (100, 200)), expected)


def test_box_threshold_is_strict_and_one_word_takes_every_counted_box():
    # Token positions: [CLS], woman, ., [SEP], padding. Box 2 scores best on '.', which still counts (authors).
    logits = _logits(
        [
            [0.1, 0.9, 0.2, 0.1, 0.0],
            [0.1, 0.3, 0.1, 0.1, 0.0],  # exactly at the threshold: dropped
            [0.1, 0.05, 0.6, 0.1, 0.0],
            [0.1, 0.2, 0.1, 0.1, 0.0],
        ]
    )
    boxes = torch.full((4, 4), 0.5)
    found = select_detections(logits, boxes, ["woman"], (10, 10), box_threshold=0.3, text_threshold=0.25)
    assert found.words == ("woman", "woman")
    torch.testing.assert_close(found.scores, torch.tensor([0.9, 0.6]))
    assert found.boxes.shape == (2, 4)


def test_joint_caption_gives_each_box_its_best_word_above_the_text_threshold():
    # [CLS] man . woman . [SEP]
    logits = _logits(
        [
            [0.1, 0.8, 0.1, 0.5, 0.1, 0.1],  # man
            [0.1, 0.4, 0.1, 0.7, 0.1, 0.1],  # woman
            [0.1, 0.2, 0.5, 0.2, 0.1, 0.1],  # counted by the box threshold, but no word above the text threshold
            [0.1, 0.1, 0.1, 0.2, 0.1, 0.1],  # below the box threshold
        ]
    )
    found = select_detections(
        logits,
        torch.full((4, 4), 0.5),
        ["man", "woman"],
        (10, 10),
        word_tokens=[[1], [3]],
        box_threshold=0.3,
        text_threshold=0.25,
    )
    assert found.words == ("man", "woman")
    torch.testing.assert_close(found.scores, torch.tensor([0.8, 0.7]))


def test_joint_caption_needs_token_positions():
    with pytest.raises(ValueError, match="word_tokens"):
        select_detections(torch.zeros(2, 6), torch.zeros(2, 4), ["man", "woman"], (10, 10))


def test_detections_check_their_shapes():
    with pytest.raises(ValueError, match="boxes"):
        Detections(torch.zeros(2, 4), torch.zeros(3), ("a", "b"))
    assert len(Detections.concat([])) == 0


def test_select_detections_equals_transformers_post_processing(tiny_parts, image):
    detector, processor = tiny_parts[0], tiny_parts[1]
    inputs = processor(images=image, text="woman.", return_tensors="pt")
    with torch.no_grad():
        outputs = detector(**inputs)
    probs = outputs.logits[0].sigmoid().max(dim=-1).values
    threshold = float(probs.median())  # drops about half the queries
    ours = select_detections(
        outputs.logits[0], outputs.pred_boxes[0], ["woman"], (IMAGE_HEIGHT, IMAGE_WIDTH), box_threshold=threshold
    )
    theirs = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold, 0.0, [(IMAGE_HEIGHT, IMAGE_WIDTH)]
    )[0]
    assert 0 < len(ours) < detector.config.num_queries
    torch.testing.assert_close(ours.scores, theirs["scores"])
    torch.testing.assert_close(ours.boxes, theirs["boxes"])


# ---------------------------------------------------------------------------------------------------------------
# Box assignment.
# ---------------------------------------------------------------------------------------------------------------


def _detections(*rows) -> Detections:
    """rows: (word, score, x0) -> a 10 x 10 box starting at x0."""
    boxes = torch.tensor([[x0, 0.0, x0 + 10.0, 10.0] for _, _, x0 in rows]).reshape(-1, 4)
    return Detections(boxes, torch.tensor([score for _, score, _ in rows]), tuple(word for word, _, _ in rows))


def _x0(boxes: dict[str, torch.Tensor]) -> dict[str, float]:
    return {character_id: float(box[0]) for character_id, box in boxes.items()}


def test_one_character_gets_the_best_box_of_its_word():
    found = _detections(("woman", 0.5, 0), ("woman", 0.9, 20), ("man", 0.95, 40), ("woman", 0.7, 60))
    assert _x0(assign_boxes(found, [CharacterQuery("lena", "woman")])) == {"lena": 20.0}


def test_same_class_word_twice_takes_the_two_best_boxes_best_first():
    found = _detections(("woman", 0.5, 0), ("woman", 0.9, 60), ("woman", 0.7, 20))
    characters = [CharacterQuery("anna", "woman"), CharacterQuery("lena", "woman")]
    assert _x0(assign_boxes(found, characters)) == {"anna": 60.0, "lena": 20.0}


def test_left_to_right_order_hands_the_same_boxes_out_by_position():
    found = _detections(("woman", 0.5, 0), ("woman", 0.9, 60), ("woman", 0.7, 20))
    characters = [CharacterQuery("anna", "woman"), CharacterQuery("lena", "woman")]
    assert _x0(assign_boxes(found, characters, order="left-to-right")) == {"anna": 20.0, "lena": 60.0}


def test_different_class_words_and_the_frame_order_of_the_result():
    found = _detections(("woman", 0.6, 0), ("man", 0.8, 20), ("woman", 0.9, 40))
    characters = [CharacterQuery("tom", "man"), CharacterQuery("anna", "Woman")]
    boxes = assign_boxes(found, characters)
    assert list(boxes) == ["tom", "anna"]
    assert _x0(boxes) == {"tom": 20.0, "anna": 40.0}


def test_equal_scores_keep_the_detection_order():
    found = _detections(("woman", 0.5, 30), ("woman", 0.5, 10))
    characters = [CharacterQuery("anna", "woman"), CharacterQuery("lena", "woman")]
    assert _x0(assign_boxes(found, characters)) == {"anna": 30.0, "lena": 10.0}


def test_too_few_boxes_names_the_frame_the_character_the_word_and_the_fixes():
    found = _detections(("woman", 0.9, 0), ("man", 0.8, 20))
    characters = [CharacterQuery("anna", "woman"), CharacterQuery("tom", "man"), CharacterQuery("lena", "woman")]
    with pytest.raises(MaskNotFoundError) as caught:
        assign_boxes(found, characters, frame_index=3, box_threshold=0.3)
    error = caught.value
    assert (error.frame_index, error.character_id) == (3, "lena")
    message = str(error)
    for needle in (
        "frame 4",
        "1 box for 'woman'",
        "'lena'",
        "0.3",
        "seed",
        "lower box_threshold (now 0.3)",
        "'attention'",
        "'user'",
    ):
        assert needle in message


def test_a_word_without_any_box_fails_for_its_first_character():
    found = _detections(("woman", 0.9, 0))
    with pytest.raises(MaskNotFoundError, match="frame 1: GroundingDINO found 0 boxes for 'man'") as caught:
        assign_boxes(found, [CharacterQuery("anna", "woman"), CharacterQuery("tom", "man")])
    assert caught.value.character_id == "tom"


def test_duplicate_character_ids_are_refused():
    with pytest.raises(ValueError, match="unique"):
        assign_boxes(_detections(("woman", 0.9, 0)), [CharacterQuery("a", "woman"), CharacterQuery("a", "woman")])


# ---------------------------------------------------------------------------------------------------------------
# End to end on the tiny models.
# ---------------------------------------------------------------------------------------------------------------

CHARACTERS = [CharacterQuery("anna", "woman"), CharacterQuery("tom", "man"), CharacterQuery("lena", "woman")]


@pytest.mark.parametrize(
    "settings",
    [{}, {"passes": "joint"}, {"multimask": True, "order": "left-to-right"}],
    ids=["per-word", "joint", "multimask"],
)
def test_tiny_models_give_one_bool_mask_per_character_at_image_size(tiny_parts, image, settings):
    provider = _provider(tiny_parts, **settings)
    assert isinstance(provider, MaskProvider)
    assert provider.name == "grounded-sam"
    masks = provider(MaskInputs(image=image, characters=CHARACTERS, frame_index=2))
    assert list(masks) == ["anna", "tom", "lena"]
    for mask in masks.values():
        assert mask.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)
        assert mask.dtype == torch.bool
        assert mask.device.type == "cpu"
        assert mask.any()


@pytest.mark.parametrize("multimask", [False, True])
def test_segment_equals_a_direct_sam_call(tiny_parts, image, multimask):
    """One mask per box (official) or, with multimask, the one of three with the best predicted IoU."""
    segmenter, processor = tiny_parts[2], tiny_parts[3]
    boxes = torch.tensor([[4.0, 2.0, 40.0, 30.0], [30.0, 10.0, 78.0, 47.0]])
    ours = _provider(tiny_parts, multimask=multimask).segment(image, boxes)
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        outputs = segmenter(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=multimask
        )
    assert outputs.pred_masks.shape[2] == (3 if multimask else 1)
    all_masks = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    best = outputs.iou_scores[0].argmax(dim=-1)
    expected = all_masks[torch.arange(2), best]
    assert ours.shape == (2, IMAGE_HEIGHT, IMAGE_WIDTH)
    assert torch.equal(ours, expected)
    if multimask:  # the choice matters on these weights: another mask would differ
        worst = all_masks[torch.arange(2), outputs.iou_scores[0].argmin(dim=-1)]
        assert not torch.equal(ours, worst)


def test_tiny_models_per_word_boxes_come_from_one_pass_per_word(tiny_parts, image):
    provider = _provider(tiny_parts)
    found = provider.detect(image, ["woman", "man"])
    queries = tiny_parts[0].config.num_queries
    assert found.words == ("woman",) * queries + ("man",) * queries  # threshold 0: every query counts


def test_tiny_models_fail_with_a_clear_error_when_no_box_counts(tiny_parts, image):
    provider = _provider(tiny_parts, box_threshold=1.0)
    with pytest.raises(MaskNotFoundError, match=r"frame 3: .*'anna'") as caught:
        provider(MaskInputs(image=image, characters=CHARACTERS, frame_index=2))
    assert caught.value.character_id == "anna"


def test_no_characters_needs_no_models(image):
    provider = GroundedSamMasks()  # would need downloads if it loaded anything
    assert provider(MaskInputs(image=image, characters=[])) == {}


def test_models_load_lazily_from_saved_folders_once(tiny_parts, image, tmp_path):
    detector, detector_processor, segmenter, segmenter_processor = tiny_parts
    detector.save_pretrained(tmp_path / "dino")
    detector_processor.save_pretrained(tmp_path / "dino")
    segmenter.save_pretrained(tmp_path / "sam")
    segmenter_processor.save_pretrained(tmp_path / "sam")
    settings = GroundedSamSettings(
        detector=str(tmp_path / "dino"), segmenter=tmp_path / "sam", box_threshold=0.0, device="cpu"
    )
    provider = GroundedSamMasks(settings)
    assert provider._models is None
    masks = provider(MaskInputs(image=image, characters=CHARACTERS[:2]))
    assert provider.models is provider.models
    assert list(masks) == ["anna", "tom"]
    expected = _provider(tiny_parts)(MaskInputs(image=image, characters=CHARACTERS[:2]))
    for character_id, mask in masks.items():
        assert torch.equal(mask, expected[character_id])


# ---------------------------------------------------------------------------------------------------------------
# Missing weights (tests run with HF_HUB_OFFLINE=1 and an empty Hugging Face cache).
# ---------------------------------------------------------------------------------------------------------------


def test_missing_detector_names_the_checkpoint_and_the_setting(image):
    provider = GroundedSamMasks(GroundedSamSettings(device="cpu"))
    with pytest.raises(MissingWeightsError) as caught:
        provider(MaskInputs(image=image, characters=CHARACTERS[:1]))
    message = str(caught.value)
    assert "IDEA-Research/grounding-dino-base" in message
    assert "set the detector setting to /path/to/folder" in message


def test_missing_segmenter_names_the_checkpoint_and_the_setting(tiny_parts, tmp_path):
    tiny_parts[0].save_pretrained(tmp_path / "dino")
    tiny_parts[1].save_pretrained(tmp_path / "dino")
    provider = GroundedSamMasks(GroundedSamSettings(detector=str(tmp_path / "dino"), device="cpu"))
    with pytest.raises(MissingWeightsError, match=r"facebook/sam-vit-huge.*the segmenter setting"):
        provider.models  # noqa: B018


def test_missing_folder_and_broken_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"does not exist.*the detector setting"):
        GroundedSamMasks(GroundedSamSettings(detector=str(tmp_path / "nope"), device="cpu")).models  # noqa: B018
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"could not be loaded.*the detector setting"):
        GroundedSamMasks(GroundedSamSettings(detector=str(tmp_path / "empty"), device="cpu")).models  # noqa: B018


def test_offloaded_models_run_on_their_device_and_wait_in_cpu_memory(tiny_parts, image, monkeypatch):
    from types import SimpleNamespace

    from storycast.masks.registry import shares_the_gpu

    plain = _provider(tiny_parts)(MaskInputs(image=image, characters=CHARACTERS, frame_index=2))
    provider = _provider(tiny_parts, offload_idle=True, device="cpu")
    moves = []
    for model in (provider.models.detector, provider.models.segmenter):
        original = model.to

        def to(*args, _original=original, _model=model, **kwargs):
            moves.append((type(_model).__name__, str(args[0]) if args else str(kwargs.get("device"))))
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, "to", to)
    masks = provider(MaskInputs(image=image, characters=CHARACTERS, frame_index=2))
    assert all(torch.equal(masks[c], plain[c]) for c in plain)
    # Each model to its device for the call, and back to the CPU after it.
    assert [device for _, device in moves] == ["cpu", "cpu", "cpu", "cpu"] and len({name for name, _ in moves}) == 2
    assert shares_the_gpu(SimpleNamespace(device="cuda", aux_device="cuda"))
    assert not shares_the_gpu(SimpleNamespace(device="cuda:0", aux_device="cuda:1"))
    assert not shares_the_gpu(SimpleNamespace(device="cpu", aux_device="cpu"))

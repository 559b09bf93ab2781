"""CLIP and DINO extractors on tiny random-weight models: equivalence with the stock transformers paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import MissingWeightsError, ModelLoadError, SettingsError
from storycast.vision.features import ClipFeatures, DinoFeatures

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _images(n: int = 5, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip() -> ClipFeatures:
    return ClipFeatures.tiny(seed=0)


def _pooled(output):
    """transformers 5 returns a model output from get_*_features, 4.x a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def test_clip_image_features_equal_get_image_features(clip):
    images = _images()
    pixels = clip.pixel_values(images)
    with torch.no_grad():
        stock = torch.nn.functional.normalize(_pooled(clip.model.get_image_features(pixel_values=pixels)), dim=-1)
    got = clip.encode_images(images)
    assert got.shape == (5, clip.dim) and got.dtype == torch.float32
    torch.testing.assert_close(got, stock, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(5))


def test_clip_text_features_equal_get_text_features_and_ignore_padding(clip):
    texts = ["a photo of a cat", "a young woman with long black hair reading a book in a busy cafe"]
    tokens = clip.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        stock = torch.nn.functional.normalize(_pooled(clip.model.get_text_features(**tokens)), dim=-1)
    batched = clip.encode_texts(texts)
    torch.testing.assert_close(batched, stock, atol=1e-6, rtol=0)
    alone = clip.encode_texts(texts[:1])  # no padding at all
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=0)


def test_clip_long_texts_are_truncated_not_refused(clip):
    feature = clip.encode_texts(["word " * 200])
    assert feature.shape == (1, clip.dim)


def test_clip_preprocessing_is_resize_crop_normalise_with_pil():
    clip = ClipFeatures.tiny(image_size=32)
    image = _images(1, size=(64, 40))[0]  # shortest edge 40 -> 32; 64 -> 51; crop 32 from the middle
    resized = np.asarray(image.resize((51, 32), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    left = (51 - 32) // 2
    expected = ((resized[:, left : left + 32] - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
    got = clip.pixel_values([image])[0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batching_and_seeds(clip):
    images = _images(5)
    one_by_one = ClipFeatures.tiny(seed=0, batch_size=1).encode_images(images)
    torch.testing.assert_close(one_by_one, clip.encode_images(images), atol=1e-6, rtol=0)
    other_seed = ClipFeatures.tiny(seed=1).encode_images(images)
    assert not torch.allclose(other_seed, one_by_one)
    assert clip.encode_images([]).shape == (0, clip.dim)
    assert clip.encode_texts([]).shape == (0, clip.dim)


def test_clip_round_trip_through_a_folder(clip, tmp_path):
    clip.model.save_pretrained(tmp_path)
    clip.image_processor.save_pretrained(tmp_path)
    clip.tokenizer.save_pretrained(tmp_path)
    loaded = ClipFeatures.from_pretrained(tmp_path, batch_size=2)
    images, texts = _images(3), ["a cat", "a dog on a sofa"]
    torch.testing.assert_close(loaded.encode_images(images), clip.encode_images(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.encode_texts(texts), clip.encode_texts(texts), atol=1e-6, rtol=0)
    assert loaded.info["checkpoint"] == str(tmp_path)


def test_missing_folder_names_it_and_the_setting(tmp_path):
    missing = tmp_path / "no-clip-here"
    with pytest.raises(MissingWeightsError, match="--clip-weights") as err:
        ClipFeatures.from_pretrained(missing, setting="--clip-weights")
    assert str(missing) in str(err.value)


def test_missing_hub_checkpoint_names_it_and_the_setting():
    with pytest.raises(MissingWeightsError, match="'storycast-tests/no-such-clip'") as err:
        ClipFeatures.from_pretrained("storycast-tests/no-such-clip", local_files_only=True, setting="eval.clip_model")
    assert "eval.clip_model /path/to/folder" in str(err.value)
    with pytest.raises(MissingWeightsError, match=r"storycast-tests/no-such-dino.*--dino-model"):
        DinoFeatures.from_pretrained("storycast-tests/no-such-dino", local_files_only=True)


def test_folder_without_a_checkpoint_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="--dino-model"):
        DinoFeatures.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["dinov2", "dino"])
def test_dino_features_are_the_cls_token(kind, tmp_path):
    dino = DinoFeatures.tiny(kind, seed=0)
    images = _images(3)
    pixels = dino.pixel_values(images)
    with torch.no_grad():
        cls = dino.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(dino.encode_images(images), torch.nn.functional.normalize(cls, dim=-1))
    dino.model.save_pretrained(tmp_path)
    dino.image_processor.save_pretrained(tmp_path)
    loaded = DinoFeatures.from_pretrained(tmp_path)
    assert loaded.kind == kind
    torch.testing.assert_close(loaded.encode_images(images), dino.encode_images(images), atol=1e-6, rtol=0)


def test_bad_options_are_refused():
    with pytest.raises(SettingsError, match="batch_size"):
        ClipFeatures.tiny(batch_size=0)
    with pytest.raises(SettingsError, match="'dinov3' is not known"):
        DinoFeatures.tiny("dinov3")

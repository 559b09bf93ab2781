"""Aesthetic Predictor V2.5: the head's official keys, the score against a naive forward, loading, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import ModelLoadError
from storycast.vision.aesthetic import AestheticHead, AestheticScorer, vistory_aesthetic_pixels


def test_the_head_has_the_released_files_keys_and_shapes():
    state = AestheticHead(1152).state_dict()
    expected = {0: (1024, 1152), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 8: (1, 16)}
    assert sorted(state) == sorted(f"scoring_head.{i}.{p}" for i in expected for p in ("weight", "bias"))
    for i, shape in expected.items():
        assert state[f"scoring_head.{i}.weight"].shape == shape


def test_preprocessing_is_a_bilinear_square_resize_to_0_1_without_normalisation():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    pixels = vistory_aesthetic_pixels([image], 28)
    naive = np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    assert pixels.shape == (1, 3, 28, 28)
    torch.testing.assert_close(pixels[0], torch.from_numpy(naive).permute(2, 0, 1))


def test_the_score_is_the_head_on_the_normalised_pooled_embedding(tmp_path):
    scorer = AestheticScorer.tiny(seed=4)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in (0, 1)]
    scores = scorer.score_images(images)
    assert scores.shape == (2,)
    with torch.no_grad():
        pooled = scorer.model.vision_model(pixel_values=scorer.pixel_values(images)).pooler_output
        x = pooled / pooled.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 8):  # linear layers with nothing but (eval-mode) dropout between them
            layer = scorer.model.head.scoring_head[i]
            x = x @ layer.weight.T + layer.bias
        unnormalised = scorer.model.head(pooled).squeeze(-1)
    torch.testing.assert_close(scores, x.squeeze(-1))
    assert not torch.allclose(scores, unnormalised)

    folder = tmp_path / "siglip"
    scorer.model.vision_model.save_pretrained(folder)
    torch.save(scorer.model.head.state_dict(), tmp_path / "aesthetic_predictor_v2_5.pth")
    loaded = AestheticScorer.from_pretrained(tmp_path / "aesthetic_predictor_v2_5.pth", folder)
    loaded.input_size = scorer.input_size
    torch.testing.assert_close(loaded.score_images(images), scores)

    bad = {**scorer.model.head.state_dict(), "scoring_head.0.weight": torch.zeros(16, 32)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"scoring_head.0.weight: expected \(1024, 32\), got \(16, 32\)"):
        AestheticScorer.from_pretrained(tmp_path / "bad.pth", folder)
    with pytest.raises(TypeError, match="score_images"):
        scorer.encode_images(images)

"""Inception-v3 written with torchvision's names: the full network's size and keys, loading, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storycast.errors import ModelLoadError
from storycast.vision.inception import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_PARAMETERS,
    BasicConv2d,
    InceptionClassifier,
    InceptionConfig,
    InceptionV3,
    inception_pixel_values,
    resize_shorter_center_crop,
)


def test_the_full_network_has_torchvisions_parameters_and_keys():
    with torch.device("meta"):
        model = InceptionV3(InceptionConfig())
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS
    state = model.state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
    assert state["AuxLogits.conv1.conv.weight"].shape == (768, 128, 5, 5)
    assert state["AuxLogits.fc.weight"].shape == (1000, 768)
    assert state["fc.weight"].shape == (1000, 2048)
    # 96 conv+bn units (stem 5, A 3x7, B 4, C 4x10, D 6, E 2x9, aux 2), 6 keys each, and 2 linear layers
    assert len(state) == 96 * 6 + 4


def test_basic_conv_is_conv_then_eval_batch_norm_with_eps_0001_then_relu():
    torch.manual_seed(0)
    unit = BasicConv2d(3, 4, kernel_size=3).eval()
    unit.bn.running_mean.normal_()
    unit.bn.running_var.uniform_(0.5, 2.0)
    unit.bn.weight.data.normal_()
    unit.bn.bias.data.normal_()
    x = torch.randn(2, 3, 9, 9)
    conv = torch.nn.functional.conv2d(x, unit.conv.weight)
    bn = unit.bn
    naive = (conv - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 0.001)
    naive = (naive * bn.weight[:, None, None] + bn.bias[:, None, None]).clamp_min(0)
    torch.testing.assert_close(unit(x), naive, atol=1e-5, rtol=1e-5)
    assert bn.eps == 0.001


def test_resize_and_center_crop_follow_torchvisions_arithmetic():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    out = resize_shorter_center_crop(image, 299)
    # Resize(299): the shorter side to 299, the longer int(299 * 400 / 300) = 398; CenterCrop: left round(99 / 2) = 50
    naive = image.resize((398, 299), Image.Resampling.BILINEAR).crop((50, 0, 349, 299))
    assert out.size == (299, 299)
    assert np.array_equal(np.asarray(out), np.asarray(naive))
    pixels = inception_pixel_values([Image.new("RGB", (80, 120), (10, 200, 30))], 75)
    expected = (torch.tensor([10, 200, 30]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert pixels.shape == (1, 3, 75, 75)
    torch.testing.assert_close(pixels[0, :, 3, 3], expected, atol=1e-5, rtol=0)


def test_probabilities_are_a_softmax_and_a_file_with_torchvision_keys_loads(tmp_path):
    tiny = InceptionClassifier.tiny(seed=2)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (90, 80, 3), dtype=np.uint8)) for i in (0, 1)]
    probs = tiny.class_probabilities(images)
    assert probs.shape == (2, 10)
    pixels = tiny.pixel_values(images)
    with torch.no_grad():
        torch.testing.assert_close(probs, tiny.model(pixels).softmax(dim=1))

    # The released file predates batch-norm step counters: a file without them loads too.
    state = {k: v for k, v in tiny.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "inception_v3_google-0cc3c7bd.pth")
    loaded = InceptionClassifier.from_file(
        tmp_path / "inception_v3_google-0cc3c7bd.pth", config=InceptionConfig.tiny()
    )
    loaded.input_size = 75
    torch.testing.assert_close(loaded.class_probabilities(images), probs)

    state["fc.weight"] = torch.zeros(5, state["fc.weight"].shape[1])
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"fc.weight: expected \(10, \d+\), got \(5, \d+\)"):
        InceptionClassifier.from_file(tmp_path / "bad.pth", config=InceptionConfig.tiny())

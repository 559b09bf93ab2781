import numpy as np
import pytest
import torch
from PIL import Image

from storycast.pipelines.noise import control_image_tensor


def _picture(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_control_image_tensor_is_lanczos_resized_rgb_in_0_1():
    image = _picture(50, 70)
    tensor = control_image_tensor(image, 64, 48, device="cpu", dtype=torch.float32)
    assert tensor.shape == (1, 3, 48, 64) and tensor.dtype == torch.float32 and tensor.device.type == "cpu"
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    # diffusers' ControlNet pipelines resize with VaeImageProcessor's default filter, Lanczos.
    expected = np.asarray(image.resize((64, 48), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    assert torch.allclose(tensor[0].permute(1, 2, 0), torch.from_numpy(expected), atol=1e-6)


def test_control_image_tensor_converts_to_rgb_and_keeps_the_dtype():
    gray = _picture(32, 32, seed=1).convert("L")
    tensor = control_image_tensor(gray, 32, 32, device="cpu", dtype=torch.float16)
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == torch.float16
    assert torch.equal(tensor[0, 0], tensor[0, 1]) and torch.equal(tensor[0, 1], tensor[0, 2])
    expected = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0).half()
    assert torch.equal(tensor[0, 0], expected)


@pytest.mark.parametrize(("width", "height"), [(60, 48), (64, 0)])
def test_control_image_tensor_rejects_sizes_that_are_not_multiples_of_8(width, height):
    with pytest.raises(ValueError, match="positive multiples of 8"):
        control_image_tensor(_picture(16, 16), width, height, device="cpu", dtype=torch.float32)

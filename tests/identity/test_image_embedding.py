import numpy as np
import pytest
import torch
from PIL import Image

from storycast.identity.image_embedding import clip_preprocess, embed_images
from storycast.identity.photomaker import PhotoMakerConfig, PhotoMakerIDEncoder


def _image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _reference_processor(size: int):
    """transformers' own CLIP image processor, built in code (the PIL backend: no torchvision needed)."""
    import transformers

    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.fixture(scope="module")
def tiny() -> PhotoMakerIDEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PhotoMakerIDEncoder(PhotoMakerConfig.tiny()).eval()


@pytest.mark.parametrize(("width", "height", "mode"), [(300, 200, "RGB"), (97, 260, "RGBA"), (64, 64, "L")])
def test_preprocessing_matches_the_clip_image_processor(width, height, mode):
    images = [_image(width, height, seed=1, mode=mode), _image(height, width, seed=2, mode=mode)]
    ours = clip_preprocess(images, 224)
    theirs = _reference_processor(224)(images=images, return_tensors="pt").pixel_values
    assert ours.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_preprocessing_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        clip_preprocess([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        clip_preprocess([_image(8, 8, 0), np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match="image_size"):
        clip_preprocess([_image(8, 8, 0)], image_size=0)


def test_embed_images_shape_dtype_and_batch_invariance(tiny):
    images = [_image(48 + 8 * i, 40, seed=i) for i in range(5)]
    together = embed_images(tiny, images)
    one_by_one = embed_images(tiny, images, batch_size=2)
    assert together.shape == (5, 64)
    assert together.dtype == torch.float32
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        direct = tiny.embed(clip_preprocess(images, 32))
    torch.testing.assert_close(together, direct)
    assert not torch.allclose(together[0], together[1])

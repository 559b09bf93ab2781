"""AdaFace IR and FaceNet Inception-ResNet-v1: official key names and shapes, loading, and refusing a wrong file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storycast.errors import ModelLoadError
from storycast.vision.adaface import AdaFaceIR, adaface_input, load_adaface
from storycast.vision.facenet import InceptionResnetV1, facenet_input, load_facenet


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_adaface_ir101_has_the_official_key_names_and_shapes():
    with torch.device("meta"):
        shapes = _shapes(AdaFaceIR.ir101())
    # net.Backbone(112, 100, 'ir'): 3 + 13 + 30 + 3 units; the first unit of a stage with new width has a conv shortcut.
    assert shapes["input_layer.0.weight"] == (64, 3, 3, 3)
    assert shapes["input_layer.2.weight"] == (64,)  # PReLU
    assert "body.0.shortcut_layer.0.weight" not in shapes  # 64 -> 64: a max-pool shortcut
    assert shapes["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert shapes["body.48.res_layer.4.weight"] == (512, 512, 3, 3)
    assert "body.49.res_layer.0.weight" not in shapes
    assert shapes["output_layer.3.weight"] == (512, 512 * 7 * 7)
    assert shapes["output_layer.4.running_var"] == (512,)
    assert "output_layer.4.weight" not in shapes  # BatchNorm1d(affine=False)


def test_facenet_has_the_official_key_names_and_shapes():
    with torch.device("meta"):
        shapes = _shapes(InceptionResnetV1())
    assert shapes["conv2d_1a.conv.weight"] == (32, 3, 3, 3)
    assert shapes["conv2d_4b.bn.running_mean"] == (256,)
    assert shapes["repeat_1.4.branch2.2.conv.weight"] == (32, 32, 3, 3)
    assert shapes["repeat_2.9.branch1.2.conv.weight"] == (128, 128, 7, 1)
    assert shapes["mixed_6a.branch1.2.conv.weight"] == (256, 192, 3, 3)
    assert shapes["mixed_7a.branch2.2.conv.weight"] == (256, 256, 3, 3)
    assert shapes["block8.conv2d.weight"] == (1792, 384, 1, 1)
    assert shapes["last_linear.weight"] == (512, 1792)
    assert "last_linear.bias" not in shapes
    assert shapes["last_bn.weight"] == (512,)


def test_adaface_loads_a_lightning_checkpoint_and_refuses_a_wrong_one(tmp_path):
    source = AdaFaceIR.tiny(seed=1)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    state["head.kernel"] = torch.zeros(32, 10)  # the margin head of training: not the network's
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ada.ckpt")
    loaded = load_adaface(tmp_path / "ada.ckpt", model=AdaFaceIR.tiny(seed=2))
    x = adaface_input([np.full((112, 112, 3), 90, np.uint8)])
    assert torch.equal(loaded(x)[0], source.eval()(x)[0])
    torch.save({"state_dict": state}, tmp_path / "other.ckpt")
    with pytest.raises(ModelLoadError, match=r"wrong shapes \(\d+\): input_layer\.0\.weight"):
        load_adaface(tmp_path / "other.ckpt", model=AdaFaceIR((1, 1, 1, 1), (8, 8, 8, 16), 32))


def test_facenet_loads_the_checkpoint_with_its_classifier_and_refuses_a_wrong_one(tmp_path):
    source = InceptionResnetV1.tiny(seed=1)
    state = dict(source.state_dict())
    state["logits.weight"], state["logits.bias"] = torch.zeros(7, 32), torch.zeros(7)  # the VGGFace2 classifier
    torch.save(state, tmp_path / "facenet.pt")
    loaded = load_facenet(tmp_path / "facenet.pt", model=InceptionResnetV1.tiny(seed=2))
    x = facenet_input([np.full((112, 112, 3), 90, np.uint8)])
    out = loaded(x)
    assert out.shape == (1, 32) and torch.allclose(out, source.eval()(x))
    assert float(out.detach().norm()) == pytest.approx(1.0, abs=1e-5)
    del state["last_bn.running_mean"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelLoadError, match=r"missing keys \(1\): last_bn\.running_mean"):
        load_facenet(tmp_path / "broken.pt", model=InceptionResnetV1.tiny())


def test_inputs_follow_their_preprocessing():
    face = np.zeros((112, 112, 3), np.uint8)
    face[..., 0] = 255  # red in RGB
    ada = adaface_input([face])
    assert ada[0, 2].eq(1.0).all() and ada[0, 0].eq(-1.0).all()  # BGR: red last, scaled to [-1, 1]
    net = facenet_input([face])  # their FaceNet gets facexlib's BGR crop / 255 as it is
    assert net[0, 0].eq(1.0).all() and net[0, 2].eq(0.0).all()

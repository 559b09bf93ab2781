"""facexlib's BiSeNet face parser in torch: its key names (listed from facexlib's bisenet.py and resnet.py), a strict
load of a .pth saved without BatchNorm's step counters, a wrong shape refused, the forward against a naive one written
from their code, and PuLID's white-out of exactly its background classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from storycast.errors import MissingWeightsError, ModelLoadError
from storycast.vision.face_parsing import PULID_BACKGROUND, BiSeNet, load_bisenet, white_out


def _bn(prefix, channels):
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _cbr(prefix, cin, cout, k):
    return {f"{prefix}.conv.weight": (cout, cin, k, k)} | _bn(f"{prefix}.bn", cout)


def facexlib_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of BiSeNet(num_class=19), from facexlib/parsing/bisenet.py and resnet.py."""
    keys = {"cp.resnet.conv1.weight": (64, 3, 7, 7)} | _bn("cp.resnet.bn1", 64)
    for layer, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], start=1):
        for block in (0, 1):
            p, first = f"cp.resnet.layer{layer}.{block}", cin if block == 0 else cout
            keys |= {f"{p}.conv1.weight": (cout, first, 3, 3), f"{p}.conv2.weight": (cout, cout, 3, 3)}
            keys |= _bn(f"{p}.bn1", cout) | _bn(f"{p}.bn2", cout)
            if block == 0 and layer > 1:
                keys |= {f"{p}.downsample.0.weight": (cout, cin, 1, 1)} | _bn(f"{p}.downsample.1", cout)
    for name, cin in (("arm16", 256), ("arm32", 512)):
        keys |= _cbr(f"cp.{name}.conv", cin, 128, 3) | {f"cp.{name}.conv_atten.weight": (128, 128, 1, 1)}
        keys |= _bn(f"cp.{name}.bn_atten", 128)
    keys |= (
        _cbr("cp.conv_head32", 128, 128, 3) | _cbr("cp.conv_head16", 128, 128, 3) | _cbr("cp.conv_avg", 512, 128, 1)
    )
    keys |= _cbr("ffm.convblk", 256, 256, 1) | {
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
    }
    for name, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        keys |= _cbr(f"{name}.conv", cin, mid, 3) | {f"{name}.conv_out.weight": (19, mid, 1, 1)}
    return keys


@pytest.fixture(scope="module")
def parser():
    torch.manual_seed(0)
    model = BiSeNet()
    for name, buffer in model.named_buffers():  # running statistics away from (0, 1), so that each one matters
        if "running_mean" in name:
            buffer.normal_(0, 0.1)
        elif "running_var" in name:
            buffer.uniform_(0.5, 1.5)
    return model.eval()


def test_the_parser_has_facexlibs_keys_and_loads_their_file_strictly(parser, tmp_path):
    assert {k: tuple(v.shape) for k, v in parser.state_dict().items()} == facexlib_layout()
    old = {k: v for k, v in parser.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "parsing_bisenet.pth")
    loaded = load_bisenet(tmp_path)
    pixels = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.labels(pixels), parser.labels(pixels))
    old["ffm.conv1.weight"] = torch.zeros(3, 3)
    torch.save(old, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"'ffm\.conv1\.weight' is missing or of another shape.*Fix"):
        load_bisenet(tmp_path / "bad.pth")
    with pytest.raises(MissingWeightsError, match=r"parsing_bisenet\.pth"):
        load_bisenet(tmp_path / "nowhere")


def naive_bisenet(m, x):
    """facexlib's BiSeNet.forward, main output: ContextPath with avg_pool2d and nearest upsampling."""

    def cbr(block, t):
        return F.relu(block.bn(block.conv(t)))

    def arm(a, t):
        feat = cbr(a.conv, t)
        atten = torch.sigmoid(a.bn_atten(a.conv_atten(F.avg_pool2d(feat, feat.size()[2:]))))
        return torch.mul(feat, atten)

    r = m.cp.resnet
    t = F.max_pool2d(F.relu(r.bn1(r.conv1(x))), 3, 2, 1)
    feat8 = r.layer2(r.layer1(t))
    feat16 = r.layer3(feat8)
    feat32 = r.layer4(feat16)
    avg = cbr(m.cp.conv_avg, F.avg_pool2d(feat32, feat32.size()[2:]))
    avg_up = F.interpolate(avg, feat32.size()[2:], mode="nearest")
    feat32_up = cbr(
        m.cp.conv_head32, F.interpolate(arm(m.cp.arm32, feat32) + avg_up, feat16.size()[2:], mode="nearest")
    )
    feat16_up = cbr(
        m.cp.conv_head16, F.interpolate(arm(m.cp.arm16, feat16) + feat32_up, feat8.size()[2:], mode="nearest")
    )
    feat = cbr(m.ffm.convblk, torch.cat([feat8, feat16_up], dim=1))
    atten = torch.sigmoid(m.ffm.conv2(F.relu(m.ffm.conv1(F.avg_pool2d(feat, feat.size()[2:])))))
    fused = torch.mul(feat, atten) + feat
    out = m.conv_out.conv_out(cbr(m.conv_out.conv, fused))
    return F.interpolate(out, x.size()[2:], mode="bilinear", align_corners=True)


def test_the_parser_equals_a_naive_forward_of_facexlibs_bisenet(parser):
    pixels = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(parser(pixels), naive_bisenet(parser, pixels), rtol=1e-4, atol=1e-4)


def test_white_out_whitens_exactly_pulids_background_classes():
    labels = torch.arange(19).view(1, 1, 19).expand(1, 2, 19)
    faces = torch.full((1, 3, 2, 19), 0.25)
    out = white_out(faces, labels)
    whitened = {int(c) for c in range(19) if torch.all(out[0, :, :, c] == 1.0)}
    assert whitened == set(PULID_BACKGROUND) == {0, 7, 8, 9, 14, 15, 16, 18}
    assert torch.all(out[0, :, :, [1, 2, 10, 17]] == 0.25)  # skin, brows, nose, hair stay

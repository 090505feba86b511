"""EfficientNet-Lite0/1/2: efficientnet_pytorch's keys and shapes, TensorFlow "SAME" padding against an explicit
pad-then-convolve, the packaged ImageNet files (digest-checked, key for key) when installed, and the stages that
PatchCore reads at strides 8 and 16."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conformood.models import BACKBONES, get_backbone, read_weights
from conformood.models.backbones import PACKAGED_WEIGHTS, packaged_weights
from conformood.models.efficientnet import LITE, EfficientNetLite, SameConv2d

LITE_NAMES = tuple(LITE)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGED_WEIGHTS[name][0]) is not None


@pytest.mark.parametrize(("name", "n_keys", "n_blocks", "last"), [("efficientnet_lite0", 296, 16, 320),
                                                                  ("efficientnet_lite1", 386, 21, 320),
                                                                  ("efficientnet_lite2", 386, 21, 352)])
def test_lite_has_efficientnet_pytorch_keys_and_shapes(name, n_keys, n_blocks, last):
    state = EfficientNetLite(name).state_dict()
    assert len(state) == n_keys  # as the packaged files hold them
    assert tuple(state["_conv_stem.weight"].shape) == (32, 3, 3, 3)  # Lite keeps the stem at 32
    assert "_blocks.0._expand_conv.weight" not in state  # expansion 1: no expansion layer
    assert tuple(state["_blocks.1._expand_conv.weight"].shape) == (96, 16, 1, 1)
    assert f"_blocks.{n_blocks - 1}._project_conv.weight" in state and f"_blocks.{n_blocks}._bn0.weight" not in state
    assert tuple(state["_conv_head.weight"].shape) == (1280, last, 1, 1)  # Lite keeps the head at 1,280
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)
    assert not any("_se_" in k for k in state)  # no squeeze-and-excitation


@pytest.mark.parametrize(("size", "stride", "kernel"), [(17, 2, 3), (16, 2, 3), (16, 2, 5), (15, 1, 5), (8, 2, 5)])
def test_same_padding_matches_tensorflow_rule(size, stride, kernel):
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    out = conv(x)
    # TensorFlow "SAME": output ceil(in / stride); total padding split with the extra pixel at the bottom/right
    pads = []
    for n in (size, size + 1):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (*pads[1], *pads[0])), conv.weight, None, stride)
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))
    assert torch.allclose(out, ref, atol=1e-6)


def test_patch_stages_read_strides_8_and_16():
    for name in LITE_NAMES:
        net = EfficientNetLite(name).eval()
        a, b = BACKBONES.info(name).extra["patch_stages"]
        h = torch.zeros(1, 3, 64, 64)
        sides = []
        with torch.no_grad():
            for unit in net.units()[:b]:
                h = unit(h)
                sides.append(h.shape[-1])
        assert sides[a - 1] == 8 and sides[b - 1] == 4, name  # 64 / 8 and 64 / 16


def test_random_lite_backbone_is_one_fixed_network_and_patch_shapes():
    a = get_backbone("efficientnet_lite0", weights=None, input_size=64)
    b = get_backbone("efficientnet_lite0", weights=None, input_size=64)
    x = torch.rand(2, 1, 50, 70)  # gray, any size
    with torch.no_grad():
        assert torch.equal(a.module(a.preprocess(x)), b.module(b.preprocess(x)))
    p = get_backbone("efficientnet_lite0", weights=None, input_size=64, patch_stages=(6, 12), patch_dim=32)
    with torch.no_grad():
        out = p.module(p.preprocess(x))
    assert tuple(out.shape) == (2, 64, 32) and p.output == "patches" and p.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="patch_stages"):
        get_backbone("efficientnet_lite0", weights=None, patch_stages=(12, 6))


@pytest.mark.parametrize("name", LITE_NAMES)
def test_packaged_lite_weights_load_key_for_key(name, tmp_path, monkeypatch):
    if not _installed(name):
        pytest.skip(f"the ImageNet weights of {name} are not installed (make weights)")
    monkeypatch.setenv("CONFORMOOD_CACHE", str(tmp_path))
    path = packaged_weights(name)  # digest of the package's .pth checked against the published SHA-256
    state = read_weights(path)
    assert set(state) == set(EfficientNetLite(name).state_dict())
    backbone = get_backbone(name)
    assert backbone.input_size == (LITE[name][2],) * 2 and backbone.weights_digest.startswith("sha256:")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # a tampered cache is refused
    with pytest.raises(ValueError):
        get_backbone(name)


def test_folded_batchnorm_gives_the_same_features():
    from conformood.models.efficientnet import fold_batchnorm

    torch.manual_seed(0)
    net = EfficientNetLite("efficientnet_lite0").eval()
    for m in net.modules():  # statistics of a trained network, not the initial ones
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = x, x
        for u, v in zip(net.units(), folded.units()):
            a, b = u(a), v(b)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched

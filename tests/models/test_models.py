import pytest
import torch

from conformood.models import ProjectionHead, SmallCNN, small_contrastive_model


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_shapes(size, channels):
    model = small_contrastive_model(channels, widths=(8, 16, 24), projection_dim=12)
    x = torch.rand(4, channels, size, size)
    assert model(x).shape == (4, 12)
    feats = model.features(x, batch_size=3)
    assert feats.shape == (4, 24)
    assert model.training  # features() restores the mode


def test_features_are_deterministic_in_eval_mode():
    model = small_contrastive_model(1, widths=(4, 8, 8))
    x = torch.rand(10, 1, 8, 8)
    assert torch.equal(model.features(x), model.features(x))
    # batch composition does not change eval-mode features (BatchNorm uses running statistics)
    assert torch.allclose(model.features(x)[:3], model.features(x[:3]), atol=1e-6)


def test_model_validation():
    with pytest.raises(ValueError, match="expected images"):
        SmallCNN(3)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        SmallCNN(1)(torch.rand(2, 1, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        ProjectionHead(0)

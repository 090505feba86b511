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


def test_features_are_eval_mode_features_and_leave_the_mode_alone():
    model = small_contrastive_model(1, widths=(4, 8, 8))
    x = torch.rand(10, 1, 8, 8)
    model.train()
    model(torch.rand(16, 1, 8, 8))  # move the BatchNorm running statistics away from their initial values
    with torch.no_grad():
        train_mode = model.encoder(x)  # batch statistics
    feats = model.features(x, batch_size=4)
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(feats, model.encoder(x), atol=1e-6)  # running statistics, as in eval mode
    assert not torch.allclose(feats, train_mode, atol=1e-3)
    # batch composition does not change eval-mode features (BatchNorm uses running statistics)
    assert torch.allclose(model.features(x)[:3], model.features(x[:3]), atol=1e-6)


def test_model_validation():
    with pytest.raises(ValueError, match="expected images"):
        SmallCNN(3)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        SmallCNN(1)(torch.rand(2, 1, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        ProjectionHead(0)


def test_cifar_resnet18_shapes_and_size():
    from conformood.models import CifarResNet18

    net = CifarResNet18().eval()
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 512) and net.feature_dim == 512
    n_params = sum(p.numel() for p in net.parameters())
    assert 11.0e6 < n_params < 11.4e6  # ResNet-18 body without the fc layer: ~11.17M
    assert (
        isinstance(net.stem[0], torch.nn.Conv2d) and net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    )
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())


def test_mlp_encoder_and_heads():
    from conformood.models import (
        ClassifierHead,
        DeepProjectionHead,
        MLPEncoder,
        ShiftClassifierHead,
    )

    enc = MLPEncoder(10, (32, 16))
    h = enc(torch.rand(5, 10))
    assert h.shape == (5, 16)
    deep = DeepProjectionHead(16, hidden_dim=32, depth=8, out_dim=8)
    assert deep(h).shape == (5, 8)
    assert sum(isinstance(m, torch.nn.Linear) for m in deep.modules()) == 9
    assert ClassifierHead(16, 10)(h).shape == (5, 10)
    assert ShiftClassifierHead(16)(h).shape == (5, 4)
    with pytest.raises(ValueError, match="expected features"):
        enc(torch.rand(5, 9))

"""Parity with pytorch-metric-learning, the library people use today (dev extra)."""

import pytest
import torch

from conformood.losses import FIRMLoss, NTXentLoss, SupConLoss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def _views(seed, n=12, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_equals_pml_with_sample_id_labels(seed, t):
    z1, z2 = _views(seed)
    ids = torch.arange(z1.shape[0])
    theirs = pml_losses.NTXentLoss(temperature=t)(torch.cat([z1, z2]), torch.cat([ids, ids]))
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(theirs.item(), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_supcon_equals_pml(seed):
    z1, z2 = _views(seed)
    labels = torch.randint(0, 3, (z1.shape[0],), generator=torch.Generator().manual_seed(seed))
    theirs = pml_losses.SupConLoss(temperature=0.2)(torch.cat([z1, z2]), torch.cat([labels, labels]))
    assert SupConLoss(0.2)(z1, z2, labels).item() == pytest.approx(theirs.item(), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_firm_equals_pml_supcon_with_unique_outlier_labels(seed):
    z1, z2 = _views(seed)
    is_inlier = torch.rand(z1.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5
    labels = torch.where(is_inlier, torch.zeros(z1.shape[0], dtype=torch.long), torch.arange(1, z1.shape[0] + 1))
    theirs = pml_losses.SupConLoss(temperature=0.2)(torch.cat([z1, z2]), torch.cat([labels, labels]))
    assert FIRMLoss(0.2)(z1, z2, is_inlier).item() == pytest.approx(theirs.item(), abs=1e-9)


def test_gradients_equal_pml():
    z1, z2 = _views(5, dtype=torch.float32)
    z1.requires_grad_()
    labels = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(0))
    ours = SupConLoss(0.2)(z1, z2, labels)
    (g_ours,) = torch.autograd.grad(ours, z1)
    theirs = pml_losses.SupConLoss(temperature=0.2)(torch.cat([z1, z2]), torch.cat([labels, labels]))
    (g_theirs,) = torch.autograd.grad(theirs, z1)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)

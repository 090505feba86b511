"""soft TPR and L_COAT against the per-image loop of the paper's Algorithm 2; L_AT by hand."""

from __future__ import annotations

import pytest
import torch

from conformood.losses import ATLoss, COATLoss, soft_tpr


def _loop_loss(probs, masks, taus, alpha, T, eps):
    total = 0.0
    for i in range(probs.shape[0]):
        soft = torch.sigmoid((probs[i] - taus[i]) / T)
        tpr = torch.sum(soft * masks[i]) / (torch.sum(masks[i]) + eps)
        total = total + (tpr - (1 - alpha)) ** 2
    return total / probs.shape[0]


def test_coat_loss_matches_algorithm_2_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 9, 7, generator=g, dtype=torch.float64)
    masks = (torch.rand(6, 9, 7, generator=g) < 0.4).double()
    taus = torch.rand(6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = COATLoss(0.1, temperature=0.05)(probs, masks, taus)
    ref = _loop_loss(probs, masks, taus, 0.1, 0.05, 1e-6)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    (g1,) = torch.autograd.grad(loss, taus)
    (g2,) = torch.autograd.grad(ref, taus)
    torch.testing.assert_close(g1, g2)


def test_soft_tpr_tends_to_hard_tpr_as_temperature_vanishes():
    probs = torch.tensor([[[0.9, 0.6, 0.2, 0.1]]], dtype=torch.float64)
    masks = torch.tensor([[[1, 1, 1, 0]]], dtype=torch.float64)
    tpr = soft_tpr(probs, masks, torch.tensor([0.5], dtype=torch.float64), temperature=1e-4)
    assert float(tpr) == pytest.approx(2 / 3, abs=1e-6)


def test_at_loss_and_shape_checks():
    assert float(ATLoss()(torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.5]))) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="shape"):
        ATLoss()(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="thresholds"):
        COATLoss(0.1)(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="alpha"):
        COATLoss(1.0)

"""SupCon, InfoNCE, alignment/uniformity, OECL, CSI, CIDER and joint CE against explicit loops (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from conformood.losses import (
    AlignmentLoss,
    CIDERLoss,
    CSILoss,
    FIRMLoss,
    InfoNCELoss,
    JointContrastiveCELoss,
    NTXentLoss,
    OECLLoss,
    SupConLoss,
    UniformityLoss,
)
from conformood.losses._multipositive import (
    multi_positive_loss,
    multi_positive_loss_reference,
)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64)


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def brute_supcon(z1, z2, labels, t):
    z = [_unit(r) for r in torch.cat([z1, z2]).tolist()]
    lab = labels.tolist() * 2
    m = len(z)
    total = 0.0
    for i in range(m):
        denom = sum(math.exp(_dot(z[i], z[a]) / t) for a in range(m) if a != i)
        pos = [p for p in range(m) if p != i and lab[p] == lab[i]]
        total += -sum(_dot(z[i], z[p]) / t - math.log(denom) for p in pos) / len(pos)
    return total / m


@pytest.mark.parametrize("seed", range(3))
def test_supcon_matches_loop(seed):
    z1, z2 = _rand(10, 4, seed=seed), _rand(10, 4, seed=seed + 10)
    labels = torch.randint(0, 3, (10,), generator=_g(seed))
    assert SupConLoss(0.3)(z1, z2, labels).item() == pytest.approx(brute_supcon(z1, z2, labels, 0.3), abs=1e-9)


def test_supcon_arbitrary_label_values_and_special_cases():
    z1, z2 = _rand(6, 3, seed=1), _rand(6, 3, seed=2)
    labels = torch.tensor([7, -2, 7, 100, -2, 5])
    assert SupConLoss(0.5)(z1, z2, labels).item() == pytest.approx(brute_supcon(z1, z2, labels, 0.5), abs=1e-9)
    ids = torch.arange(6)
    assert SupConLoss(0.5)(z1, z2, ids).item() == pytest.approx(NTXentLoss(0.5)(z1, z2).item(), abs=1e-12)
    flags = torch.tensor([True, False, True, True, False, False])
    firm_labels = torch.where(flags, torch.zeros(6, dtype=torch.long), torch.arange(1, 7))
    assert SupConLoss(0.5)(z1, z2, firm_labels).item() == pytest.approx(FIRMLoss(0.5)(z1, z2, flags).item(), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [0.05, 0.2, 1.0, 0.01])
def test_fast_path_equals_reference_loss_and_gradient(dtype, t):
    z = F.normalize(torch.randn(40, 8, generator=_g(3), dtype=dtype), dim=1).requires_grad_()
    labels = torch.cat([torch.randint(0, 5, (20,), generator=_g(4))] * 2)
    fast = multi_positive_loss(z, labels, t)
    (g_fast,) = torch.autograd.grad(fast, z)
    ref = multi_positive_loss_reference(z, labels, t)
    (g_ref,) = torch.autograd.grad(ref, z)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert fast.item() == pytest.approx(ref.item(), rel=tol, abs=tol)
    assert torch.allclose(g_fast, g_ref, atol=tol, rtol=1e-4)


def test_fast_path_gradcheck():
    z = F.normalize(_rand(12, 5), dim=1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 2, 2, 3] * 2)
    assert torch.autograd.gradcheck(lambda x: multi_positive_loss(x, labels, 0.2), (z,))


def test_anchor_without_positive_raises():
    z = F.normalize(_rand(4, 3), dim=1)
    with pytest.raises(ValueError, match="at least one positive"):
        multi_positive_loss(z, torch.tensor([0, 1, 2, 2]), 0.2)


def brute_infonce(a, p, negs, t):
    total = 0.0
    for i in range(a.shape[0]):
        ai = _unit(a[i].tolist())
        num = math.exp(_dot(ai, _unit(p[i].tolist())) / t)
        rows = negs[i] if negs.ndim == 3 else negs
        den = num + sum(math.exp(_dot(ai, _unit(r.tolist())) / t) for r in rows)
        total += -math.log(num / den)
    return total / a.shape[0]


@pytest.mark.parametrize("shared", [False, True])
def test_infonce_matches_loop(shared):
    a, p = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    negs = _rand(7, 4, seed=3) if shared else _rand(5, 7, 4, seed=3)
    assert InfoNCELoss(0.1)(a, p, negs).item() == pytest.approx(brute_infonce(a, p, negs, 0.1), abs=1e-9)


def test_infonce_validation():
    a = _rand(3, 4)
    with pytest.raises(ValueError, match="negatives must have shape"):
        InfoNCELoss()(a, a, _rand(2, 7, 4))
    with pytest.raises(ValueError, match="negatives must have shape"):
        InfoNCELoss()(a, a, _rand(7, 5))
    with pytest.raises(ValueError, match="one shape"):
        InfoNCELoss()(a, _rand(2, 4), _rand(7, 4))


def test_alignment_and_uniformity_match_loops():
    z1, z2 = _rand(6, 3, seed=1), _rand(6, 3, seed=2)
    u1 = [_unit(r) for r in z1.tolist()]
    u2 = [_unit(r) for r in z2.tolist()]
    align = sum(sum((x - y) ** 2 for x, y in zip(a, b)) for a, b in zip(u1, u2)) / 6
    assert AlignmentLoss()(z1, z2).item() == pytest.approx(align, abs=1e-12)
    for t in (1.0, 2.0):
        pairs = [
            math.exp(-t * sum((x - y) ** 2 for x, y in zip(u1[i], u1[j]))) for i in range(6) for j in range(i + 1, 6)
        ]
        assert UniformityLoss(t)(z1).item() == pytest.approx(math.log(sum(pairs) / len(pairs)), abs=1e-12)


def test_oecl_adds_alpha_times_mean_raw_norm_after_warmup():
    z1, z2 = _rand(6, 4, seed=1), _rand(6, 4, seed=2)
    oe = _rand(5, 4, seed=3) * 3.0
    loss = OECLLoss(temperature=0.5, norm_weight=0.7, warmup_epochs=2)
    base = NTXentLoss(0.5)(z1, z2).item()
    assert loss(z1, z2, oe).item() == pytest.approx(base, abs=1e-12)  # warm-up: alpha = 0
    loss.set_epoch(2)
    norms = sum(math.sqrt(sum(x * x for x in r)) for r in oe.tolist()) / 5
    assert loss(z1, z2, oe).item() == pytest.approx(base + 0.7 * norms, abs=1e-9)
    # the penalty pulls outlier-exposure features towards the origin
    oe.requires_grad_()
    loss(z1, z2, oe).backward()
    assert torch.all((oe.grad * oe).sum(1) > 0)
    with pytest.raises(ValueError, match="oe_raw"):
        loss(z1, z2, torch.full((2, 4), float("nan")))


def test_csi_is_ntxent_plus_shift_cross_entropy():
    z1, z2 = _rand(8, 4, seed=1), _rand(8, 4, seed=2)
    logits = _rand(16, 4, seed=3)
    shifts = torch.tensor([0, 1, 2, 3] * 2)
    ce = 0.0
    for row, y in zip(logits.tolist(), shifts.tolist() * 2):
        ce += -(row[y] - math.log(sum(math.exp(v) for v in row)))
    expected = brute_supcon(z1, z2, torch.arange(8), 0.5) + 0.5 * ce / 16
    assert CSILoss(0.5, shift_weight=0.5)(z1, z2, logits, shifts).item() == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="shift_labels must lie"):
        CSILoss()(z1, z2, logits, torch.full((8,), 4))


def test_joint_contrastive_ce_with_label_smoothing():
    z1, z2 = _rand(6, 4, seed=1), _rand(6, 4, seed=2)
    logits = _rand(6, 3, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    ce = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        ce += -((1 - eps) * logp[y] + eps * sum(logp) / 3)
    expected = brute_supcon(z1, z2, torch.arange(6), 0.5) + 10.0 * ce / 6
    loss = JointContrastiveCELoss(0.5, weight=10.0, label_smoothing=eps)
    assert loss(z1, z2, logits, labels).item() == pytest.approx(expected, abs=1e-9)
    both = torch.cat([logits, logits])
    assert loss(z1, z2, both, labels).item() == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="label_smoothing"):
        JointContrastiveCELoss(label_smoothing=1.0)


def brute_cider(z, labels, protos, t, tb, m):
    protos = [list(p) for p in protos.tolist()]
    zs = [_unit(r) for r in z.tolist()]
    for j, y in enumerate(labels.tolist()):
        protos[y] = _unit([m * a + (1 - m) * b for a, b in zip(protos[y], zs[j])])
    c = len(protos)
    dis = 0.0
    for i in range(c):
        dis += math.log(sum(math.exp(_dot(protos[i], protos[k]) / t) for k in range(c) if k != i) / (c - 1))
    dis = (t / tb) * dis / c
    comp = 0.0
    for j, y in enumerate(labels.tolist()):
        den = sum(math.exp(_dot(zs[j], p) / t) for p in protos)
        comp += -math.log(math.exp(_dot(zs[j], protos[y]) / t) / den)
    comp = (t / tb) * comp / len(zs)
    return dis + comp, protos


def test_cider_matches_loop_and_updates_prototypes():
    loss = CIDERLoss(n_classes=3, dim=4, temperature=0.2, base_temperature=0.1, momentum=0.6).double()
    loss.prototypes.copy_(F.normalize(_rand(3, 4, seed=9), dim=1))
    loss.initialised.fill_(True)
    z = _rand(7, 4, seed=1)
    labels = torch.tensor([0, 1, 2, 0, 0, 2, 1])
    expected, protos = brute_cider(z, labels, loss.prototypes.clone(), 0.2, 0.1, 0.6)
    assert loss(z, labels).item() == pytest.approx(expected, abs=1e-9)
    assert torch.allclose(loss.prototypes, torch.tensor(protos, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="labels must lie"):
        loss(z, torch.full((7,), 3))


def test_cider_first_call_initialises_prototypes_from_class_means():
    loss = CIDERLoss(n_classes=2, dim=3).double()
    z = _rand(6, 3, seed=2, )
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    value = loss(z, labels)
    assert torch.isfinite(value)
    assert torch.allclose(loss.prototypes.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_alpha_names_only_an_error_level():
    """``alpha=`` was also the OECL weight and the alignment exponent; it is removed from both."""
    with pytest.raises(TypeError, match="'alpha'"):
        OECLLoss(alpha=0.3)
    with pytest.raises(TypeError, match="'alpha'"):
        AlignmentLoss(alpha=3.0)
    assert OECLLoss(norm_weight=0.3).norm_weight == 0.3 and AlignmentLoss(exponent=3.0).exponent == 3.0

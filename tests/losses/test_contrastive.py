"""NT-Xent and FIRM against explicit per-anchor loops (FIRM paper eq. 1-2)."""

import math

import pytest
import torch

from conformood.losses import FIRMLoss, NTXentLoss, firm_positive_mask


def _stack(z1, z2):
    z = torch.cat([z1, z2])
    return z / z.norm(dim=1, keepdim=True)


def brute_ntxent(z1, z2, t):
    z = _stack(z1, z2)
    m = z.shape[0]
    n = m // 2
    total = 0.0
    for i in range(m):
        pos = (i + n) % m
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(m) if a != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    return total / m


def brute_firm(z1, z2, is_inlier, t):
    z = _stack(z1, z2)
    m = z.shape[0]
    n = m // 2
    flags = list(is_inlier.tolist()) * 2
    total = 0.0
    for i in range(m):
        if flags[i]:
            positives = [p for p in range(m) if p != i and flags[p]]
        else:
            positives = [(i + n) % m]
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(m) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in positives) / len(positives)
    return total / m


def brute_supcon_single_label(z1, z2, t):
    z = _stack(z1, z2)
    m = z.shape[0]
    total = 0.0
    for i in range(m):
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(m) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in range(m) if p != i) / (m - 1)
    return total / m


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_ntxent_matches_brute_force(seed, t):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(brute_ntxent(z1, z2, t), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_firm_matches_brute_force(seed, t):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, 6, generator=g, dtype=torch.float64)
    is_inlier = torch.rand(9, generator=g) < 0.5
    is_inlier[0], is_inlier[1] = True, False
    assert FIRMLoss(t)(z1, z2, is_inlier).item() == pytest.approx(brute_firm(z1, z2, is_inlier, t), abs=1e-9)


def test_firm_float32_within_1e5_of_float64_loop():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    is_inlier = torch.arange(16) % 3 == 0
    expected = brute_firm(z1.double(), z2.double(), is_inlier, 0.2)
    assert FIRMLoss(0.2)(z1, z2, is_inlier).item() == pytest.approx(expected, abs=1e-5)


def test_firm_reduces_to_ntxent_without_inliers_and_to_supcon_with_only_inliers():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    none = torch.zeros(6, dtype=torch.bool)
    assert FIRMLoss(0.3)(z1, z2, none).item() == pytest.approx(NTXentLoss(0.3)(z1, z2).item(), abs=1e-12)
    assert FIRMLoss(0.3)(z1, z2, ~none).item() == pytest.approx(brute_supcon_single_label(z1, z2, 0.3), abs=1e-9)


def test_positive_mask_definition():
    mask = firm_positive_mask(torch.tensor([True, False, True]))
    # views: 0,1,2 then 3,4,5 ; inliers are 0,2,3,5
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 0, 1],
            [0, 0, 0, 0, 1, 0],
            [1, 0, 0, 1, 0, 1],
            [1, 0, 1, 0, 0, 1],
            [0, 1, 0, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_losses_are_scale_invariant_and_differentiable():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    flags = torch.tensor([True, True, False, True, False])
    loss = FIRMLoss(0.2)
    assert loss(z1 * 7.0, z2 * 0.1, flags).item() == pytest.approx(loss(z1, z2, flags).item(), abs=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, flags), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: NTXentLoss(0.5)(a, b), (z1, z2))


def test_perfect_alignment_lowers_the_loss():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 16, generator=g)
    assert NTXentLoss(0.1)(z, z).item() < NTXentLoss(0.1)(z, torch.randn(8, 16, generator=g)).item()


@pytest.mark.parametrize(
    ("z1", "z2", "match"),
    [
        (torch.randn(4, 3), torch.randn(5, 3), "same shape"),
        (torch.randn(4), torch.randn(4), "shape \\(n, d\\)"),
        (torch.randn(1, 3), torch.randn(1, 3), "n >= 2"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2), "NaN or infinite"),
        (torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long), "floating-point"),
    ],
)
def test_invalid_views_raise(z1, z2, match):
    with pytest.raises(ValueError, match=match):
        NTXentLoss()(z1, z2)
    with pytest.raises(ValueError, match=match):
        FIRMLoss()(z1, z2, torch.ones(z1.shape[0] if z1.ndim else 1, dtype=torch.bool))


def test_firm_flag_validation():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="bool tensor"):
        FIRMLoss()(z, z, torch.ones(4))
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        FIRMLoss()(z, z, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("t", [0.0, -1.0, float("inf")])
def test_temperature_validated(t):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(t)
    with pytest.raises(ValueError, match="temperature"):
        FIRMLoss(t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_losses_match_float32_even_beyond_the_float16_range(dtype):
    """Issue 15 item 9: rows with a norm above 65,504 overflowed float16 to inf and normalised to zero; the
    losses now normalise in float32 inside. UniformityLoss used to fail on half and bfloat16."""
    from conformood.losses import AlignmentLoss, CIDERLoss, InfoNCELoss, OECLLoss, SupConLoss, UniformityLoss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    scale = 3e4  # each entry representable in float16, the norm of a row is not
    big1, big2 = (z1 / z1.abs().amax() * scale), (z2 / z2.abs().amax() * scale)
    labels = torch.arange(8) % 3
    cases = [
        (NTXentLoss(0.2), (big1, big2)),
        (SupConLoss(0.2), (big1, big2, labels)),
        (AlignmentLoss(), (big1, big2)),
        (UniformityLoss(), (big1,)),
        (InfoNCELoss(0.1), (big1, big2, big2.flip(0))),
        (CIDERLoss(3, 4), (big1, labels)),
    ]
    for loss, args in cases:
        low = loss(*(a.to(dtype) if a.is_floating_point() else a for a in args))
        if isinstance(loss, CIDERLoss):  # a fresh instance: the first call initialised the prototypes
            loss = CIDERLoss(3, 4)
        ref = loss(*(a.to(dtype).float() if a.is_floating_point() else a for a in args))
        assert torch.isfinite(low) and abs(low.item() - ref.item()) < 1e-4, type(loss).__name__
    penalty = OECLLoss().norm_penalty(big1.to(dtype))
    expected = big1.to(dtype).float().norm(dim=1).mean()
    assert torch.isfinite(penalty) and abs(penalty.item() / expected.item() - 1) < 1e-6

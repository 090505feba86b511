"""PatchCore: the greedy coreset against a brute-force greedy, nearest distances against brute force (faiss and
torch), the image score against the paper's formula computed by hand, anomaly maps that find the defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conformood.scores import PatchCoreDetector, get_detector, greedy_coreset
from conformood.scores.patchcore import gaussian_blur, nearest_distances

RNG = np.random.default_rng(0)


def _brute_greedy(x, n, start):
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    chosen = [start]
    for _ in range(n - 1):
        chosen.append(int(d[:, chosen].min(axis=1).argmax()))
    return np.array(chosen)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_coreset_equals_a_brute_force_greedy(seed):
    x = np.random.default_rng(seed).normal(size=(300, 5)).astype(np.float32)
    got = greedy_coreset(x, 40, projection_dim=None, seed=seed)
    np.testing.assert_array_equal(got, _brute_greedy(x.astype(np.float64), 40, int(got[0])))
    assert len(set(got.tolist())) == 40


def test_the_projected_coreset_covers_almost_as_well():
    x = RNG.normal(size=(2000, 256)).astype(np.float32)
    exact = greedy_coreset(x, 100, projection_dim=None)
    projected = greedy_coreset(x, 100, projection_dim=128)

    def radius(idx):
        return nearest_distances(x, x[idx], 1)[0].max()

    assert len(set(projected.tolist())) == 100 and radius(projected) <= 1.25 * radius(exact)
    with pytest.raises(ValueError, match="exceeds"):
        greedy_coreset(x[:5], 6)
    with pytest.raises(ValueError, match="NaN"):
        greedy_coreset(np.full((5, 2), np.nan), 2)


@pytest.mark.parametrize("use_faiss", [True, False])
def test_nearest_distances_equal_brute_force(use_faiss, monkeypatch):
    from conformood.scores import knn

    if use_faiss and not knn._faiss_available():
        pytest.skip("faiss is not installed")
    if not use_faiss:
        monkeypatch.setattr(knn, "_faiss_available", lambda: False)
        monkeypatch.setattr("conformood.scores.patchcore._BANK_CHUNK", 37)  # several bank chunks
    q, b = RNG.normal(size=(50, 8)), RNG.normal(size=(300, 8))
    dist, ids = nearest_distances(q, b, 3)
    full = np.linalg.norm(q[:, None] - b[None], axis=2)
    np.testing.assert_array_equal(ids, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :3], rtol=1e-4, atol=1e-4)


def test_the_image_score_is_the_papers_reweighted_worst_patch(monkeypatch):
    monkeypatch.setattr("conformood.scores.patchcore._IMAGES_PER_CHUNK", 4)  # 6 test images: two chunks
    train = RNG.normal(size=(30, 16, 4)).astype(np.float32)
    test = RNG.normal(size=(6, 16, 4)).astype(np.float32) * 1.5
    det = PatchCoreDetector(coreset_fraction=0.25, reweight_neighbors=3).fit(train)
    bank = det.memory_bank_.astype(np.float64)
    assert bank.shape == (120, 4)
    for image, score in zip(test.astype(np.float64), det.image_scores(test)):
        d = np.linalg.norm(image[:, None] - bank[None], axis=2)
        worst = d.min(axis=1).argmax()
        m_star = d[worst].argmin()
        s_star = d[worst, m_star]
        support = np.argsort(np.linalg.norm(bank - bank[m_star], axis=1))[:3]
        expected = (1 - np.exp(s_star) / np.exp(np.linalg.norm(image[worst] - bank[support], axis=1)).sum()) * s_star
        assert score == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(det.score_samples(test), -det.image_scores(test))
    full = PatchCoreDetector(coreset_fraction=1.0).fit(train)
    assert full.memory_bank_.shape == (480, 4)


def test_the_anomaly_map_finds_the_defect_and_the_score_ranks_it(monkeypatch):
    monkeypatch.setattr("conformood.scores.patchcore._MAPS_PER_CHUNK", 3)  # 10 maps: several chunks
    normal = RNG.normal(size=(40, 64, 8)).astype(np.float32)
    det = get_detector("patchcore", coreset_fraction=0.2).fit(normal)
    good = RNG.normal(size=(10, 64, 8)).astype(np.float32)
    bad = RNG.normal(size=(10, 64, 8)).astype(np.float32)
    bad[:, 8 * 2 + 5] += 6.0  # one patch at row 2, column 5 of the 8 x 8 grid
    assert (det.score_samples(bad).max() < det.score_samples(good).min())
    maps = det.anomaly_maps(bad, grid=(8, 8), size=(64, 64))
    assert maps.shape == (10, 64, 64)
    for m in maps:
        row, col = np.unravel_index(m.argmax(), m.shape)
        assert abs(row - 2.5 * 8) <= 8 and abs(col - 5.5 * 8) <= 8
    with pytest.raises(ValueError, match="grid"):
        det.anomaly_maps(bad, grid=(4, 4), size=(64, 64))


def test_gaussian_blur_keeps_mass_and_constants():
    flat = torch.full((1, 1, 5, 7), 2.0, dtype=torch.float64)
    np.testing.assert_allclose(gaussian_blur(flat, 4.0).numpy(), 2.0)  # a map smaller than the kernel, too
    spike = torch.zeros((1, 1, 41, 41), dtype=torch.float64)
    spike[0, 0, 20, 20] = 1.0
    blurred = gaussian_blur(spike, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6) and blurred[0, 0, 20, 20] < 0.05


@pytest.mark.parametrize("options, name", [({"coreset_fraction": 0}, "coreset_fraction"),
                                           ({"coreset_fraction": 1.5}, "coreset_fraction"),
                                           ({"reweight_neighbors": 0}, "reweight_neighbors"),
                                           ({"projection_dim": -1}, "projection_dim"),
                                           ({"seed": -1}, "seed")])
def test_parameters_are_checked(options, name):
    with pytest.raises(ValueError, match=name):
        PatchCoreDetector(**options)


def test_patchcore_features_of_two_stages():
    from conformood.models import extract_features, get_backbone

    b = get_backbone("mobilenet_v2", weights=None, input_size=64, patch_stages=(7, 14), patch_dim=32)
    f = extract_features(b, RNG.random((2, 3, 64, 64)).astype(np.float32), progress=False)
    assert f.shape == (2, 64, 32) and b.preprocessing()["patches"] == {"stages": [7, 14], "window": 3, "dim": 32,
                                                                       "padding": "counted"}
    for bad in ((14, 7), (0, 3), (7,), (7, 40)):
        with pytest.raises(ValueError, match="patch_stages"):
            get_backbone("mobilenet_v2", weights=None, patch_stages=bad)
    with pytest.raises(ValueError, match="one of"):
        get_backbone("mobilenet_v2", weights=None, patch_stages=(7, 14), patches_after=3)


def test_border_rings_are_left_out_of_the_image_score_only():
    normal = RNG.normal(size=(40, 64, 8)).astype(np.float32)
    det = PatchCoreDetector(coreset_fraction=0.2, border=1).fit(normal)
    edge, inner = RNG.normal(size=(2, 64, 8)).astype(np.float32), RNG.normal(size=(2, 64, 8)).astype(np.float32)
    edge[:, 0] += 8.0  # position (0, 0): the outer ring
    inner[:, 8 * 3 + 4] += 8.0  # position (3, 4): inside
    plain = PatchCoreDetector(coreset_fraction=0.2).fit(normal)
    assert det.score_samples(edge).min() > det.score_samples(inner).max()  # the edge defect is not counted
    assert plain.score_samples(edge).max() < -1.0  # without a border it is
    np.testing.assert_array_equal(det.patch_scores(edge), plain.patch_scores(edge))  # maps keep every position
    with pytest.raises(ValueError, match="square"):
        PatchCoreDetector(border=1).fit(normal[:, :60]).score_samples(normal[:2, :60])
    with pytest.raises(ValueError, match="border"):
        PatchCoreDetector(border=-1)


def test_stage_features_side_by_side_count_the_zero_padding():
    """patch_dim=None: the two stages' channels side by side (32 + 96); each position the mean of its 3 x 3
    neighbourhood with the zero padding counted (a corner: its 4 real neighbours over 9), as the paper's
    unfolded patches and anomalib's AvgPool2d(3, 1, 1)."""
    import torch

    from conformood.models import get_backbone

    b = get_backbone("mobilenet_v2", weights=None, input_size=64, patch_stages=(7, 14), patch_dim=None)
    x = b.preprocess(torch.from_numpy(RNG.random((1, 3, 64, 64)).astype(np.float32)))
    with torch.no_grad():
        f = b.module(x)
        h = x
        for unit in b.module.net.units()[:7]:
            h = unit(h)
    assert b.feature_dim == 128 and tuple(f.shape) == (1, 64, 128)
    corner = h[0, :, :2, :2].sum(dim=(1, 2)) / 9.0
    middle = h[0, :, 2:5, 2:5].mean(dim=(1, 2))
    np.testing.assert_allclose(f[0, 0, :32].numpy(), corner.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[0, 3 * 8 + 3, :32].numpy(), middle.numpy(), rtol=1e-5, atol=1e-6)


def test_scores_and_maps_from_one_search_equal_the_separate_ones():
    det = PatchCoreDetector(coreset_fraction=0.5, border=1).fit(RNG.normal(size=(6, 16, 5)))
    x = RNG.normal(size=(3, 16, 5))
    scores, maps = det.scores_and_maps(x, (4, 4), (12, 12))
    np.testing.assert_allclose(scores, det.image_scores(x))
    np.testing.assert_allclose(maps, det.anomaly_maps(x, (4, 4), (12, 12)), rtol=1e-6)

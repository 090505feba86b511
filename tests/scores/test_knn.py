import numpy as np
import pytest
import torch
from sklearn.base import clone

from conformood.scores import KNNCosineDetector
from conformood.scores.knn import topk_inner_products_faiss, topk_inner_products_torch


def brute_s_con(train, test, k):
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = b @ a.T
    return np.sort(sims, axis=1)[:, ::-1][:, :k].mean(axis=1)


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 16)), rng.normal(size=(50, 16))


@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_s_con_matches_numpy_formula(features, k, backend):
    train, test = features
    scores = KNNCosineDetector(n_neighbors=k, backend=backend).fit(train).score_samples(test)
    tol = 1e-12 if backend == "torch" else 1e-5
    np.testing.assert_allclose(scores, brute_s_con(train, test, k), atol=tol)


def test_chunked_torch_equals_faiss_on_a_larger_bank():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(5000, 32)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    q = rng.normal(size=(700, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    a = topk_inner_products_torch(q, bank, 7, query_chunk=64, bank_chunk=333)
    b = topk_inner_products_faiss(q, bank, 7, query_chunk=100)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_s_con_invariant_to_feature_scaling(features):
    train, test = features
    base = KNNCosineDetector(n_neighbors=3, backend="torch").fit(train).score_samples(test)
    scaled = KNNCosineDetector(n_neighbors=3, backend="torch").fit(train * 13.0).score_samples(test * 0.01)
    np.testing.assert_allclose(base, scaled, atol=1e-12)


def test_higher_score_for_in_distribution():
    rng = np.random.default_rng(3)
    center = np.ones(8)
    train = center + 0.1 * rng.normal(size=(100, 8))
    inl = center + 0.1 * rng.normal(size=(20, 8))
    out = -center + 0.1 * rng.normal(size=(20, 8))
    det = KNNCosineDetector(n_neighbors=5).fit(train)
    assert det.score_samples(inl).min() > det.score_samples(out).max()


def test_clone_and_params(features):
    det = KNNCosineDetector(n_neighbors=4, backend="torch")
    twin = clone(det)
    assert twin.get_params() == det.get_params()
    assert not hasattr(twin, "bank_")
    train, test = features
    np.testing.assert_allclose(twin.fit(train).score_samples(test), det.fit(train).score_samples(test))


def test_accepts_torch_tensors(features):
    train, test = features
    a = KNNCosineDetector(n_neighbors=2).fit(torch.from_numpy(train)).score_samples(torch.from_numpy(test))
    b = KNNCosineDetector(n_neighbors=2).fit(train).score_samples(test)
    np.testing.assert_allclose(a, b)


def test_save_load_roundtrip(tmp_path, features):
    train, test = features
    det = KNNCosineDetector(n_neighbors=3).fit(train)
    det.save(tmp_path / "knn.safetensors")
    loaded = KNNCosineDetector.load(tmp_path / "knn.safetensors")
    assert loaded.get_params() == det.get_params()
    np.testing.assert_allclose(loaded.score_samples(test), det.score_samples(test))


def test_validation(features):
    train, test = features
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        KNNCosineDetector().score_samples(test)
    det = KNNCosineDetector(n_neighbors=3).fit(train)
    with pytest.raises(ValueError, match="16"):
        det.score_samples(test[:, :5])
    bad = test.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        det.score_samples(bad)
    with pytest.raises(ValueError, match="2-D"):
        det.score_samples(test[0])
    with pytest.raises(ValueError, match="only 2 training"):
        KNNCosineDetector(n_neighbors=3).fit(train[:2])
    with pytest.raises(ValueError, match="n_neighbors must be"):
        KNNCosineDetector(n_neighbors=0).fit(train)
    with pytest.raises(ValueError, match="backend"):
        KNNCosineDetector(backend="gpu").fit(train)
    zero = test.copy()
    zero[0] = 0.0
    with pytest.raises(ValueError, match="all zero"):
        det.score_samples(zero)


def test_the_former_name_k_is_gone_and_files_that_stored_it_still_load(tmp_path):
    """``k`` meant three things (n_neighbors, n_samples, pairs_per_anchor); it is removed. A file of conformood
    0.3 stores ``"k": null`` (or a value, which was the neighbour count) among the parameters and still loads."""
    from conformood.scores import get_detector

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    with pytest.raises(TypeError, match="'k'"):
        KNNCosineDetector(k=3)
    with pytest.raises(ValueError, match="no option"):
        get_detector("knn_cosine", k=3)
    from conformood.io import load_artefact

    KNNCosineDetector(n_neighbors=3).fit(train).save(tmp_path / "d.safetensors")
    _, tensors, config = load_artefact(tmp_path / "d.safetensors")
    for stored, expected in ((None, 3), (2, 2)):
        old = {**config, "params": {**config["params"], "k": stored}}
        again = KNNCosineDetector._from_state(tensors, old, "a 0.3 file")
        assert again.n_neighbors == expected
        np.testing.assert_array_equal(again.score_samples(test),
                                      KNNCosineDetector(n_neighbors=expected).fit(train).score_samples(test))

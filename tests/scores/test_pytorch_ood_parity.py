"""Same ranking as pytorch-ood (a test oracle; it imports here once torchvision is stubbed out).

pytorch-ood returns outlier scores (higher = more anomalous); ours are normality scores, so each pair must
give AUROC(ours) == AUROC(-theirs) to 1e-9 on the same features and logits.
"""

import importlib.abc
import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conformood.scores import get_detector


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """pytorch-ood imports torchvision at module level, though none of the detectors tested here use it."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@pytest.fixture(scope="module")
def pood():
    real_torchvision = "torchvision" in sys.modules
    finder = None
    if not real_torchvision:
        finder = _TorchvisionStub()
        sys.meta_path.insert(0, finder)
    try:
        detector = pytest.importorskip("pytorch_ood.detector")
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
    return detector


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 16)) * 2.5
    y = np.repeat(np.arange(4), 60)
    x = (means[y] + rng.normal(size=(240, 16))).astype(np.float32)
    q_in = means[rng.integers(0, 4, 80)] + rng.normal(size=(80, 16))
    q_out = rng.normal(size=(80, 16)) * 2.0 + rng.normal(size=16)
    q = np.r_[q_in, q_out].astype(np.float32)
    truth = np.r_[np.ones(80, bool), np.zeros(80, bool)]
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(4)[y] * 8 - 4, rcond=None)[0]
    weight, bias = w[:-1].T.astype(np.float32), w[-1].astype(np.float32)
    return x, y, q, truth, weight, bias


def _auroc_pair(ours, theirs, truth):
    return roc_auc_score(truth, ours), roc_auc_score(truth, -np.asarray(theirs, dtype=np.float64))


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def test_mahalanobis(pood, problem):
    x, y, q, truth, *_ = problem
    theirs = pood.Mahalanobis(None).fit_features(_t(x), torch.as_tensor(y)).predict_features(_t(q)).numpy()
    a, b = _auroc_pair(get_detector("mahalanobis").fit(x, y).score_samples(q), theirs, truth)
    assert a == pytest.approx(b, abs=1e-9)


def test_knn(pood, problem):
    x, _, q, truth, *_ = problem
    theirs = (
        pood.KNN(None, k=10).fit_features(_t(x), torch.zeros(len(x), dtype=torch.long)).predict_features(_t(q)).numpy()
    )
    a, b = _auroc_pair(get_detector("knn_sun", n_neighbors=10, backend="torch").fit(x).score_samples(q), theirs, truth)
    assert a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize(("name", "cls"), [("energy", "EnergyBased"), ("msp", "MaxSoftmax"), ("maxlogit", "MaxLogit")])
def test_logit_scores(pood, problem, name, cls):
    _, _, q, truth, weight, bias = problem
    logits = q @ weight.T + bias
    theirs = getattr(pood, cls)(None).predict_logits(_t(logits)).numpy()
    a, b = _auroc_pair(get_detector(name).fit(logits).score_samples(logits), theirs, truth)
    assert a == pytest.approx(b, abs=1e-9)


def test_vim(pood, problem):
    x, _, q, truth, weight, bias = problem
    theirs = pood.ViM(None, d=8, w=_t(weight), b=_t(bias)).fit_features(_t(x), None).predict_features(_t(q)).numpy()
    ours = get_detector("vim", weight=weight, bias=bias, dim=8).fit(x).score_samples(q)
    a, b = _auroc_pair(ours, theirs, truth)
    assert a == pytest.approx(b, abs=1e-9)

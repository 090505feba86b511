import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from conformood.metrics import (
    aupr_in,
    aupr_out,
    auroc,
    detection_accuracy,
    flagged_rate,
    fpr_at_95_tpr,
    fpr_at_tpr,
    ood_metrics,
)


def _problem(seed, ties=False, n_in=150, n_out=230):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(1.0, 1.0, n_in), rng.normal(0.0, 1.0, n_out)]
    if ties:
        s = np.round(s, 1)
    y = np.r_[np.ones(n_in, bool), np.zeros(n_out, bool)]
    perm = rng.permutation(s.size)
    return s[perm], y[perm]


def _sk_fpr_at_tpr(s, y, level):
    fpr, tpr, _ = roc_curve(y, s)
    return fpr[np.searchsorted(tpr, level, side="left")]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_scikit_learn(seed, ties):
    s, y = _problem(seed, ties)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr_in(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_out(s, y) == pytest.approx(average_precision_score(~y, -s), abs=1e-12)
    assert fpr_at_95_tpr(s, y) == pytest.approx(_sk_fpr_at_tpr(s, y, 0.95), abs=1e-12)
    assert fpr_at_tpr(s, y, 0.8) == pytest.approx(_sk_fpr_at_tpr(s, y, 0.8), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_detection_accuracy_brute_force(seed):
    s, y = _problem(seed, ties=True, n_in=40, n_out=60)
    best = 0.0
    for t in np.r_[np.unique(s), np.inf]:
        accept = s >= t
        best = max(best, 0.5 * (accept[y].mean() + (~accept[~y]).mean()))
    assert detection_accuracy(s, y) == pytest.approx(best, abs=1e-12)


def test_fpr95_is_fraction_of_ood_accepted_at_95_percent_inliers():
    # 20 inliers with scores 1..20, 10 OOD with scores 0.5, 2.5, ..., 18.5
    s = np.r_[np.arange(1.0, 21.0), np.arange(0.5, 20.0, 2.0)]
    y = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    # accepting 95 % of inliers = 19 of 20 needs threshold 2.0, which accepts OOD scores >= 2: 9 of 10
    assert fpr_at_95_tpr(s, y) == pytest.approx(0.9)


def test_perfect_and_reversed_scores():
    y = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    s = np.r_[np.arange(5.0) + 10, np.arange(5.0)]
    m = ood_metrics(s, y)
    assert (m.auroc, m.aupr_in, m.aupr_out, m.fpr95, m.detection_accuracy) == (1.0, 1.0, 1.0, 0.0, 1.0)
    assert auroc(-s, y) == 0.0


def test_ood_metrics_keys():
    s, y = _problem(0)
    assert set(ood_metrics(s, y).to_dict()) == {"auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy"}


@pytest.mark.parametrize(
    ("s", "y", "match"),
    [
        ([0.1, 0.2], [1, 1], "both in-distribution and OOD"),
        ([0.1, np.nan], [1, 0], "NaN"),
        ([0.1, 0.2, 0.3], [1, 0], "shape"),
        ([0.1, 0.2], [1, 2], "only 0 and 1"),
        (np.ones((2, 2)), [1, 0], "1-D"),
    ],
)
def test_metric_inputs_validated(s, y, match):
    with pytest.raises(ValueError, match=match):
        auroc(s, y)


def test_flagged_rate():
    assert flagged_rate([1.0, 2.0, 3.0, 4.0], 3.0) == 0.5
    assert flagged_rate([1.0, 2.0], -np.inf) == 0.0

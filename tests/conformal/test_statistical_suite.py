"""The long statistical suite (slow; `make test-slow`): guarantees over >= 500 random splits.

Tolerances: each mean over R = 500 splits has a standard error below sqrt(alpha (1 - alpha) / (R m)) +
the split-to-split spread; 0.01 is > 4 standard errors for every case here.
"""

import json
import os

import numpy as np
import pytest
from scipy import stats

from conformood.conformal import ConformalDetector


class _Identity:
    def fit(self, features, labels=None):
        return self

    def score_samples(self, features):
        return np.asarray(features, dtype=float)[:, 0]


R = 500


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_marginal_and_mondrian_fpr_and_fdr(alpha):
    rng = np.random.default_rng(int(alpha * 1000))
    out = {"marginal_fpr": [], "mondrian_fpr": [], "fdr": [], "power": []}
    for _ in range(R):
        c_cal = rng.integers(0, 3, 300)
        s_cal = rng.standard_t(4, size=300) - c_cal
        c_test = rng.integers(0, 3, 200)
        s_in = rng.standard_t(4, size=200) - c_test
        s_out = rng.standard_t(4, size=20) - 6.0
        marg = ConformalDetector(_Identity()).calibrate_scores(s_cal)
        mond = ConformalDetector(_Identity(), mondrian=True).calibrate_scores(s_cal, c_cal)
        out["marginal_fpr"].append(np.mean(marg.p_values_from_scores(s_in) <= alpha))
        out["mondrian_fpr"].append(
            [np.mean(mond.p_values_from_scores(s_in[c_test == k], c_test[c_test == k]) <= alpha) for k in range(3)]
        )
        from conformood.conformal import benjamini_hochberg

        flagged = benjamini_hochberg(marg.p_values_from_scores(np.r_[s_in, s_out]), alpha)
        out["fdr"].append(flagged[:200].sum() / max(flagged.sum(), 1))
        out["power"].append(flagged[200:].mean())
    marginal = float(np.mean(out["marginal_fpr"]))
    per_class = np.mean(out["mondrian_fpr"], axis=0)
    fdr, power = float(np.mean(out["fdr"])), float(np.mean(out["power"]))
    report = {"alpha": alpha, "splits": R, "marginal_fpr": marginal, "mondrian_fpr_per_class": per_class.tolist(),
              "bh_fdr": fdr, "bh_power": power}
    print(json.dumps(report))
    if os.environ.get("CONFORMOOD_STAT_REPORT"):
        with open(os.environ["CONFORMOOD_STAT_REPORT"], "a") as fh:
            fh.write(json.dumps(report) + "\n")
    assert marginal <= alpha + 0.01
    assert np.all(per_class <= alpha + 0.01)
    assert fdr <= alpha + 0.01


@pytest.mark.slow
def test_inlier_p_values_uniform_mondrian():
    rng = np.random.default_rng(9)
    ps = []
    for _ in range(R * 4):
        c_cal = rng.integers(0, 2, 400)
        s_cal = rng.normal(size=400) + 3 * c_cal
        c = rng.integers(0, 2)
        s = rng.normal() + 3 * c
        cd = ConformalDetector(_Identity(), mondrian=True).calibrate_scores(s_cal, c_cal)
        ps.append(cd.p_values_from_scores([s], np.array([c]))[0])
    assert stats.kstest(ps, "uniform").pvalue > 0.001

import numpy as np
import pytest
from scipy import stats

from conformood.conformal import ConformalDetector, ConformalWarning, benjamini_hochberg
from conformood.scores import get_detector


@pytest.mark.parametrize("seed", range(6))
def test_bh_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.r_[rng.uniform(size=40), rng.uniform(size=10) * 0.01]
    p = np.round(p, 3)  # ties
    for alpha in (0.05, 0.1, 0.3):
        expected = stats.false_discovery_control(p, method="bh") <= alpha
        np.testing.assert_array_equal(benjamini_hochberg(p, alpha), expected)


def test_bh_validation():
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg([0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        benjamini_hochberg([0.1, 1.2], 0.1)


class _Identity:
    """A detector whose score is the first feature (to test calibration in isolation)."""

    def fit(self, features, labels=None):
        return self

    def score_samples(self, features):
        return np.asarray(features, dtype=float)[:, 0]


def test_p_values_and_predict_match_definition_with_ties():
    cd = ConformalDetector(_Identity()).calibrate(np.array([[1.0], [1.0], [2.0], [3.0]]))
    p = cd.p_values(np.array([[0.5], [1.0], [2.5], [9.0]]))
    np.testing.assert_allclose(p, [0.2, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(cd.predict(np.array([[0.5], [1.0]]), alpha=0.2), [True, False])


def test_marginal_false_alarm_rate_over_splits():
    """Mean realised FPR over 200 splits <= alpha + 0.02 (standard error of the mean < 0.005)."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        cal, test = rng.gamma(2.0, size=(60, 1)), rng.gamma(2.0, size=(200, 1))
        rates.append(ConformalDetector(_Identity()).calibrate(cal).predict(test, alpha=0.1).mean())
    assert np.mean(rates) <= 0.1 + 0.02


def test_mondrian_keeps_each_class_guarantee_where_marginal_does_not():
    """Class 1's scores are lower: marginal calibration flags it far above alpha, Mondrian does not."""
    rng = np.random.default_rng(1)
    fpr = {"marginal": [], "mondrian": []}
    for _ in range(200):
        c_cal = rng.integers(0, 2, 200)
        s_cal = rng.normal(size=200) - 1.5 * c_cal
        c_test = np.ones(300, dtype=int)
        s_test = rng.normal(size=300) - 1.5
        fpr["marginal"].append(
            ConformalDetector(_Identity()).calibrate_scores(s_cal).p_values_from_scores(s_test) <= 0.1
        )
        mond = ConformalDetector(_Identity(), mondrian=True).calibrate_scores(s_cal, c_cal)
        fpr["mondrian"].append(mond.p_values_from_scores(s_test, c_test) <= 0.1)
    assert np.mean(fpr["marginal"]) > 0.15  # about twice alpha
    assert np.mean(fpr["mondrian"]) <= 0.1 + 0.015


def test_bh_fdr_controlled_over_repetitions():
    """Mean false discovery proportion over 200 batches <= alpha + 0.02."""
    rng = np.random.default_rng(2)
    fdp, power = [], []
    for _ in range(200):
        cd = ConformalDetector(_Identity()).calibrate(rng.normal(size=(150, 1)))
        inl, out = rng.normal(size=(90, 1)), rng.normal(size=(10, 1)) - 4.0
        flagged = cd.select(np.r_[inl, out], alpha=0.1)
        n_flag = flagged.sum()
        fdp.append(flagged[:90].sum() / max(n_flag, 1))
        power.append(flagged[90:].mean())
    assert np.mean(fdp) <= 0.1 + 0.02
    assert np.mean(power) > 0.5  # and it does find the outliers


def test_with_a_real_detector_and_save_load(tmp_path):
    rng = np.random.default_rng(3)
    x, cal, test = rng.normal(size=(200, 5)), rng.normal(size=(80, 5)), rng.normal(size=(20, 5))
    cd = ConformalDetector(get_detector("knn_cosine", n_neighbors=3)).fit(x).calibrate(cal)
    cd.save(tmp_path / "cd.safetensors")
    loaded = ConformalDetector.load(tmp_path / "cd.safetensors")
    np.testing.assert_allclose(loaded.p_values(test), cd.p_values(test))
    y = rng.integers(0, 2, 80)
    mond = ConformalDetector(get_detector("knn_cosine", n_neighbors=3), mondrian=True).fit(x).calibrate(cal, y)
    mond.save(tmp_path / "m.safetensors")
    t_classes = rng.integers(0, 2, 20)
    np.testing.assert_allclose(
        ConformalDetector.load(tmp_path / "m.safetensors").p_values(test, t_classes), mond.p_values(test, t_classes)
    )


def test_errors():
    cd = ConformalDetector(_Identity())
    with pytest.raises(ValueError, match="calibrate"):
        cd.p_values(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="empty"):
        cd.calibrate(np.zeros((0, 1)))
    with pytest.raises(ValueError, match="alpha"):
        cd.calibrate(np.zeros((5, 1))).predict(np.zeros((2, 1)), alpha=0.0)
    mond = ConformalDetector(_Identity(), mondrian=True)
    with pytest.raises(ValueError, match="needs the class"):
        mond.calibrate(np.zeros((4, 1)))
    mond.calibrate(np.arange(4.0)[:, None], np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="no calibration data"):
        mond.p_values(np.zeros((1, 1)), np.array([5]))
    with pytest.warns(ConformalWarning, match="below 1/\\(n\\+1\\)"):
        mond.predict(np.zeros((1, 1)), 0.1, np.array([0]))


def test_conformal_detector_is_an_estimator_and_takes_labels_as_fit_does():
    from sklearn.base import clone

    from conformood.scores import get_detector

    rng = np.random.default_rng(4)
    x, cal, test = rng.normal(size=(60, 3)), rng.normal(size=(40, 3)), rng.normal(size=(10, 3))
    y, t = rng.integers(0, 2, size=40), rng.integers(0, 2, size=10)
    cd = ConformalDetector(get_detector("knn_cosine", n_neighbors=3), mondrian=True, min_calibration=2)
    copy = clone(cd)
    assert copy.get_params()["mondrian"] and copy.detector is not cd.detector
    assert copy.detector.get_params()["n_neighbors"] == 3
    copy.set_params(min_calibration=3)
    assert copy.min_calibration == 3
    cd.fit(x).calibrate(cal, labels=y)
    with pytest.warns(FutureWarning, match="labels="):
        old = ConformalDetector(get_detector("knn_cosine", n_neighbors=3), mondrian=True).fit(x).calibrate(cal, classes=y)
    np.testing.assert_array_equal(cd.p_values(test, labels=t), old.p_values(test, t))


@pytest.mark.parametrize("n", [2, 8])
def test_p_value_rule_and_threshold_rule_agree_exactly_at_one_third(n):
    """alpha = 1/3 with n = 2 or 8: floor(alpha (n + 1)) is 0 or 2 in exact arithmetic, while the float p-value
    k/(n+1) equals the float alpha at k = 1 or 3. Both rules must decide alike (a fixed bug: predict warned
    'nothing can be flagged' and then flagged)."""
    import warnings

    from conformood.conformal import ConformalWarning, conformal_threshold

    cal = np.arange(1.0, n + 1.0)[:, None]
    test = np.array([[0.0], [1.5], [2.5], [n + 1.0]])
    cd = ConformalDetector(_Identity()).calibrate(cal)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = cd.predict(test, alpha=1 / 3)
        threshold = conformal_threshold(cal[:, 0], 1 / 3)
    np.testing.assert_array_equal(flags, test[:, 0] < threshold)
    if n == 2:
        assert not flags.any() and any(issubclass(w.category, ConformalWarning) for w in caught)
    else:
        assert flags.sum() == 2  # k = 1, 2 flagged; k = 3 (p = 3/9 = 1/3 as a float) is not


def test_select_warns_like_predict_when_nothing_can_be_selected():
    from conformood.conformal import ConformalWarning

    cd = ConformalDetector(_Identity()).calibrate(np.arange(1.0, 51.0)[:, None])
    with pytest.warns(ConformalWarning, match="nothing can be"):
        assert not cd.select(np.zeros((5, 1)), alpha=1e-12).any()


def test_exact_benjamini_hochberg_matches_the_float_rule_away_from_ties():
    from conformood.conformal import benjamini_hochberg, benjamini_hochberg_exact

    rng = np.random.default_rng(0)
    for _ in range(50):
        n, m = int(rng.integers(5, 60)), int(rng.integers(1, 40))
        k = rng.integers(1, n + 2, size=m)
        alpha = float(rng.choice([0.05, 0.1, 0.2, 0.37]))
        np.testing.assert_array_equal(benjamini_hochberg_exact(k, np.full(m, n + 1), alpha),
                                      benjamini_hochberg(k / (n + 1), alpha))
    # a tie: p = 1/3 exactly against alpha = 1/3 written as 0.333...: the exact rule rejects nothing
    assert not benjamini_hochberg_exact([3], [9], 1 / 3).any()
    with pytest.raises(ValueError, match="fractions"):
        benjamini_hochberg_exact([0], [9], 0.1)


def test_saved_calibrated_detector_is_one_self_contained_file(tmp_path):
    """Issue 15 item 1: the wrapped detector is embedded, so a copy of the one file is the whole artefact."""
    import shutil

    from conformood.conformal import ConformalDetector
    from conformood.scores import MahalanobisDetector

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 5)), np.tile(np.arange(3), 30)
    cd = ConformalDetector(MahalanobisDetector(), mondrian=True).fit(x[:60], y[:60]).calibrate(x[60:], labels=y[60:])
    cd.save(tmp_path / "cd.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cd.safetensors"]
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "cd.safetensors", tmp_path / "elsewhere" / "copy.safetensors")
    again = ConformalDetector.load(tmp_path / "elsewhere" / "copy.safetensors")
    test = rng.normal(size=(20, 5)) * 3
    labels = rng.integers(0, 3, size=20)
    np.testing.assert_array_equal(cd.p_values(test, labels), again.p_values(test, labels))
    np.testing.assert_array_equal(cd.predict(test, 0.2, labels), again.predict(test, 0.2, labels))


@pytest.mark.parametrize("value", ["3", 0, -1, 2.5, True])
def test_min_calibration_is_validated_in_the_constructor(value):
    from conformood.conformal import ConformalDetector
    from conformood.scores import KNNCosineDetector

    with pytest.raises(ValueError, match="min_calibration"):
        ConformalDetector(KNNCosineDetector(), min_calibration=value)

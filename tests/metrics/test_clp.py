import numpy as np
import pytest

from conformood.metrics import (
    classwise_clp,
    confusion_dendrogram,
    confusion_distances,
    confusion_log_probability,
    ensemble_predict,
    ensemble_probabilities,
    ood_rank,
)
from conformood.report import plot_confusion_dendrogram
from conformood.train import fit_clp_ensemble


def test_ood_rank_percent_of_inliers_more_normal():
    inl = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(ood_rank([0.0, 2.5, 4.0, 9.0], inl), [100.0, 50.0, 0.0, 0.0])


def test_clp_on_a_toy_ensemble_with_known_answer():
    # two members; 3 classes (0, 1 in-distribution, 2 OOD); the OOD sample is given 30 % / 10 % to ID classes
    m1 = np.array([[0.2, 0.1, 0.7], [0.9, 0.05, 0.05]])
    m2 = np.array([[0.1, 0.0, 0.9], [0.7, 0.2, 0.1]])
    c = ensemble_probabilities([m1, m2])
    np.testing.assert_allclose(c[0], [0.15, 0.05, 0.8])
    assert confusion_log_probability(c[:1], [0, 1]) == pytest.approx(np.log(0.2))
    assert confusion_log_probability(c, [0, 1]) == pytest.approx(np.log((0.2 + 0.925) / 2))
    assert classwise_clp(c, np.array([2, 0]), [0, 1]) == pytest.approx({2: np.log(0.2), 0: np.log(0.925)})
    with pytest.raises(ValueError, match="probability vectors"):
        ensemble_probabilities([np.array([[0.5, 0.6]])])


def test_confusion_distances_eq5_6_and_dendrogram(tmp_path):
    # class 0 and 1 are confused half of the time, class 2 never
    c = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    d = confusion_distances(c, np.array([0, 1, 2]))
    assert d[0, 1] == pytest.approx(np.sqrt(-np.log(0.5)))
    assert np.isinf(d[0, 2]) and d[0, 0] == 0.0
    z = confusion_dendrogram(d)
    plot_confusion_dendrogram(z, ["a", "b", "c"], tmp_path / "dendro.png")
    assert set(z[0, :2].astype(int)) == {0, 1}  # the confused pair merges first
    assert (tmp_path / "dendro.png").is_file()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_clp_ensemble_separates_near_from_far_ood():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.6, 0.3], [30.0, 30.0]])  # class 2 near class 0, class 3 far
    y = np.repeat(np.arange(4), 80)
    x = centres[y] + rng.normal(size=(320, 2))
    members = fit_clp_ensemble(x, y, n_members=2, hidden=(32,), epochs=400)
    yt = np.repeat(np.arange(4), 40)
    xt = centres[yt] + rng.normal(size=(160, 2))
    clp = classwise_clp(ensemble_predict(members, xt, 4), yt, in_classes=[0, 1])
    assert clp[2] > clp[3] + 2.0  # near OOD is confused with ID far more often than far OOD

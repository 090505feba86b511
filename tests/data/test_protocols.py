import numpy as np
import pytest

from conformood.data import (
    ImageArrays,
    few_shot_ood,
    in_vs_out,
    leave_one_class_out,
    load_digits_dataset,
    one_vs_rest,
    train_calibration_test_split,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits_dataset()
    return d, train_calibration_test_split(d.labels, seed=0)


def _ids(part, data):
    """Row identities (image bytes) to check disjointness across parts."""
    return {p.tobytes() for p in part.images}


def test_leave_one_class_out_sizes_and_disjointness(digits):
    d, s = digits
    task = leave_one_class_out(d, s, 4)
    assert 4 not in set(task.train.labels) and 4 not in set(task.calibration.labels)
    assert len(task.train) == int((d.labels[s.train] != 4).sum())
    assert len(task.calibration) == int((d.labels[s.calibration] != 4).sum())
    np.testing.assert_array_equal(task.is_inlier, task.test.labels != 4)
    assert not (_ids(task.train, d) & _ids(task.test, d))
    again = leave_one_class_out(d, train_calibration_test_split(d.labels, seed=0), 4)
    np.testing.assert_array_equal(again.train.images, task.train.images)


def test_one_vs_rest_and_leave_one_out_are_complements(digits):
    d, s = digits
    a, b = one_vs_rest(d, s, 2), leave_one_class_out(d, s, 2)
    np.testing.assert_array_equal(a.is_inlier, ~b.is_inlier)


@pytest.mark.parametrize("shots", [0, 1, 10])
def test_few_shot(digits, shots):
    d, s = digits
    counts = np.bincount(d.labels)
    normal = int(np.argmax(counts))  # ties to the lower index, like the protocol
    task = few_shot_ood(d, s, shots, seed=3)
    assert set(task.train.labels) == {normal}
    assert len(task.outlier_exposure) == shots
    obtainable = int(np.lexsort((np.arange(10), -counts))[1])
    assert set(task.outlier_exposure.labels) <= {obtainable}
    assert not (_ids(task.outlier_exposure, d) & _ids(task.test, d))  # exposure comes from training images
    np.testing.assert_array_equal(
        few_shot_ood(d, s, shots, seed=3).outlier_exposure.images, task.outlier_exposure.images
    )
    with pytest.raises(ValueError, match="shots"):
        few_shot_ood(d, s, -1)


def test_in_vs_out(digits):
    d, s = digits
    rng = np.random.default_rng(0)
    out = ImageArrays(rng.uniform(size=(50, 1, 8, 8)).astype(np.float32), np.zeros(50, dtype=int))
    task = in_vs_out(d, out, s, name="digits-vs-noise", out_test_size=20)
    assert len(task.test) == len(s.test) + 20
    assert task.is_inlier.sum() == len(s.test)
    assert np.all(task.test.labels[~task.is_inlier] == -1)
    assert len(task.train) == len(s.train) and len(task.calibration) == len(s.calibration)
    with pytest.raises(ValueError, match="shape"):
        in_vs_out(d, ImageArrays(np.zeros((3, 1, 4, 4), np.float32), np.zeros(3, dtype=int)), s)

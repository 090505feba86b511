"""The Python side of one path: one loader for every saved kind, a registry that is the same whatever was imported,
clear refusals where a detector cannot be saved, the ensemble's warning, the joint loss's weight."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 6))


def test_the_registry_lists_every_detector_in_a_fresh_interpreter():
    code = ("import sys; from conformood.scores import list_detectors; names = list_detectors(); "
            "loaded = 'conformood.conformal' in sys.modules; import conformood.conformal; "
            "print(names == list_detectors(), 'conformal_set' in names, loaded, len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["True", "True", "False"]  # the same list before and after; declared, not imported
    from typer.testing import CliRunner

    from conformood.cli import app
    from conformood.scores import list_detectors

    listed = CliRunner().invoke(app, ["detectors"]).output
    assert all(name in listed for name in list_detectors()) and "conformal_set" in listed


def test_a_declared_entry_resolves_to_the_class_it_describes():
    from conformood.conformal.sets.detector import ConformalSetDetector
    from conformood.scores import DETECTORS

    info = DETECTORS.info("conformal_set")
    assert DETECTORS.get("conformal_set") is ConformalSetDetector
    assert info.class_name == "ConformalSetDetector"
    assert info.description == ConformalSetDetector.__doc__.split("\n")[0]  # the declaration says what the class does
    with pytest.raises(ValueError, match="already registered"):
        DETECTORS.declare("conformal_set", "x.y:Z")
    with pytest.raises(ValueError, match="package.module:attribute"):
        DETECTORS.declare("new_one", "no_colon")


def test_one_loader_for_every_saved_kind(tmp_path):
    import conformood as co
    from conformood.conformal import ConformalBall, ConformalDetector
    from conformood.scores import get_detector, load_detector

    det = get_detector("knn_cosine").fit(X[:100])
    det.save(tmp_path / "d.safetensors")
    cd = ConformalDetector(det, alpha=0.05).calibrate(X[100:])
    cd.save(tmp_path / "cd.safetensors")
    ball = ConformalBall(dim=6, alpha=0.1)
    ball.calibrate(X[:50], X[50:100] + 0.01)
    ball.save(tmp_path / "set.safetensors")
    assert isinstance(co.load(tmp_path / "d.safetensors"), type(det))
    loaded = co.load(tmp_path / "cd.safetensors")
    assert isinstance(loaded, ConformalDetector) and loaded.alpha == 0.05
    np.testing.assert_array_equal(loaded.p_values(X[:10]), cd.p_values(X[:10]))
    assert type(co.load(tmp_path / "set.safetensors")).__name__ == "ConformalBall"
    assert isinstance(co.load_detector(tmp_path / "cd.safetensors"), ConformalDetector)
    with pytest.raises(ValueError, match="not a detector"):
        co.load_detector(tmp_path / "set.safetensors")
    with pytest.raises(ValueError, match="conformood.load"):  # the bare loader says where a calibrated one goes
        load_detector(tmp_path / "cd.safetensors")
    np.savez(tmp_path / "x.npz", a=X)
    with pytest.raises(ValueError):
        co.load(tmp_path / "x.npz")


def test_a_pipeline_is_refused_by_save_with_a_clear_message(tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from conformood.conformal import ConformalDetector
    from conformood.scores import get_detector

    pipe = make_pipeline(StandardScaler(), get_detector("knn_cosine"))
    cd = ConformalDetector(pipe).fit(X[:100]).calibrate(X[100:])
    assert cd.p_values(X[:5]).shape == (5,)  # usable in memory
    with pytest.raises(ValueError, match="Pipeline"):
        cd.save(tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_a_stored_alpha_is_the_default_level_and_is_checked():
    from conformood.conformal import ConformalDetector
    from conformood.scores import get_detector

    cd = ConformalDetector(get_detector("knn_cosine"), alpha=0.2).fit(X[:100]).calibrate(X[100:])
    np.testing.assert_array_equal(cd.predict(X), cd.predict(X, 0.2))
    assert cd.threshold() == cd.threshold(0.2)
    with pytest.raises(ValueError, match="alpha"):
        ConformalDetector(get_detector("knn_cosine"), alpha=1.5)
    with pytest.raises(ValueError, match="give alpha"):
        ConformalDetector(get_detector("knn_cosine")).fit(X[:100]).calibrate(X[100:]).predict(X)
    with pytest.raises(ValueError, match="feature_source"):
        ConformalDetector(get_detector("knn_cosine"), feature_source="mobilenet")


def test_the_ensemble_warns_where_nothing_can_be_flagged():
    from conformood.conformal import ConformalEnsemble, ConformalWarning
    from conformood.scores import get_detector

    members = [get_detector("knn_cosine").fit(X[:100]), get_detector("center").fit(X[:100])]
    ens = ConformalEnsemble(members, rule="min_p").calibrate(X[100:140])
    floor = ens.min_p_value()
    assert floor >= 1 / 21
    with pytest.warns(ConformalWarning, match="smallest p-value"):
        flags = ens.predict(RNG.normal(size=(50, 6)) * 10, alpha=floor * 0.99)
    assert not flags.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ens.predict(X[:10], alpha=0.5)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0, "1", True])
def test_the_joint_loss_validates_its_weight(weight):
    from conformood.losses import JointContrastiveCELoss

    with pytest.raises(ValueError, match="weight"):
        JointContrastiveCELoss(weight=weight)


def test_random_backbone_weights_are_one_network():
    import torch

    from conformood.models import extract_features, get_backbone

    images = torch.rand(4, 3, 32, 32)
    state = torch.random.get_rng_state()
    a = extract_features(get_backbone("mobilenet_v2", weights=None, input_size=32), images, progress=False)
    b = extract_features(get_backbone("mobilenet_v2", weights=None, input_size=32), images, progress=False)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is untouched

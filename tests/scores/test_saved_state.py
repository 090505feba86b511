"""Each detector's table of learned attributes (what loading accepts) is exactly what its ``fit`` sets, and a
saved detector loads back with identical scores."""

import numpy as np
import pytest
import torch

from conformood.scores import DETECTORS, get_detector, load_detector

RNG = np.random.default_rng(0)
X = RNG.normal(size=(80, 6))
Y = np.repeat(np.arange(4), 20)
IMAGES = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class _Flatten(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _data(name):
    kind = DETECTORS.info(name).input
    return np.abs(X) if kind == "logits" else X.reshape(20, 4, 6) if kind == "patches" else X


def _fitted(name):
    info = DETECTORS.info(name)
    options = {}
    if name == "vim":
        options = {"weight": RNG.normal(size=(4, 6)), "bias": RNG.normal(size=4), "dim": 3}
    if info.input == "images":
        options = {"encoder": _Flatten(), **({"n_views": 2} if name in ("s_mu", "l2_ens", "sim_s_mu") else {})}
        return get_detector(name, **options).fit(IMAGES)
    if name == "conformal_set":
        pytest.skip("covered by tests/conformal (needs a calibrated set)")
    data = _data(name)
    return get_detector(name, **options).fit(data, Y if info.needs_labels else None)


@pytest.mark.parametrize("name", DETECTORS.names())
def test_learned_table_matches_fit(name):
    det = _fitted(name)
    learned = {k for k in vars(det) if k.endswith("_") and not k.startswith("_")}
    assert learned == set(type(det)._learned)


@pytest.mark.parametrize("name", [n for n in DETECTORS.names() if DETECTORS.info(n).input != "images"
                                  and n != "conformal_set"])
def test_save_load_roundtrip(name, tmp_path):
    det = _fitted(name)
    det.save(tmp_path / "d.safetensors")
    again = load_detector(tmp_path / "d.safetensors")
    data = _data(name)
    np.testing.assert_array_equal(det.score_samples(data), again.score_samples(data))

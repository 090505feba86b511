"""Drift alarms (conformood.monitor): online conformal p-values, test martingales under exchangeability and
after a shift, adaptive conformal inference under a slow drift, and the ``conformood monitor`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformood.cli import main
from conformood.conformal import ConformalDetector, conformal_p_values
from conformood.monitor import (
    AdaptiveConformal,
    ConformalMonitor,
    log_mixture_martingale,
    log_power_martingale,
    online_p_values,
)
from conformood.scores import L2NormDetector, MahalanobisDetector


def _naive_online(reference, stream, u):
    seen, p = list(reference), []
    for s, ut in zip(stream, u):
        less = sum(x < s for x in seen)
        equal = sum(x == s for x in seen)
        p.append((less + ut * (equal + 1)) / (len(seen) + 1))
        seen.append(s)
    return np.array(p)


def test_online_p_values_match_the_definition_with_ties_and_any_chunk_size():
    rng = np.random.default_rng(0)
    ref, stream = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 90).astype(float)  # many ties
    u = 1.0 - np.random.default_rng(5).random(stream.size)
    expected = _naive_online(ref, stream, u)
    for chunk in (1, 7, 512):
        assert np.allclose(online_p_values(ref, stream, np.random.default_rng(5), chunk=chunk), expected)


def test_martingales_match_their_products():
    p = np.random.default_rng(1).uniform(0.01, 1, 50)
    assert np.allclose(np.exp(log_power_martingale(p, 0.2)), np.cumprod(0.2 * p ** -0.8))
    eps = (np.arange(100) + 0.5) / 100
    mixture = np.mean([np.cumprod(e * p ** (e - 1)) for e in eps], axis=0)
    assert np.allclose(np.exp(log_mixture_martingale(p)), mixture)


def _alarm_rate(n_streams, stream_length, delta, online, seed):
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(n_streams):
        x = rng.normal(size=500 + stream_length)
        if online:
            p = online_p_values(x[:500], x[500:], rng)
        else:  # the broken version: p-values against the fixed calibration set only, which are dependent
            p = conformal_p_values(np.sort(x[:500]), x[500:])
        alarms += bool((log_mixture_martingale(p) >= np.log(1 / delta)).any())
    return alarms / n_streams


def test_exchangeable_streams_alarm_at_most_delta_of_the_time():
    """1,000 exchangeable streams of 5,000 inputs after 500 calibration scores, δ = 0.05. Tolerance: the
    alarm rate is <= δ + 3 SE (SE of a proportion δ over 1,000 streams, 0.0069). The same martingale on p-values
    against the fixed calibration set alone (not online) fails the check (about 12 % alarm)."""
    delta = 0.05
    bound = delta + 3 * np.sqrt(delta * (1 - delta) / 1000)
    assert _alarm_rate(1000, 5000, delta, online=True, seed=0) <= bound
    assert _alarm_rate(500, 5000, delta, online=False, seed=1) > bound


def _shifted_stream(rng, shift_at, outlier_fraction, length=3000, dim=8):
    x = rng.normal(size=(length, dim))
    after = np.arange(length) >= shift_at
    outlier = after & (rng.random(length) < outlier_fraction)
    x[outlier] += 2.0
    return x


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(0)
    det = MahalanobisDetector().fit(rng.normal(size=(1000, 8)), np.zeros(1000, dtype=int))
    return ConformalDetector(det).calibrate(rng.normal(size=(500, 8)))


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_a_shift_is_detected_soon_after_it_happens(detector, fraction):
    """Streams of inliers that turn into a mix with 10 % / 30 % outliers at input 1,000: the monitor alarms after
    the shift in every one of 20 streams, and the median delay is short (under 500 / 100 inputs)."""
    rng = np.random.default_rng(2)
    delays = []
    for seed in range(20):
        result = ConformalMonitor(detector, delta=0.01, seed=seed).update(_shifted_stream(rng, 1000, fraction))
        assert result.alarm and result.alarm_time >= 1000
        delays.append(result.alarm_time - 1000)
    assert np.median(delays) < (500 if fraction == 0.1 else 100)


def test_batches_give_the_same_path_as_one_call(detector):
    x = np.random.default_rng(3).normal(size=(700, 8))
    one = ConformalMonitor(detector, seed=4).update(x)
    monitor = ConformalMonitor(detector, seed=4, martingale="power", epsilon=0.2)
    for part in np.array_split(x, 5):
        batched = monitor.update(part)
    power = ConformalMonitor(detector, seed=4, martingale="power", epsilon=0.2).update(x)
    assert np.allclose(batched.p_values, one.p_values) and np.allclose(batched.log_martingale, power.log_martingale)


def test_aci_keeps_the_flag_rate_at_alpha_under_a_slow_drift():
    """The inlier scores drift slowly downwards (towards 'abnormal') over 20,000 inputs. A fixed conformal threshold
    then flags far more than α; adaptive conformal inference (γ = 0.05) stays within 0.01 of α, as its
    deterministic bound (Gibbs & Candès 2021, Prop. 4.1) guarantees."""
    rng = np.random.default_rng(0)
    cd = ConformalDetector(L2NormDetector()).calibrate_scores(rng.normal(size=1000))
    t = 20_000
    stream = rng.normal(size=t) - np.linspace(0, 2.0, t)  # the inlier distribution drifts
    aci = AdaptiveConformal(cd, alpha=0.1, gamma=0.05)
    flags = aci.update_scores(stream)
    assert abs(flags.mean() - 0.1) <= 0.01 and abs(aci.false_alarm_rate - 0.1) <= aci.bound() <= 0.01
    assert cd.flags_from_scores(stream, 0.1).mean() > 0.3  # the fixed threshold does not keep α


def test_aci_counts_only_inputs_known_to_be_inliers():
    cd = ConformalDetector(L2NormDetector()).calibrate_scores(np.arange(100.0))
    aci = AdaptiveConformal(cd, alpha=0.1, gamma=0.1)
    aci.update_scores(np.array([-1.0, -1.0, 50.0]), inlier=np.array([False, False, True]))
    assert len(aci.errors) == 1 and aci.alpha_t == pytest.approx(0.1 + 0.1 * 0.1)
    with pytest.raises(ValueError, match="inlier"):
        aci.update_scores(np.zeros(2), inlier=np.array([1, 0]))


def test_refusals(detector):
    with pytest.raises(ValueError, match="not calibrated"):
        ConformalMonitor(ConformalDetector(L2NormDetector()))
    mondrian = ConformalDetector(L2NormDetector(), mondrian=True).calibrate_scores(np.arange(6.0), np.arange(6) % 2)
    with pytest.raises(ValueError, match="Mondrian"):
        ConformalMonitor(mondrian)
    with pytest.raises(ValueError, match="delta"):
        ConformalMonitor(detector, delta=1.0)
    with pytest.raises(ValueError, match="martingale"):
        ConformalMonitor(detector, martingale="jumper")
    with pytest.raises(ValueError, match="p-values"):
        log_power_martingale(np.array([0.0, 0.5]))
    with pytest.raises(TypeError):
        ConformalMonitor(object())


def test_the_command_writes_the_path_the_alarm_and_a_plot(detector, tmp_path, capsys):
    rng = np.random.default_rng(6)
    detector.save(tmp_path / "cd.safetensors")
    batches = []
    for i in range(6):
        x = rng.normal(size=(200, 8))
        if i >= 3:
            x[:60] += 2.5
        np.savez(tmp_path / f"b{i}.npz", features=x)
        batches.append(str(tmp_path / f"b{i}.npz"))
    args = ["monitor", "--detector-file", str(tmp_path / "cd.safetensors"), "--inputs", *batches[:2], "--inputs",
            batches[2], *batches[3:], "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    r = json.loads((tmp_path / "m" / "monitor.json").read_text())
    assert r["alarm"] and r["alarm_batch"] >= 3 and r["batch_starts"] == [0, 200, 400, 600, 800, 1000]
    assert r["alarm_input"] == batches[r["alarm_batch"]] and len(r["log_martingale"]) == 1200
    assert "provenance" in r and (tmp_path / "m" / "monitor.png").stat().st_size > 10_000
    assert "ALARM" in capsys.readouterr().out

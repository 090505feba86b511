"""Drift alarms for a deployed detector: conformal test martingales and adaptive conformal inference.

**Conformal test martingales** (Vovk, Nouretdinov & Gammerman 2003; Vovk et al., "Algorithmic Learning in a
Random World", ch. 8). The calibration scores and the stream are one sequence. Each new input gets the
*online, randomised* conformal p-value

    p_t = (#{earlier scores < s_t} + U_t · (#{earlier scores = s_t} + 1)) / (N_t + 1),   U_t ~ Uniform(0, 1],

where "earlier" covers the calibration scores and every earlier input of the stream (N_t of them), and a small
score is abnormal. If the whole sequence is exchangeable, p_1, p_2, … are independent and uniform on (0, 1]
(Vovk et al., Theorem 8.2), so a betting function f with ∫ f = 1 makes M_t = Π f(p_i) a non-negative martingale
with M_0 = 1, and by Ville's inequality P(sup_t M_t ≥ 1/δ) ≤ δ: the chance of *ever* alarming on an
exchangeable stream is at most δ, however long it runs. Betting functions:

* ``"power"``: f(p) = ε p^(ε − 1) (ε in (0, 1); small ε bets hard on small p-values);
* ``"mixture"``: the simple mixture ∫_0^1 ε p^(ε − 1) dε of the power martingales, here an equal-weight mixture
  over a grid of ε values (a mixture of test martingales with weights summing to one is again one, exactly).

**Adaptive conformal inference** (Gibbs & Candès 2021, "Adaptive conformal inference under distribution
shift", eq. 2): flag at level α_t and update α_{t+1} = α_t + γ (α − err_t), where err_t = 1 when input t was
flagged although it is in-distribution. Whatever the data, |mean(err_1..T) − α| ≤ (max(α_1, 1 − α_1) + γ) / (γ T)
(their Proposition 4.1), so the long-run false-alarm rate stays at α under a drift of the inlier distribution
that a fixed threshold would follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ._validation import check_alpha, check_positive_int, check_scores
from .conformal import ConformalDetector

MARTINGALES = ("mixture", "power")


def check_epsilon(epsilon: float) -> float:
    """ε of the power martingale, in (0, 1)."""
    return check_alpha(epsilon, "epsilon")


def _reference(detector: ConformalDetector) -> np.ndarray:
    if not isinstance(detector, ConformalDetector):
        raise TypeError(f"a calibrated ConformalDetector is needed, got {type(detector).__name__}")
    if not hasattr(detector, "calibration_"):
        raise ValueError("the detector is not calibrated; call calibrate() first")
    if detector.mondrian:
        raise ValueError("a Mondrian detector calibrates each class apart; monitor a detector calibrated on all "
                         "classes together (mondrian=False)")
    return detector.calibration_[-1]


def online_p_values(reference: ArrayLike, stream: ArrayLike, rng: np.random.Generator | int | None = 0,
                    chunk: int = 512) -> np.ndarray:
    """Online randomised conformal p-values of ``stream``, each ranked against ``reference`` and the earlier
    stream entries (small score = abnormal). Independent and uniform on (0, 1] when reference + stream is
    exchangeable. Computed chunk by chunk: sorted earlier scores by binary search, within a chunk by comparison."""
    ref = np.sort(check_scores(reference, "reference scores"))
    s = check_scores(stream, "stream scores", min_size=0)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(_check_seed(rng, "rng"))
    return _online_p_values(ref, s, rng, check_positive_int(chunk, "chunk"))[0]


def _check_seed(seed: object, name: str = "seed") -> int | None:
    """A seed for numpy's generator: None or a non-negative integer."""
    if seed is None:
        return None
    return check_positive_int(seed, name, minimum=0)


def _online_p_values(seen: np.ndarray, s: np.ndarray, rng: np.random.Generator,
                     chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """:func:`online_p_values` against the *sorted* earlier scores ``seen``; also returns them with ``s`` merged
    in (sorted), so that a monitor extends them instead of sorting everything again."""
    u = 1.0 - rng.random(s.size)  # (0, 1]: a p-value of exactly 0 would make the martingale infinite
    p = np.empty(s.size)
    for start in range(0, s.size, chunk):
        block = s[start:start + chunk]
        less = np.searchsorted(seen, block, side="left").astype(np.float64)
        equal = np.searchsorted(seen, block, side="right") - less
        earlier = np.tri(block.size, k=-1, dtype=bool)  # earlier[i, j]: j < i within the chunk
        less += (earlier & (block[None, :] < block[:, None])).sum(1)
        equal += (earlier & (block[None, :] == block[:, None])).sum(1)
        n_before = seen.size + np.arange(block.size)
        p[start:start + block.size] = (less + u[start:start + block.size] * (equal + 1)) / (n_before + 1)
        ordered = np.sort(block)
        seen = np.insert(seen, np.searchsorted(seen, ordered), ordered)  # a merge, linear in len(seen)
    return p, seen


def log_power_martingale(p: ArrayLike, epsilon: float = 0.1) -> np.ndarray:
    """log M_t of the power martingale Π ε p_i^(ε − 1), for t = 1..T."""
    eps = check_epsilon(epsilon)
    return _log_paths(_check_p(p), np.array([eps]), np.zeros(1))[0]


def log_mixture_martingale(p: ArrayLike, grid: int = 100) -> np.ndarray:
    """log M_t of the simple-mixture martingale: the average of the power martingales at ε = (j − ½) / grid,
    j = 1..grid (a discrete version of ∫_0^1 ε p^(ε − 1) dε that is itself exactly a test martingale)."""
    grid = check_positive_int(grid, "grid")
    return _log_paths(_check_p(p), mixture_grid(grid), np.zeros(grid))[0]


def mixture_grid(grid: int = 100) -> np.ndarray:
    """The ε values of the simple mixture: (j − ½) / grid, j = 1..grid."""
    return (np.arange(grid) + 0.5) / grid


def _log_paths(p: np.ndarray, eps: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log of the equal-weight mixture of the power martingales at ``eps`` over the p-values ``p``, continuing
    from their logs ``start`` (one per ε); returns the path (T,) and the logs after the last p-value."""
    if p.size == 0:
        return np.zeros(0), start
    paths = start[None, :] + np.cumsum(np.log(eps)[None, :] + (eps - 1.0)[None, :] * np.log(p)[:, None], axis=0)
    if eps.size == 1:
        return paths[:, 0], paths[-1]
    top = paths.max(axis=1)
    return top + np.log(np.exp(paths - top[:, None]).sum(axis=1)) - math.log(eps.size), paths[-1]


def _check_p(p: ArrayLike) -> np.ndarray:
    p = check_scores(p, "p-values", min_size=0)
    if p.size and (p.min() <= 0 or p.max() > 1):
        raise ValueError("p-values must lie in (0, 1]")
    return p


@dataclass
class MonitorResult:
    """The state of a monitored stream after :meth:`ConformalMonitor.update`: the online p-values and the
    log-martingale of every input seen so far, and the alarm time (the 0-based index of the first input at which
    M_t ≥ 1/δ), or ``None``."""

    p_values: np.ndarray
    log_martingale: np.ndarray
    alarm_time: int | None
    threshold: float

    @property
    def alarm(self) -> bool:
        return self.alarm_time is not None


class ConformalMonitor:
    """Raises an alarm when the stream of inputs stops being exchangeable with the calibration data.

    >>> monitor = ConformalMonitor(calibrated_detector, delta=0.01)
    >>> result = monitor.update(batch_features)      # call once per batch, in arrival order
    >>> result.alarm, result.alarm_time

    P(an alarm ever, on a stream exchangeable with the calibration data) ≤ δ (Ville's inequality). After an alarm
    the martingale keeps running; start a new monitor (recalibrate) to watch again.
    """

    def __init__(self, detector: ConformalDetector, delta: float = 0.01, martingale: str = "mixture",
                 epsilon: float = 0.1, seed: int = 0) -> None:
        self.detector = detector
        self.reference = _reference(detector)
        self.delta = check_alpha(delta, "delta")
        if martingale not in MARTINGALES:
            raise ValueError(f"martingale must be one of {MARTINGALES}, got {martingale!r}")
        self.martingale = martingale
        self.epsilon = check_epsilon(epsilon)
        self.seed = _check_seed(seed)
        self._rng = np.random.default_rng(self.seed)
        self._seen = np.sort(self.reference)  # calibration and stream scores so far, sorted
        self._eps = np.array([self.epsilon]) if martingale == "power" else mixture_grid()
        self._last = np.zeros(self._eps.size)  # each power martingale's log after the last input
        self._p: list[np.ndarray] = []
        self._log_m: list[np.ndarray] = []

    def update(self, features: ArrayLike) -> MonitorResult:
        """Score a batch of new inputs (in arrival order) and extend the martingale."""
        return self.update_scores(self.detector.detector.score_samples(features))

    def update_scores(self, scores: ArrayLike) -> MonitorResult:
        """:meth:`update` from precomputed detector scores; the work is proportional to the new batch (plus a
        linear merge), not to the stream so far."""
        s = check_scores(scores, "stream scores", min_size=0)
        p, self._seen = _online_p_values(self._seen, s, self._rng)
        log_m, self._last = _log_paths(p, self._eps, self._last)
        self._p.append(p)
        self._log_m.append(log_m)
        return self.result()

    def result(self) -> MonitorResult:
        """The state after the inputs seen so far."""
        p = np.concatenate(self._p) if self._p else np.zeros(0)
        log_m = np.concatenate(self._log_m) if self._log_m else np.zeros(0)
        threshold = -math.log(self.delta)
        crossed = np.flatnonzero(log_m >= threshold)
        return MonitorResult(p, log_m, int(crossed[0]) if crossed.size else None, threshold)


class AdaptiveConformal:
    """Adaptive conformal inference (Gibbs & Candès 2021, eq. 2) on top of a calibrated detector: flag input t when
    its conformal p-value is ≤ α_t, then α_{t+1} = α_t + γ (α − err_t).

    ``err_t`` is whether input t was a false alarm. Give ``inlier`` (True for inputs known, afterwards, to be
    in-distribution) when that feedback exists; without it every input counts as in-distribution, which keeps
    the long-run flag rate at α (a deployment where outliers are rare). α_t may leave [0, 1]: below 0 nothing is
    flagged, above 1 everything is.
    """

    def __init__(self, detector: ConformalDetector, alpha: float, gamma: float = 0.05) -> None:
        self.detector = detector
        _reference(detector)
        self.alpha = check_alpha(alpha)
        self.gamma = check_alpha(gamma, "gamma")
        self.alpha_t = self.alpha
        self.alphas: list[float] = []
        self.errors: list[bool] = []

    def update(self, features: ArrayLike, inlier: ArrayLike | None = None) -> np.ndarray:
        """Flags for a batch of new inputs, taken one at a time in order."""
        return self.update_scores(self.detector.detector.score_samples(features), inlier)

    def update_scores(self, scores: ArrayLike, inlier: ArrayLike | None = None) -> np.ndarray:
        """:meth:`update` from precomputed detector scores."""
        p = self.detector.p_values_from_scores(scores)
        if inlier is None:
            known = np.ones(p.size, dtype=bool)
        else:
            known = np.asarray(inlier)
            if known.dtype != bool or known.shape != p.shape:
                raise ValueError(f"inlier must be a boolean array of shape {p.shape}")
        flags = np.empty(p.size, dtype=bool)
        for t in range(p.size):  # sequential by definition: α_{t+1} depends on the decision at t
            flags[t] = p[t] <= self.alpha_t
            self.alphas.append(self.alpha_t)
            if known[t]:
                err = bool(flags[t])
                self.errors.append(err)
                self.alpha_t += self.gamma * (self.alpha - err)
        return flags

    @property
    def false_alarm_rate(self) -> float:
        """The realised false-alarm rate over the in-distribution inputs seen so far."""
        return float(np.mean(self.errors)) if self.errors else float("nan")

    def bound(self) -> float:
        """Gibbs & Candès' Proposition 4.1 bound on |false_alarm_rate − α| after the inputs seen so far."""
        t = len(self.errors)
        return (max(self.alpha, 1 - self.alpha) + self.gamma) / (self.gamma * t) if t else float("inf")

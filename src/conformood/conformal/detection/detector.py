"""Turn any detector's score into decisions with a guaranteed false-alarm rate or false discovery rate."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from ..._validation import check_alpha, check_positive_int, check_scores, renamed
from .bh import benjamini_hochberg, benjamini_hochberg_exact
from .pac import check_delta, conditional_p_values, pac_min_calibration, pac_rank
from .split import ConformalWarning, conformal_p_values, conformal_rank

KIND = "ConformalDetector"


class ConformalDetector(BaseEstimator):
    """Split-conformal calibration of a detector (higher score = more in-distribution).

    ``fit`` trains the wrapped detector; ``calibrate`` scores held-out in-distribution data that the
    detector never saw. Then, for a new in-distribution input exchangeable with the calibration data:

    * :meth:`p_values`: p(x) = (1 + #{calibration scores <= s(x)}) / (n + 1), so P(p(x) <= alpha) <= alpha;
    * :meth:`predict`: flags p(x) <= alpha, hence P(an in-distribution input is flagged) <= alpha;
    * :meth:`select`: Benjamini–Hochberg over a batch of p-values, hence FDR <= alpha among the flagged
      inputs (conformal p-values are PRDS, Bates et al. 2023).

    **Which is which.** The wrapped detector's scores are *higher for inliers*; p-values are *small for
    unusual inputs*; :meth:`predict` and :meth:`select` return *flags*, True for an input declared
    out-of-distribution.

    With ``mondrian=True`` the calibration is class-conditional: calibration scores are grouped by the
    ``labels`` given to :meth:`calibrate` (the same name as in :meth:`fit`), and a test input is compared only
    with the scores of the class given for it, so each class keeps its own guarantee
    P(flag | in-distribution, class k) <= alpha. Give
    true classes when they are known at test time, or predicted classes in both places (the guarantee is
    then conditional on the predicted class).

    **Calibration-conditional (PAC) guarantees.** ``calibrate(..., delta=δ)`` makes :meth:`predict` use the
    rank of :func:`~conformood.conformal.pac_rank`: with probability ≥ 1 − δ over the calibration set, the
    deployed rule's false-alarm rate is ≤ α (not only on average over calibration sets); it flags fewer inputs
    than the marginal rule, and n must be at least :func:`~conformood.conformal.pac_min_calibration`. With δ
    set, :meth:`select` runs Benjamini–Hochberg on the calibration-conditional p-values (generalized Simes), so
    its FDR bound holds given the calibration set with probability ≥ 1 − δ; :meth:`p_values` gives them with
    ``conditional="simes"`` or ``"dkwm"``.

    **What it remembers.** ``alpha``, when given, is the level that :meth:`predict`, :meth:`select` and
    :meth:`threshold` use when called without one (``conformood score`` decides at it). ``feature_source`` is
    the record of how the features were made (backbone or model digest, input size, resizing, normalisation;
    :mod:`conformood.experiments.sources`); both are saved with the detector, and scoring through a source
    compares the record and refuses features made another way.
    """

    def __init__(self, detector: Any, mondrian: bool = False, min_calibration: int = 1, alpha: float | None = None,
                 feature_source: dict | None = None) -> None:
        self.detector = detector
        self.mondrian = mondrian
        self.min_calibration = min_calibration
        self.alpha = alpha
        self.feature_source = feature_source
        self._check_params()

    def _check_params(self) -> None:
        if not isinstance(self.mondrian, (bool, np.bool_)):
            raise ValueError(f"mondrian must be True or False, got {self.mondrian!r}")
        check_positive_int(self.min_calibration, "min_calibration")
        if self.alpha is not None:
            check_alpha(self.alpha)
        if self.feature_source is not None and not (
                isinstance(self.feature_source, dict) and isinstance(self.feature_source.get("kind"), str)):
            raise ValueError("feature_source must be a feature-source record (a dict with a 'kind'), got "
                             f"{type(self.feature_source).__name__}")

    def _alpha(self, alpha: float | None) -> float:
        """``alpha``, else the level the detector was built with; one of the two must be given."""
        if alpha is None:
            if self.alpha is None:
                raise ValueError("give alpha, the level of the decisions (this detector stores none)")
            alpha = self.alpha
        return check_alpha(alpha)

    # -- training and calibration ------------------------------------------------------------------
    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> ConformalDetector:
        """Fit the wrapped detector on training data (never the calibration data)."""
        self.detector.fit(features, labels)
        return self

    def calibrate(
        self, features: ArrayLike, labels: ArrayLike | None = None, *, delta: float | None = None,
        classes: ArrayLike | None = None,
    ) -> ConformalDetector:
        """Score held-out in-distribution data and keep the sorted scores (per class of ``labels`` when
        Mondrian; ``classes=`` is the former name). ``delta``: make the decisions calibration-conditional
        (see the class docs)."""
        labels = renamed(labels, classes, "labels", "classes")
        return self.calibrate_scores(self.detector.score_samples(features), labels, delta=delta)

    def calibrate_scores(
        self, scores: ArrayLike, labels: ArrayLike | None = None, *, delta: float | None = None,
        classes: ArrayLike | None = None,
    ) -> ConformalDetector:
        """Calibrate from precomputed scores of held-out in-distribution data."""
        classes = renamed(labels, classes, "labels", "classes")
        self._check_params()
        self.delta_ = None if delta is None else check_delta(delta)
        s = check_scores(scores, "calibration scores", min_size=self.min_calibration)
        if self.mondrian:
            c = self._check_classes(classes, s.size, "calibrate")
            self.classes_ = np.unique(c)
            self.calibration_ = {int(k): np.sort(s[c == k]) for k in self.classes_}
            small = {k: v.size for k, v in self.calibration_.items() if v.size < self.min_calibration}
            if small:
                raise ValueError(f"classes with fewer than {self.min_calibration} calibration scores: {small}")
        else:
            if classes is not None:
                raise ValueError("labels are only used with mondrian=True")
            self.calibration_ = {-1: np.sort(s)}
        return self

    @staticmethod
    def _check_classes(classes, n: int, where: str) -> np.ndarray:
        if classes is None:
            raise ValueError(f"mondrian=True needs the class of every input: {where}(..., labels=...)")
        c = np.asarray(classes)
        if c.shape != (n,) or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({n},), got dtype {c.dtype} and shape {c.shape}")
        return c

    def _check_calibrated(self) -> None:
        if not hasattr(self, "calibration_"):
            raise ValueError("call calibrate(...) on held-out in-distribution data before testing")

    # -- decisions ---------------------------------------------------------------------------------
    def p_values_from_scores(
        self, scores: ArrayLike, labels: ArrayLike | None = None, *, conditional: str | None = None,
        classes: ArrayLike | None = None,
    ) -> np.ndarray:
        """Conformal p-values of precomputed test scores (small = unusually abnormal). ``conditional="simes"``
        or ``"dkwm"`` gives the calibration-conditional p-values at the ``delta`` given to calibrate."""
        classes = renamed(labels, classes, "labels", "classes")
        self._check_calibrated()
        if conditional is not None:
            delta = self._require_delta("conditional p-values")
            k, n = self._ranks(scores, classes)
            p = np.empty(k.size)
            for size in np.unique(n):
                sel = n == size
                p[sel] = conditional_p_values(k[sel], int(size), delta, conditional)
            return p
        s = check_scores(scores, "test scores")
        if not self.mondrian:
            return conformal_p_values(self.calibration_[-1], s)
        c = self._check_classes(classes, s.size, "p_values")
        unknown = sorted(set(np.unique(c).tolist()) - set(self.calibration_))
        if unknown:
            raise ValueError(f"labels {unknown} had no calibration data")
        p = np.empty(s.size)
        for k, cal in self.calibration_.items():
            sel = c == k
            if sel.any():
                p[sel] = conformal_p_values(cal, s[sel])
        return p

    def p_values(
        self, features: ArrayLike, labels: ArrayLike | None = None, *, conditional: str | None = None,
        classes: ArrayLike | None = None,
    ) -> np.ndarray:
        """Conformal p-values of new inputs (small = unusual); ``conditional`` as in
        :meth:`p_values_from_scores`."""
        labels = renamed(labels, classes, "labels", "classes")
        self._check_calibrated()
        return self.p_values_from_scores(self.detector.score_samples(features), labels, conditional=conditional)

    def _require_delta(self, what: str) -> float:
        delta = getattr(self, "delta_", None)
        if delta is None:
            raise ValueError(f"{what} need calibrate(..., delta=δ): the probability that the guarantee fails over "
                             "the draw of the calibration set")
        return delta

    def flag_rank(self, alpha: float, n: int) -> int:
        """The largest marginal rank k (p = k / (n + 1)) that is flagged at level α with n calibration scores:
        floor(α (n + 1)), or the PAC rank when calibrated with ``delta``."""
        delta = getattr(self, "delta_", None)
        return conformal_rank(alpha, n) if delta is None else pac_rank(check_alpha(alpha), delta, int(n))

    def decision_rule(self, alpha: float | None = None) -> dict[str, dict]:
        """Per calibration group (``"-1"`` without Mondrian): its size n, the flag rank k, the score threshold
        (the k-th smallest calibration score, None when nothing can be flagged) and the p-value limit k / (n + 1)
        at level α: what :meth:`predict` decides by."""
        self._check_calibrated()
        alpha = self._alpha(alpha)
        groups = {}
        for group, cal in self.calibration_.items():
            k = self.flag_rank(alpha, cal.size)
            groups[str(group)] = {"n": int(cal.size), "rank": int(k),
                                  "threshold": float(cal[k - 1]) if k else None, "p_limit": k / (cal.size + 1)}
        return groups

    def threshold(self, alpha: float | None = None, label: int | None = None) -> float:
        """The score below which inputs are flagged at level α (of ``label``'s group when Mondrian): the
        k-th smallest calibration score with k = :meth:`flag_rank`; −inf when nothing can be flagged."""
        self._check_calibrated()
        group = -1 if not self.mondrian else label
        if group not in self.calibration_:
            raise ValueError(f"no calibration group {label!r}")
        cal = self.calibration_[group]
        k = self.flag_rank(self._alpha(alpha), cal.size)
        return float(cal[k - 1]) if k else float("-inf")

    def predict(
        self, features: ArrayLike, alpha: float | None = None, labels: ArrayLike | None = None, *,
        classes: ArrayLike | None = None,
    ) -> np.ndarray:
        """Flags: True for inputs declared out-of-distribution at level alpha, so that
        P(an in-distribution input is flagged) <= alpha."""
        labels = renamed(labels, classes, "labels", "classes")
        self._check_calibrated()
        return self.flags_from_scores(self.detector.score_samples(features), alpha, labels)

    def flags_from_scores(self, scores: ArrayLike, alpha: float | None = None, labels: ArrayLike | None = None
                          ) -> np.ndarray:
        """:meth:`predict` on precomputed scores. The rule p(x) <= alpha is decided exactly: with
        p = k / (n + 1), an input is flagged when k <= floor(alpha (n + 1)), the rank of
        :func:`conformal_threshold`, so the p-value rule and the threshold rule never disagree."""
        alpha = self._alpha(alpha)
        self._check_calibrated()
        k, n = self._ranks(scores, labels)
        limit = np.zeros_like(n)
        for size in np.unique(n):  # one rank per calibration group
            limit[n == size] = self.flag_rank(alpha, int(size))
        self._warn_unreachable(alpha)
        return k <= limit

    def select_from_scores(self, scores: ArrayLike, alpha: float | None = None, labels: ArrayLike | None = None
                           ) -> np.ndarray:
        """:meth:`select` on precomputed scores: Benjamini–Hochberg decided exactly on p = k / (n + 1), or, when
        calibrated with ``delta``, on the calibration-conditional (generalized Simes) p-values."""
        alpha = self._alpha(alpha)
        self._check_calibrated()
        if getattr(self, "delta_", None) is not None:
            return benjamini_hochberg(self.p_values_from_scores(scores, labels, conditional="simes"), alpha)
        k, n = self._ranks(scores, labels)
        self._warn_unreachable(alpha)
        return benjamini_hochberg_exact(k, n + 1, alpha)

    def _ranks(self, scores: ArrayLike, labels: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
        """(k, n) per input: its p-value is exactly k / (n + 1), k = 1 + #{calibration scores <= s} of its group."""
        s = check_scores(scores, "test scores")
        if self.mondrian:
            groups = self._check_classes(labels, s.size, "p_values")
            unknown = sorted(set(np.unique(groups).tolist()) - set(self.calibration_))
            if unknown:
                raise ValueError(f"labels {unknown} had no calibration data")
        else:
            groups = np.full(s.size, -1)
        k = np.zeros(s.size, dtype=np.int64)
        n = np.zeros(s.size, dtype=np.int64)
        for group, cal in self.calibration_.items():
            sel = groups == group
            if sel.any():
                k[sel] = 1 + np.searchsorted(cal, s[sel], side="right")
                n[sel] = cal.size
        return k, n

    def select(
        self, features: ArrayLike, alpha: float | None = None, labels: ArrayLike | None = None, *,
        classes: ArrayLike | None = None,
    ) -> np.ndarray:
        """Flags by Benjamini–Hochberg over the batch: True for inputs declared out-of-distribution, with
        FDR <= alpha among them."""
        labels = renamed(labels, classes, "labels", "classes")
        self._check_calibrated()
        return self.select_from_scores(self.detector.score_samples(features), alpha, labels)

    def _warn_unreachable(self, alpha: float) -> None:
        small = {k: v.size for k, v in self.calibration_.items() if self.flag_rank(alpha, v.size) == 0}
        if small and getattr(self, "delta_", None) is not None:
            where = "" if not self.mondrian else f" in classes {sorted(small)}"
            warnings.warn(
                f"n = {min(small.values())} calibration scores{where} are too few for a PAC threshold at alpha = "
                f"{alpha}, delta = {self.delta_}: nothing can be flagged; at least "
                f"{pac_min_calibration(alpha, self.delta_)} are needed", ConformalWarning, stacklevel=3)
            return
        if small:
            where = "" if not self.mondrian else f" in classes {sorted(small)}"
            n = min(small.values())
            warnings.warn(
                f"alpha = {alpha} is below 1/(n+1) with n = {n} calibration scores{where}: nothing can be "
                "flagged there at this level",
                ConformalWarning,
                stacklevel=3,
            )

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the calibrated detector as one self-contained file (safetensors + JSON, with a digest over all of
        it): the wrapped detector's state is embedded beside the calibration scores, so nothing else is read
        back, and no path is ever stored or followed."""
        from ...io import save_state

        self._check_calibrated()
        if not hasattr(self.detector, "state"):
            raise ValueError(f"only conformood detectors can be saved; this one wraps a {type(self.detector).__name__}"
                             " (a scikit-learn Pipeline or another estimator has no safe file format here: keep its "
                             "steps outside and wrap the conformood detector, or save it with its own tools)")
        det_tensors, det_config = self.detector.state()
        tensors = {f"calibration.{k}": v for k, v in self.calibration_.items()}
        tensors |= {f"detector.{k}": v for k, v in det_tensors.items()}
        config = {"mondrian": self.mondrian, "min_calibration": self.min_calibration,
                  "delta": getattr(self, "delta_", None), "alpha": self.alpha,
                  "feature_source": self.feature_source,
                  "detector": {"kind": type(self.detector).__name__, "config": det_config}}
        save_state(path, tensors, config, kind=KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConformalDetector:
        """Read what :meth:`save` wrote, validating every stored field (the calibration scores must be finite,
        sorted and at least ``min_calibration`` per group)."""
        from ...io import load_state
        from ...scores import detector_from_state

        source = str(path)
        tensors, config = load_state(path, kind=KIND)
        if "detector_file" in config:
            raise ValueError(f"{source} is a calibrated detector in the two-file layout of conformood 0.2, which "
                             "is not read (it followed a path stored in the file); calibrate and save it again")
        unknown = sorted(set(config) - {"mondrian", "min_calibration", "detector", "delta", "alpha", "feature_source"})
        if unknown:
            raise ValueError(f"{source}: unknown field {unknown[0]!r}")
        inner = config.get("detector")
        if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
            raise ValueError(f"{source}: the file holds no embedded detector")
        det_tensors = {k[len("detector."):]: v for k, v in tensors.items() if k.startswith("detector.")}
        detector = detector_from_state(inner.get("kind"), det_tensors, inner["config"], source)
        try:
            obj = cls(detector, mondrian=config.get("mondrian"), min_calibration=config.get("min_calibration"),
                      alpha=config.get("alpha"), feature_source=config.get("feature_source"))
        except ValueError as exc:
            raise ValueError(f"{source}: stored settings are refused: {exc}") from None
        calibration = {}
        for key, value in tensors.items():
            if key.startswith("detector."):
                continue
            group = key.split(".", 1)[1] if key.startswith("calibration.") else ""
            if not group.lstrip("-").isdigit():
                raise ValueError(f"{source}: unexpected tensor {key!r}")
            scores = value.numpy()
            if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.floating) or not np.isfinite(scores).all():
                raise ValueError(f"{source}: calibration scores {key!r} must be finite floats of shape (n,)")
            if scores.size < obj.min_calibration or np.any(np.diff(scores) < 0):
                raise ValueError(f"{source}: calibration scores {key!r} must be sorted, with at least "
                                 f"{obj.min_calibration}")
            calibration[int(group)] = scores
        if not calibration or (not obj.mondrian and set(calibration) != {-1}) or (obj.mondrian and -1 in calibration):
            raise ValueError(f"{source}: the calibration groups {sorted(calibration)} do not match mondrian="
                             f"{obj.mondrian}")
        obj.calibration_ = calibration
        try:
            obj.delta_ = None if config.get("delta") is None else check_delta(config["delta"])
        except ValueError as exc:
            raise ValueError(f"{source}: stored delta is refused: {exc}") from None
        if obj.mondrian:
            obj.classes_ = np.array(sorted(calibration))
        return obj

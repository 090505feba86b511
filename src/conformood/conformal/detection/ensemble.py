"""Combining detectors with the conformal guarantee kept.

Choosing the best of several detectors on test data voids the guarantee; so does averaging raw scores on
different scales with weights tuned afterwards. :class:`ConformalEnsemble` fixes the combination before it
sees any test input and calibrates the combined statistic like any single detector:

1. The held-out in-distribution data are split at random into a *reference* part R and a *calibration* part C.
2. Each detector j turns a score into a p-value against its own reference scores,
   q_j(x) = (1 + #{r in R : s_j(r) ≤ s_j(x)}) / (|R| + 1), which puts every detector on one scale.
3. A fixed rule combines q_1..q_J into one statistic T (small = abnormal): the minimum (``"min_p"``, the
   Bonferroni-style rule), the mean (``"mean_rank"``: q_j is a normalised rank) or Fisher's Σ_j log q_j
   (``"fisher"``).
4. T is calibrated on C by a :class:`~conformood.conformal.ConformalDetector`.

Given R, the statistics T of C and of a new in-distribution input are exchangeable, so the final p-values are
exactly conformal: P(p ≤ α) ≤ α, with every decision of ConformalDetector (flags, BH, PAC thresholds with
``delta``) available. No independence between the detectors is assumed; Fisher's rule is used as a statistic,
not as a test, so its usual independence assumption is not needed either.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import check_alpha, check_positive_int, check_scores
from .detector import ConformalDetector
from .split import ConformalWarning, conformal_p_values

RULES = ("min_p", "mean_rank", "fisher")


def combine_p_values(q: np.ndarray, rule: str) -> np.ndarray:
    """The combined statistic of per-detector p-values ``q`` (n, J), small = abnormal."""
    if rule == "min_p":
        return q.min(axis=1)
    if rule == "mean_rank":
        return q.mean(axis=1)
    if rule == "fisher":
        return np.log(q).sum(axis=1)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def tail_p_values(references: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """q_j with the tail below every reference made continuous: a score s under the lowest reference r_1 gets
    (1 / (|R| + 1)) · exp(−(r_1 − s) / scale), scale = the median reference minus r_1 (1 if zero), instead of
    the floor 1 / (|R| + 1) that every such score shares. Strictly increasing in s there, unchanged elsewhere:
    inputs beyond all references no longer tie, so T orders them. T is still a fixed function of the member
    scores given R, so the calibrated p-values stay exactly conformal."""
    q = conformal_p_values(references, scores)
    low = references[0]
    scale = float(np.median(references) - low) or 1.0
    below = scores < low
    q[below] = np.exp(-(low - scores[below]) / scale) / (references.size + 1)
    return q


class CombinedScore:
    """The combined statistic T of :class:`ConformalEnsemble` as a detector (``score_samples``), with each
    member's sorted reference scores fixed; ``tail``: :func:`tail_p_values` for the member p-values."""

    def __init__(self, detectors: Sequence[Any], rule: str, references: Sequence[np.ndarray],
                 tail: bool = False) -> None:
        self.detectors = list(detectors)
        self.rule = rule
        self.references = [np.sort(r) for r in references]
        self.tail = bool(tail)

    def member_p_values(self, features: Any) -> np.ndarray:
        """(n, J): each detector's p-value against its reference scores."""
        inputs = member_inputs(features, len(self.detectors))
        scores = [check_scores(d.score_samples(x), f"scores of detector {j}") for j, (d, x) in
                  enumerate(zip(self.detectors, inputs))]
        if len({s.size for s in scores}) != 1:
            raise ValueError(f"the detectors scored different numbers of inputs: {[s.size for s in scores]}")
        member = tail_p_values if self.tail else conformal_p_values
        return np.stack([member(r, s) for r, s in zip(self.references, scores)], axis=1)

    def score_samples(self, features: Any) -> np.ndarray:
        return combine_p_values(self.member_p_values(features), self.rule)


def member_inputs(features: Any, n_detectors: int) -> list[Any]:
    """One input per detector: ``features`` itself for all, or a list/tuple of arrays, one per detector (e.g.
    features for kNN and logits for energy)."""
    if isinstance(features, (list, tuple)) and features and all(hasattr(f, "shape") for f in features):
        if len(features) != n_detectors:
            raise ValueError(f"got {len(features)} inputs for {n_detectors} detectors; give one array for all or "
                             "one per detector")
        sizes = {int(f.shape[0]) for f in features}
        if len(sizes) != 1:
            raise ValueError(f"the per-detector inputs have different numbers of rows: {sorted(sizes)}")
        return list(features)
    return [features] * n_detectors


def _take(features: Any, index: np.ndarray, n_detectors: int) -> Any:
    inputs = member_inputs(features, n_detectors)
    parts = [x[index] if hasattr(x, "shape") else np.asarray(x)[index] for x in inputs]
    return parts if isinstance(features, (list, tuple)) and len(parts) > 1 else parts[0]


def _n_rows(features: Any, n_detectors: int) -> int:
    first = member_inputs(features, n_detectors)[0]
    shape = getattr(first, "shape", None) or np.shape(first)
    if not shape:
        raise ValueError("features must have one row per input")
    return int(shape[0])


class ConformalEnsemble:
    """Several fitted detectors combined into one conformal detector (see the module docs).

    >>> ens = ConformalEnsemble([knn, mahalanobis, energy], rule="fisher").calibrate([feats, feats, logits])
    >>> ens.predict([test_feats, test_feats, test_logits], alpha=0.05)

    ``reference_fraction`` of the calibration data (at least one point) sets each detector's scale; the rest
    calibrates the combination. ``seed`` fixes that split. ``tail``: member p-values below every reference are
    made continuous (:func:`tail_p_values`), so inputs beyond all references do not tie (the guarantee is
    unchanged; the order among the most abnormal inputs is kept).
    """

    def __init__(self, detectors: Sequence[Any], rule: str = "fisher", reference_fraction: float = 0.5,
                 seed: int = 0, tail: bool = False) -> None:
        if isinstance(detectors, (str, bytes)) or not isinstance(detectors, Sequence) or len(detectors) < 1:
            raise ValueError("detectors must be a non-empty list of fitted detectors")
        for j, d in enumerate(detectors):
            if not callable(getattr(d, "score_samples", None)):
                raise TypeError(f"detector {j} ({type(d).__name__}) has no score_samples method")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.detectors = list(detectors)
        self.rule = rule
        self.reference_fraction = check_alpha(reference_fraction, "reference_fraction")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        if not isinstance(tail, bool):
            raise ValueError(f"tail must be True or False, got {tail!r}")
        self.tail = tail

    def calibrate(self, features: Any, *, delta: float | None = None) -> ConformalEnsemble:
        """Split held-out in-distribution data into reference and calibration parts and calibrate the
        combination (``delta``: calibration-conditional decisions, as in ConformalDetector)."""
        n = _n_rows(features, len(self.detectors))
        if n < 2:
            raise ValueError(f"at least 2 calibration inputs are needed (one reference, one calibration), got {n}")
        order = np.random.default_rng(self.seed).permutation(n)
        n_ref = min(n - 1, max(1, int(round(self.reference_fraction * n))))
        ref, cal = np.sort(order[:n_ref]), np.sort(order[n_ref:])
        ref_inputs = member_inputs(_take(features, ref, len(self.detectors)), len(self.detectors))
        references = [check_scores(d.score_samples(x), f"reference scores of detector {j}")
                      for j, (d, x) in enumerate(zip(self.detectors, ref_inputs))]
        self.combined_ = CombinedScore(self.detectors, self.rule, references, tail=self.tail)
        self.conformal_ = ConformalDetector(self.combined_).calibrate(_take(features, cal, len(self.detectors)),
                                                                      delta=delta)
        self.n_reference_, self.n_calibration_ = n_ref, n - n_ref
        return self

    def _check_calibrated(self) -> ConformalDetector:
        if not hasattr(self, "conformal_"):
            raise ValueError("the ensemble is not calibrated; call calibrate() first")
        return self.conformal_

    def score_samples(self, features: Any) -> np.ndarray:
        """The combined statistic T (small = abnormal)."""
        self._check_calibrated()
        return self.combined_.score_samples(features)

    def member_p_values(self, features: Any) -> np.ndarray:
        """(n, J): each detector's p-value against its reference scores (not a guarantee by themselves)."""
        self._check_calibrated()
        return self.combined_.member_p_values(features)

    def p_values(self, features: Any, *, conditional: str | None = None) -> np.ndarray:
        """Exactly conformal p-values of the combination."""
        return self._check_calibrated().p_values_from_scores(self.score_samples(features), conditional=conditional)

    def min_p_value(self) -> float:
        """The smallest p-value the ensemble can give: T is lowest when every member's p-value is 1/(|R| + 1), and
        the calibration statistics tied with that lowest T count against it, so this can lie well above 1/(n + 1)
        (the single detector's floor)."""
        cd = self._check_calibrated()
        if self.tail:  # T has no floor: below every calibration statistic, the single detector's floor
            return 1.0 / (self.n_calibration_ + 1)
        floor = combine_p_values(np.full((1, len(self.detectors)), 1.0 / (self.n_reference_ + 1)), self.rule)
        return float(cd.p_values_from_scores(floor)[0])

    def _warn_unreachable(self, alpha: float) -> None:
        smallest = self.min_p_value()
        if check_alpha(alpha) < smallest:
            warnings.warn(f"alpha = {alpha} is below the smallest p-value this ensemble can give ({smallest:.4g}, with "
                          f"{self.n_reference_} reference and {self.n_calibration_} calibration inputs): nothing can "
                          "be flagged at this level", ConformalWarning, stacklevel=3)

    def predict(self, features: Any, alpha: float) -> np.ndarray:
        """True = flagged as OOD at level α (P(flag | in-distribution) ≤ α); warns when α is below
        :meth:`min_p_value`, where nothing can be flagged."""
        self._warn_unreachable(alpha)
        return self._check_calibrated().flags_from_scores(self.score_samples(features), alpha)

    def select(self, features: Any, alpha: float) -> np.ndarray:
        """Benjamini–Hochberg selection at FDR level α on the combination's p-values."""
        self._warn_unreachable(alpha)
        return self._check_calibrated().select_from_scores(self.score_samples(features), alpha)


def compare_with_members(ensemble: ConformalEnsemble, calibration: Any, test: Any, is_inlier: ArrayLike,
                         alpha: float) -> dict[str, dict[str, float]]:
    """FPR at α and AUROC of the combination beside each member calibrated alone on the same calibration
    data (all of it), on the same test inputs; keys ``ensemble`` and ``detector_j``."""
    from ...metrics import auroc  # metrics sit below conformal

    inlier = np.asarray(is_inlier, dtype=bool)
    cal_inputs = member_inputs(calibration, len(ensemble.detectors))
    test_inputs = member_inputs(test, len(ensemble.detectors))
    rows = {}
    for j, (d, c, t) in enumerate(zip(ensemble.detectors, cal_inputs, test_inputs)):
        cd = ConformalDetector(d).calibrate(c)
        s = d.score_samples(t)
        rows[f"detector_{j}"] = {"fpr": float(cd.flags_from_scores(s, alpha)[inlier].mean()),
                                 "auroc": float(auroc(s, inlier))}
    s = ensemble.score_samples(test)
    rows["ensemble"] = {"fpr": float(ensemble.conformal_.flags_from_scores(s, alpha)[inlier].mean()),
                        "auroc": float(auroc(s, inlier))}
    return rows

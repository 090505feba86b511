"""A standalone exported scorer: one ``torch.export`` program that needs only torch.

:func:`export_scorer` turns a calibrated :class:`~conformood.conformal.ConformalDetector` (and optionally the
encoder that makes its features) into a program mapping inputs to ``(score, p_value, flag)``:

* the score is the detector's (s_con, s_con*, Sun's kNN, Mahalanobis, the class-conditional Gaussian, s_center,
  s_ℓ2, MSP, energy or MaxLogit), computed in the same precision as the library (float64 after the encoder);
* p = (1 + #{calibration scores ≤ score}) / (n + 1), the conformal p-value, from the stored calibration scores;
* flag = the exact rank rule of :meth:`ConformalDetector.predict` at the stored α (the PAC rank when the
  detector was calibrated with ``delta``).

The program holds the encoder's weights, the detector's statistics (the normalised bank, the means and the
precision, …) and the sorted calibration scores. Its metadata (``conformood.json`` in the archive) records α,
δ, the detector, the input it expects and the provenance. Load it anywhere with
``torch.export.load(path).module()``; conformood is not needed. Where ``torch.export`` cannot express the
program, TorchScript (``torch.jit.trace``) is written instead and the metadata says so.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._validation import check_alpha
from .conformal import ConformalDetector
from .io import atomic_path
from .results import provenance
from .scores.knn import RESCORE_MARGIN, exact_similarities_block, knn_score

METADATA = "conformood.json"


class _Normalize(nn.Module):
    """Rows over their L2 norm as ``scores.knn.l2_normalize`` computes them (in float64, rounded once to the
    input's dtype), then cast to ``dtype``: bit for bit the library's unit vectors."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.float64)
        return (wide / torch.linalg.vector_norm(wide, dim=1, keepdim=True)).to(x.dtype).to(self.dtype)


class _KNNHead(nn.Module):
    def __init__(self, bank: torch.Tensor, k: int, kind: str) -> None:
        super().__init__()
        self.register_buffer("bank", bank)
        self.normalize = _Normalize(bank.dtype)
        self.k, self.kind = k, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.normalize(x)
        n_candidates = min(self.bank.shape[0], self.k + RESCORE_MARGIN)
        candidates = torch.topk(q @ self.bank.T, n_candidates, dim=1).indices
        top = exact_similarities_block(q, self.bank, candidates, self.k)  # the library's own exact re-scoring
        return knn_score(top, self.kind, x)


class _MahalanobisHead(nn.Module):
    def __init__(self, means: torch.Tensor, precision: torch.Tensor, scale: float) -> None:
        super().__init__()
        centre = means.mean(dim=0)
        mu = means - centre
        self.register_buffer("centre", centre)
        self.register_buffer("precision", precision)
        self.register_buffer("mu_p", mu @ precision)
        self.register_buffer("mu_term", (mu @ precision * mu).sum(dim=1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.to(torch.float64) / self.scale - self.centre
        x_term = (xc @ self.precision * xc).sum(dim=1)
        dist = x_term[:, None] - 2.0 * (xc @ self.mu_p.T) + self.mu_term[None, :]
        return -torch.clamp(dist, min=0.0).min(dim=1).values


class _GaussianHead(nn.Module):
    def __init__(self, means: torch.Tensor, cholesky: torch.Tensor, logdet: torch.Tensor, scale: float) -> None:
        super().__init__()
        d = means.shape[1]
        self.register_buffer("means", means)
        self.register_buffer("cholesky", cholesky)
        self.register_buffer("constant", -(d * math.log(2 * math.pi) + logdet) - 2.0 * d * math.log(scale))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = (x.to(torch.float64) / self.scale)[None, :, :] - self.means[:, None, :]  # (c, m, d)
        w = torch.linalg.solve_triangular(self.cholesky, diff.transpose(1, 2), upper=False)  # (c, d, m)
        per_class = -(w * w).sum(dim=1) + self.constant[:, None]  # (c, m)
        return per_class.max(dim=0).values


class _CenterHead(nn.Module):
    def __init__(self, center: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("center", center)
        self.normalize = _Normalize(torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x.to(torch.float64)) @ self.center


class _RowwiseHead(nn.Module):
    """Scores computed row by row from the input alone: s_l2 on features, MSP / energy / MaxLogit on logits."""

    def __init__(self, kind: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.kind, self.temperature = kind, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.to(torch.float64)
        if self.kind == "l2":
            return (z * z).sum(dim=1)
        if self.kind == "msp":
            return torch.softmax(z, dim=1).max(dim=1).values
        if self.kind == "energy":
            return self.temperature * torch.logsumexp(z / self.temperature, dim=1)
        return z.max(dim=1).values


def score_head(detector: Any) -> tuple[nn.Module, str]:
    """The torch module computing ``detector.score_samples`` and what it takes (``"features"`` or
    ``"logits"``); a clear error for detectors that cannot be exported."""
    from . import scores

    def t(a: Any) -> torch.Tensor:
        return torch.as_tensor(a).clone()

    kind = type(detector).__name__
    if isinstance(detector, scores.KNNCosineDetector):
        sub = {"KNNCosineDetector": "mean", "KNNCosineNormDetector": "norm", "KNNSunDetector": "sun"}.get(kind)
        if sub is None:
            raise ValueError(f"{kind} cannot be exported")
        return _KNNHead(t(detector.bank_), detector.neighbours(), sub), "features"
    if isinstance(detector, scores.MahalanobisDetector):
        return _MahalanobisHead(t(detector.means_), t(detector.precision_), float(detector.scale_)), "features"
    if isinstance(detector, scores.ClassConditionalGaussianDetector):
        return _GaussianHead(t(detector.means_), t(detector.cholesky_), t(detector.logdet_),
                             float(detector.scale_)), "features"
    if isinstance(detector, scores.CenterDetector):
        return _CenterHead(t(detector.center_)), "features"
    if isinstance(detector, scores.L2NormDetector):
        return _RowwiseHead("l2"), "features"
    if isinstance(detector, scores.EnergyDetector):
        return _RowwiseHead("energy", float(detector.temperature)), "logits"
    if isinstance(detector, scores.MSPDetector):
        return _RowwiseHead("msp"), "logits"
    if isinstance(detector, scores.MaxLogitDetector):
        return _RowwiseHead("maxlogit"), "logits"
    raise ValueError(f"{kind} cannot be exported; exportable detectors: knn_cosine, knn_cosine_norm, knn_sun, "
                     "mahalanobis, gaussian, center, l2_norm, msp, energy, maxlogit")


class Scorer(nn.Module):
    """inputs → (score, conformal p-value, flag at the stored α)."""

    def __init__(self, encoder: nn.Module | None, head: nn.Module, calibration: torch.Tensor, limit: int) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.head = head
        self.register_buffer("calibration", calibration.to(torch.float64).contiguous())
        self.limit = int(limit)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        score = self.head(self.encoder(x)).detach()  # a scorer, not a graph: outputs never require grad
        rank = torch.searchsorted(self.calibration, score, right=True) + 1
        p_value = rank.to(torch.float64) / (self.calibration.shape[0] + 1)
        return score, p_value, rank <= self.limit


def build_scorer(detector: ConformalDetector, alpha: float, encoder: nn.Module | None = None
                 ) -> tuple[Scorer, str]:
    """The :class:`Scorer` module of a calibrated (non-Mondrian) detector, and the input kind of its head."""
    if not isinstance(detector, ConformalDetector):
        raise TypeError(f"a calibrated ConformalDetector is needed, got {type(detector).__name__}")
    if not hasattr(detector, "calibration_"):
        raise ValueError("the detector is not calibrated; call calibrate() first")
    if detector.mondrian:
        raise ValueError("a Mondrian detector needs each input's class; export a detector calibrated on all classes")
    alpha = check_alpha(alpha)
    head, takes = score_head(detector.detector)
    calibration = torch.as_tensor(detector.calibration_[-1])
    limit = detector.flag_rank(alpha, calibration.numel())
    return Scorer(encoder, head, calibration, limit).eval(), takes


def export_scorer(detector: ConformalDetector, alpha: float, example: torch.Tensor, out: str | os.PathLike,
                  encoder: nn.Module | None = None, metadata: dict | None = None) -> dict:
    """Write the scorer of ``detector`` at level α as one ``torch.export`` program (``.pt2``); ``example`` is one
    batch of the program's inputs (images when ``encoder`` is given, else features or logits), whose first
    dimension becomes dynamic. Returns the metadata stored beside the program."""
    scorer, takes = build_scorer(detector, alpha, encoder)
    example = example.detach().cpu()
    if example.ndim < 2 or example.shape[0] < 2:
        raise ValueError("example must be a batch of at least 2 inputs")
    meta = {
        "format": "conformood-scorer/1",
        "alpha": float(alpha),
        "delta": getattr(detector, "delta_", None),
        "flag_rank": scorer.limit,
        "n_calibration": int(scorer.calibration.numel()),
        "detector": type(detector.detector).__name__,
        "input": {"kind": "images" if encoder is not None else takes, "shape": ["batch", *example.shape[1:]],
                  "dtype": str(example.dtype).replace("torch.", "")},
        "outputs": ["score (float64, higher = more in-distribution)", "p_value (float64)",
                    "flag (bool, True = out-of-distribution at alpha)"],
        **(metadata or {}),
    }
    meta.setdefault("provenance", provenance({k: v for k, v in meta.items() if k != "provenance"}))
    out = Path(out)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            program = torch.export.export(scorer, (example,), dynamic_shapes=({0: batch},))
        meta["runtime"] = "torch.export"
        buffer = io.BytesIO()  # saved to memory first: the archive writer wants a .pt2 name or a buffer
        torch.export.save(program, buffer, extra_files={METADATA: json.dumps(meta)})
        with atomic_path(out) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to TorchScript, and says why
        meta["runtime"] = "torchscript"
        meta["export_error"] = f"{type(exc).__name__}: {exc}"[:500]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the fallback, deprecated or not
            traced = torch.jit.trace(scorer, (example,), check_trace=False)
            with atomic_path(out) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={METADATA: json.dumps(meta)})
    return meta


def load_scorer(path: str | os.PathLike) -> tuple[Any, dict]:
    """(callable program, metadata) of a file written by :func:`export_scorer`; what a deployment without
    conformood does in three lines of torch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scorer at {path}")
    files = {METADATA: ""}
    try:
        program = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=files).module()
    except Exception:  # noqa: BLE001 - not an export archive: try TorchScript
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                program = torch.jit.load(str(path), _extra_files=files)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path} is not a scorer written by conformood export ({type(exc).__name__})") from None
    try:
        meta = json.loads(files[METADATA])
    except (ValueError, TypeError):
        raise ValueError(f"{path} has no readable {METADATA} metadata") from None
    return program, meta

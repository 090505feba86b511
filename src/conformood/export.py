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

**It fails safe.** The program checks its input inside the graph: a NaN or infinite value, or (for the
kNN and centre scores, which need a direction) an all-zero feature row, raises an error instead of giving a
decision; another dtype or width than the example's fails the program's own input guards (the TorchScript
fallback casts to the example's dtype). The file is sealed: the zip comment holds the SHA-256 of the whole
archive (program, weights, calibration scores and metadata), and :func:`load_scorer` refuses any file whose
bytes differ. A scorer that could never flag (α below the smallest attainable p-value, or too few calibration
scores for the PAC rank) is refused unless ``allow_no_flags=True``, which the metadata records.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
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
SEAL = b"conformood-sha256:"
_EOCD = b"PK\x05\x06"  # end of a zip archive's central directory; its last field is the comment


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
    """inputs → (score, conformal p-value, flag at the stored α); non-finite inputs (and all-zero feature rows for
    the scores that need a direction) raise an error inside the program instead of giving a decision."""

    def __init__(self, encoder: nn.Module | None, head: nn.Module, calibration: torch.Tensor, limit: int,
                 input_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.head = head
        self.register_buffer("calibration", calibration.to(torch.float64).contiguous())
        self.limit = int(limit)
        self.input_dtype = input_dtype
        self.needs_direction = isinstance(head, (_KNNHead, _CenterHead))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.to(self.input_dtype)
        torch._assert_async(torch.isfinite(x).all(), "conformood scorer: the input holds NaN or infinite values; "
                            "no decision is made")
        features = self.encoder(x)
        if not isinstance(self.encoder, nn.Identity):
            torch._assert_async(torch.isfinite(features).all(), "conformood scorer: the encoder produced NaN or "
                                "infinite features; no decision is made")
        if self.needs_direction:
            torch._assert_async((features.abs().amax(dim=1) > 0).all(), "conformood scorer: an all-zero feature "
                                "row has no direction (cosine scores); no decision is made")
        score = self.head(features).detach()  # a scorer, not a graph: outputs never require grad
        rank = torch.searchsorted(self.calibration, score, right=True) + 1
        p_value = rank.to(torch.float64) / (self.calibration.shape[0] + 1)
        return score, p_value, rank <= self.limit


def build_scorer(detector: ConformalDetector, alpha: float, encoder: nn.Module | None = None,
                 input_dtype: torch.dtype = torch.float32) -> tuple[Scorer, str]:
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
    return Scorer(encoder, head, calibration, limit, input_dtype).eval(), takes


def _check_example(example: Any, detector: ConformalDetector, encoder: nn.Module | None) -> torch.Tensor:
    """The example batch as a float tensor, checked against what the detector was fitted on."""
    if not isinstance(example, torch.Tensor):
        try:
            example = torch.as_tensor(example)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"example must be a tensor or an array, got {type(example).__name__}") from None
    example = example.detach().cpu()
    if not example.is_floating_point():
        raise ValueError(f"example must be floating point (the program casts its inputs to the example's dtype), "
                         f"got {example.dtype}")
    if example.ndim < 2 or example.shape[0] < 2:
        raise ValueError(f"example must be a batch of at least 2 inputs, got shape {tuple(example.shape)}")
    if not torch.isfinite(example).all():
        raise ValueError("example holds NaN or infinite values")
    width = getattr(detector.detector, "n_features_in_", None)
    if encoder is None:
        if example.ndim != 2:
            raise ValueError(f"example must be (batch, features) without an encoder, got shape {tuple(example.shape)}")
        if width is not None and example.shape[1] != width:
            raise ValueError(f"example has {example.shape[1]} features per row but the detector was fitted on {width}")
        return example
    try:
        with torch.no_grad():
            made = encoder.eval()(example)
    except Exception as exc:  # noqa: BLE001 - any failure of the encoder on the example is one clear error
        raise ValueError(f"the encoder cannot take the example of shape {tuple(example.shape)} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(made, torch.Tensor) or made.ndim != 2 or (width is not None and made.shape[1] != width):
        shape = tuple(made.shape) if isinstance(made, torch.Tensor) else type(made).__name__
        raise ValueError(f"the encoder makes {shape} from the example, but the detector was fitted on {width} "
                         "features per row")
    return example


def _seal(archive: bytes) -> bytes:
    """The archive with its SHA-256 in the zip comment (which every zip reader, torch's included, skips)."""
    end = archive.rfind(_EOCD)
    if end < 0 or archive[end + 20:end + 22] != b"\x00\x00" or len(archive) != end + 22:
        raise ValueError("the program archive has an unexpected layout; cannot seal it")
    comment = SEAL + hashlib.sha256(archive).hexdigest().encode()
    return archive[:end + 20] + len(comment).to_bytes(2, "little") + comment


def _unseal(data: bytes, source: str) -> None:
    """Refuse ``data`` unless its zip comment holds the SHA-256 of the archive without the comment."""
    end = data.rfind(_EOCD)
    if end < 0 or len(data) < end + 22:
        raise ValueError(f"{source} is not a scorer written by conformood export (not a zip archive)")
    size = int.from_bytes(data[end + 20:end + 22], "little")
    comment = data[end + 22:]
    if len(comment) != size or not comment.startswith(SEAL):
        raise ValueError(f"{source} carries no conformood seal: it was not written by conformood export (0.4 or "
                         "later), or it was altered")
    original = data[:end + 20] + b"\x00\x00"
    if hashlib.sha256(original).hexdigest().encode() != comment[len(SEAL):]:
        raise ValueError(f"{source} does not match its seal (SHA-256): the file was altered or damaged; export it "
                         "again")


def export_scorer(detector: ConformalDetector, alpha: float, example: torch.Tensor, out: str | os.PathLike,
                  encoder: nn.Module | None = None, metadata: dict | None = None, allow_no_flags: bool = False
                  ) -> dict:
    """Write the scorer of ``detector`` at level α as one ``torch.export`` program (``.pt2``); ``example`` is one
    batch of the program's inputs (images when ``encoder`` is given, else features or logits; floating point,
    the dtype inputs are cast to), whose first dimension becomes dynamic. A scorer that could never flag is
    refused unless ``allow_no_flags``. Returns the metadata stored beside the program."""
    if not isinstance(detector, ConformalDetector):
        raise TypeError(f"a calibrated ConformalDetector is needed, got {type(detector).__name__}")
    example = _check_example(example, detector, encoder)
    scorer, takes = build_scorer(detector, alpha, encoder, example.dtype)
    if scorer.limit == 0 and not allow_no_flags:
        delta = getattr(detector, "delta_", None)
        why = (f"with delta = {delta} the PAC rank needs more calibration scores" if delta is not None else
               "alpha is below 1/(n+1)")
        raise ValueError(f"this scorer could never flag an input: n = {scorer.calibration.numel()} calibration scores "
                         f"at alpha = {alpha} ({why}); calibrate on more data, raise alpha, or pass "
                         "allow_no_flags=True (recorded in the metadata)")
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
        "checks": "NaN/inf inputs" + (" and all-zero feature rows" if scorer.needs_direction else "") + " raise an "
                  "error; another dtype or width than the input's is refused",
        "allow_no_flags": bool(allow_no_flags),
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
            tmp.write_bytes(_seal(buffer.getvalue()))
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to TorchScript, and says why
        meta["runtime"] = "torchscript"
        meta["export_error"] = f"{type(exc).__name__}: {exc}"[:500]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the fallback, deprecated or not
            traced = torch.jit.trace(scorer, (example,), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={METADATA: json.dumps(meta)})
            with atomic_path(out) as tmp:
                tmp.write_bytes(_seal(buffer.getvalue()))
    return meta


@contextlib.contextmanager
def _quiet_torch() -> Any:
    """Silence torch's own logging and warnings while a file is probed (its errors are reported as one line)."""
    logger = logging.getLogger("torch")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def load_scorer(path: str | os.PathLike) -> tuple[Any, dict]:
    """(callable program, metadata) of a file written by :func:`export_scorer`; what a deployment without
    conformood does in three lines of torch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scorer at {path}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path} is empty (0 bytes): not a scorer")
    _unseal(data, str(path))  # every byte checked before torch reads any
    files = {METADATA: ""}
    with _quiet_torch():
        try:
            program = torch.export.load(io.BytesIO(data), extra_files=files).module()
        except Exception:  # noqa: BLE001 - not an export archive: try TorchScript
            try:
                program = torch.jit.load(io.BytesIO(data), _extra_files=files)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"{path} is not a scorer written by conformood export ({type(exc).__name__})"
                                 ) from None
    try:
        meta = json.loads(files[METADATA])
    except (ValueError, TypeError):
        raise ValueError(f"{path} has no readable {METADATA} metadata") from None
    return program, meta

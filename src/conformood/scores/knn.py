"""k-nearest-neighbour cosine similarity, s_con."""

from __future__ import annotations

import os

import numpy as np
import torch

from .._validation import check_features, check_positive_int
from .base import BaseDetector


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(
            f"{int(np.count_nonzero(norms == 0))} feature vector(s) are all zero: cosine similarity is undefined"
        )
    return x / norms


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def topk_inner_products_torch(
    queries: np.ndarray, bank: np.ndarray, k: int, query_chunk: int = 1024, bank_chunk: int = 65536
) -> np.ndarray:
    """The k largest inner products of each query with the bank, sorted decreasing; (m, k).

    Memory is bounded by ``query_chunk * (k + bank_chunk)`` similarities whatever the bank's size.
    """
    q_all = torch.from_numpy(queries)
    b_all = torch.from_numpy(bank)
    out = np.empty((queries.shape[0], k), dtype=queries.dtype)
    for i in range(0, q_all.shape[0], query_chunk):
        q = q_all[i : i + query_chunk]
        best = torch.full((q.shape[0], 0), float("-inf"), dtype=q.dtype)
        for j in range(0, b_all.shape[0], bank_chunk):
            sims = q @ b_all[j : j + bank_chunk].T
            best = torch.topk(torch.cat([best, sims], dim=1), k=min(k, best.shape[1] + sims.shape[1]), dim=1).values
        out[i : i + q.shape[0]] = best.numpy()
    return out


def topk_inner_products_faiss(queries: np.ndarray, bank: np.ndarray, k: int, query_chunk: int = 65536) -> np.ndarray:
    """Same as :func:`topk_inner_products_torch` with faiss's exact ``IndexFlatIP`` (float32)."""
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((queries.shape[0], k), dtype=np.float32)
    for i in range(0, q32.shape[0], query_chunk):
        sims, _ = index.search(q32[i : i + query_chunk], k)
        out[i : i + sims.shape[0]] = sims
    return out


class KNNCosineDetector(BaseDetector):
    """s_con: mean cosine similarity to the k nearest training features (FIRM paper eq. 3).

    ``s_con(x) = 1/k sum_{j in N_k(x)} f~(x) . f~(x_j)`` with f~ = f / ||f||; higher = more in-distribution.
    The score is invariant to rescaling of either feature set.

    Parameters
    ----------
    k : number of neighbours (FIRM uses k = 1 for its comparisons).
    backend : ``"auto"`` (faiss when installed, else torch), ``"faiss"`` (exact ``IndexFlatIP``, float32) or
        ``"torch"`` (chunked matrix products in the features' precision).
    query_chunk : queries searched at once, which bounds memory.
    """

    def __init__(self, k: int = 1, backend: str = "auto", query_chunk: int = 1024) -> None:
        self.k = k
        self.backend = backend
        self.query_chunk = query_chunk

    def _resolved_backend(self) -> str:
        if self.backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {self.backend!r}")
        if self.backend == "auto":
            return "faiss" if _faiss_available() else "torch"
        if self.backend == "faiss" and not _faiss_available():
            raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu")
        return self.backend

    def fit(self, features, labels=None) -> KNNCosineDetector:
        """Store the L2-normalised training features as the neighbour bank (``labels`` is ignored)."""
        k = check_positive_int(self.k, "k")
        check_positive_int(self.query_chunk, "query_chunk")
        self._resolved_backend()
        x = check_features(features, "features")
        if x.shape[0] < k:
            raise ValueError(f"k = {k} neighbours requested but only {x.shape[0]} training features given")
        self.bank_ = _normalize(x)
        self.n_features_in_ = x.shape[1]
        return self

    def score_samples(self, features) -> np.ndarray:
        """s_con of each row of ``features``, shape (m,)."""
        self._check_fitted()
        q = _normalize(check_features(features, "features", n_features=self.n_features_in_))
        bank = self.bank_
        if self._resolved_backend() == "faiss":
            top = topk_inner_products_faiss(q, bank, self.k, query_chunk=self.query_chunk)
        else:
            dtype = np.promote_types(q.dtype, bank.dtype)
            top = topk_inner_products_torch(q.astype(dtype), bank.astype(dtype), self.k, query_chunk=self.query_chunk)
        return top.astype(np.float64).mean(axis=1)

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted detector (safetensors + JSON parameters)."""
        from ..io import save_state

        self._check_fitted()
        save_state(path, {"bank": self.bank_}, self.get_params(), kind=type(self).__name__)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KNNCosineDetector:
        """Load a detector written by :meth:`save`."""
        from ..io import load_state

        tensors, params = load_state(path, kind=cls.__name__)
        det = cls(**params)
        det.bank_ = tensors["bank"].numpy()
        det.n_features_in_ = det.bank_.shape[1]
        return det

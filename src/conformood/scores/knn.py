"""k-nearest-neighbour scores on normalised features: s_con, s_con* and Sun et al.'s KNN."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .._validation import check_features, check_positive_int
from .base import BaseDetector

_NORMALIZE_ROWS = 16384  # rows normalised at once (float64 temporaries)
# the torch fallback keeps at most this many similarities in memory at once (256 MB in float32)
_TORCH_BLOCK = 1 << 26


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, for any scale the dtype holds: rows whose squared entries would overflow
    or underflow are first divided by their largest entry (so s_con is truly scale invariant). Raises when a row
    is all zeros (its direction is undefined). The division runs in float64 and is rounded once to the input's
    dtype, so that any implementation doing the same (the exported scorer) gets the same unit vectors bit for
    bit, whatever its summation order."""
    info = np.finfo(x.dtype)
    amax = np.max(np.abs(x), axis=1, keepdims=True)
    zero = amax[:, 0] == 0
    if np.any(zero):
        raise ValueError(
            f"{int(np.count_nonzero(zero))} feature vector(s) are all zero: cosine similarity is undefined"
        )
    extreme = (amax[:, 0] > np.sqrt(info.max / x.shape[1])) | (amax[:, 0] < np.sqrt(info.tiny) / info.eps)
    if np.any(extreme):  # rescaled rows only, so that every other row keeps its exact value
        x = x.copy()
        x[extreme] = x[extreme] / amax[extreme]
    out = np.empty(x.shape, dtype=x.dtype)
    for s in range(0, x.shape[0], _NORMALIZE_ROWS):  # the norm and the quotient in float64, rounded once to x's
        wide = x[s : s + _NORMALIZE_ROWS].astype(np.float64, copy=False)  # dtype; in blocks, so memory stays flat
        out[s : s + _NORMALIZE_ROWS] = wide / np.linalg.norm(wide, axis=1, keepdims=True)
    return out


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def topk_inner_products_torch(
    queries: np.ndarray, bank: np.ndarray, k: int, query_chunk: int = 1024, bank_chunk: int = 65536,
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The k largest inner products of each query with the bank, sorted decreasing; (m, k) (and their bank
    indices with ``return_indices``).

    Memory is bounded by ``query_chunk * (k + bank_chunk)`` similarities whatever the bank's size.
    """
    q_all = torch.from_numpy(np.ascontiguousarray(queries))
    b_all = torch.from_numpy(np.ascontiguousarray(bank))
    out = np.empty((queries.shape[0], k), dtype=queries.dtype)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for i in range(0, q_all.shape[0], query_chunk):
        q = q_all[i : i + query_chunk]
        best = torch.full((q.shape[0], 0), float("-inf"), dtype=q.dtype)
        best_ids = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for j in range(0, b_all.shape[0], bank_chunk):
            sims = q @ b_all[j : j + bank_chunk].T
            both = torch.cat([best, sims], dim=1)
            both_ids = torch.cat([best_ids, torch.arange(j, j + sims.shape[1]).expand(q.shape[0], -1)], dim=1)
            best, pos = torch.topk(both, k=min(k, both.shape[1]), dim=1)
            best_ids = torch.gather(both_ids, 1, pos)
        out[i : i + q.shape[0]] = best.numpy()
        ids[i : i + q.shape[0]] = best_ids.numpy()
    return (out, ids) if return_indices else out


#: extra candidates re-scored beyond the k nearest, so that the exact top k never depends on how the search
#: rounded near-equal similarities
RESCORE_MARGIN = 8
_RESCORE_BLOCK = 1 << 22  # float64 products held at once while re-scoring (32 MB)


def exact_similarities(queries: torch.Tensor, bank: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of the exact inner products of each query with its candidate bank rows, sorted decreasing.

    Each product is formed in float64 (exact for float32 inputs) and summed by torch over the feature axis, one
    row at a time in the same way whatever the batch; so any implementation calling this function (the library,
    the exported scorer) gets the same scores bit for bit, whichever search (faiss, a torch matrix product, a
    different batch size) proposed the candidates.
    """
    rows = max(1, _RESCORE_BLOCK // max(1, candidates.shape[1] * queries.shape[1]))
    out = [exact_similarities_block(queries[i : i + rows], bank, candidates[i : i + rows], k)
           for i in range(0, queries.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.float64)


def exact_similarities_block(queries: torch.Tensor, bank: torch.Tensor, candidates: torch.Tensor,
                             k: int) -> torch.Tensor:
    """:func:`exact_similarities` for one block of queries at once (no loop over the batch, so that
    ``torch.export`` keeps the batch dimension dynamic)."""
    neighbours = bank[candidates].to(torch.float64)  # (m, c, d)
    return torch.topk((queries.to(torch.float64)[:, None, :] * neighbours).sum(dim=-1), k, dim=1).values


def build_faiss_index(bank: np.ndarray, index: str = "flat", nlist: int = 1024, nprobe: int = 16, seed: int = 0) -> Any:
    """A faiss inner-product index over ``bank``: exact ``IndexFlatIP`` or approximate ``IndexIVFFlat``."""
    import faiss

    data = np.ascontiguousarray(bank, dtype=np.float32)
    d = data.shape[1]
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = min(nlist, max(1, data.shape[0] // 39))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = data if data.shape[0] <= 256 * nlist else data[rng.choice(data.shape[0], 256 * nlist, replace=False)]
        idx.cp.seed = seed
        idx.train(sample)
        idx.nprobe = nprobe
    else:
        raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
    idx.add(data)
    return idx


def topk_inner_products_faiss(queries: np.ndarray, bank_or_index: Any, k: int, query_chunk: int = 16384,
                              return_indices: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Same as :func:`topk_inner_products_torch` through faiss (float32); accepts a bank or a built index."""
    index = bank_or_index if not isinstance(bank_or_index, np.ndarray) else build_faiss_index(bank_or_index)
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for i in range(0, q32.shape[0], query_chunk):
        sims, found = index.search(q32[i : i + query_chunk], k)
        out[i : i + sims.shape[0]] = sims
        ids[i : i + sims.shape[0]] = found
    return (out, ids) if return_indices else out


def knn_score(top: torch.Tensor, kind: str, raw: torch.Tensor | None = None) -> torch.Tensor:
    """The score from the sorted top-k similarities (m, k), in torch so that the exported scorer runs the same
    arithmetic: ``"mean"`` (s_con), ``"norm"`` (s_con times the float64 norm of the raw features ``raw``) or
    ``"sun"`` (minus the distance to the k-th neighbour)."""
    if kind == "sun":
        return -torch.sqrt(torch.clamp(2.0 - 2.0 * top[:, -1], min=0.0))
    score = top.mean(dim=1)
    if kind == "norm":
        score = score * torch.linalg.vector_norm(raw.to(torch.float64), dim=1)
    return score


class _NormalizedBankDetector(BaseDetector):
    """Shared machinery: an L2-normalised training bank searched by faiss or chunked torch."""

    _learned = {"bank_": ("n", "d"), "n_features_in_": "int"}

    def _check_params(self) -> None:
        self._validate_search_params()

    def _check_loaded(self) -> None:
        if self.neighbours() > self.bank_.shape[0]:
            raise ValueError(f"n_neighbors = {self.neighbours()} exceeds the {self.bank_.shape[0]} stored features")
        self._index = None

    def _validate_search_params(self) -> str:
        check_positive_int(self.neighbours(), "n_neighbors")
        check_positive_int(self.query_chunk, "query_chunk")
        if self.index not in ("flat", "ivf"):
            raise ValueError(f"index must be 'flat' or 'ivf', got {self.index!r}")
        if self.backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {self.backend!r}")
        if self.backend == "faiss" and not _faiss_available():
            raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu")
        backend = self.backend if self.backend != "auto" else ("faiss" if _faiss_available() else "torch")
        if self.index == "ivf" and backend != "faiss":
            raise ValueError("index='ivf' needs the faiss backend")
        return backend

    _former_params = {"k": "n_neighbors"}

    def neighbours(self) -> int:
        """The neighbour count ``n_neighbors``."""
        return self.n_neighbors

    def _fit_bank(self, features) -> np.ndarray:
        k = check_positive_int(self.neighbours(), "n_neighbors")
        self._validate_search_params()
        x = check_features(features, "features")
        if x.shape[0] < k:
            raise ValueError(f"n_neighbors = {k} requested but only {x.shape[0]} training features given")
        self.bank_ = l2_normalize(x)
        self.n_features_in_ = x.shape[1]
        self._index = None
        return x

    def _top_similarities(self, features) -> tuple[np.ndarray, np.ndarray]:
        """(top-k cosine similarities (m, k) sorted decreasing, raw query features)."""
        self._check_fitted()
        raw = check_features(features, "features", n_features=self.n_features_in_)
        q = l2_normalize(raw)
        k = self.neighbours()
        n_candidates = min(self.bank_.shape[0], k + RESCORE_MARGIN)
        dtype = np.promote_types(q.dtype, self.bank_.dtype)
        q, bank = q.astype(dtype, copy=False), self.bank_.astype(dtype, copy=False)
        if self._validate_search_params() == "faiss":
            if getattr(self, "_index", None) is None:
                self._index = build_faiss_index(self.bank_, self.index, self.nlist, self.nprobe)
            _, ids = topk_inner_products_faiss(q, self._index, n_candidates, query_chunk=self.query_chunk,
                                               return_indices=True)
            if np.any(ids < 0):  # an approximate index can return fewer than asked: search those rows exactly
                short = np.flatnonzero((ids < 0).any(axis=1))
                ids[short] = topk_inner_products_torch(q[short], bank, n_candidates, return_indices=True)[1]
        else:
            bank_chunk = max(1, min(bank.shape[0], _TORCH_BLOCK // min(self.query_chunk, 1024)))
            _, ids = topk_inner_products_torch(q, bank, n_candidates, min(self.query_chunk, 1024), bank_chunk,
                                               return_indices=True)
        top = exact_similarities(torch.from_numpy(q), torch.from_numpy(bank), torch.from_numpy(ids), k)
        return top.numpy(), raw


class KNNCosineDetector(_NormalizedBankDetector):
    """s_con: mean cosine similarity to the k nearest training features (FIRM paper eq. 3).

    ``s_con(x) = 1/k sum_{j in N_k(x)} f~(x) . f~(x_j)`` with f~ = f / ||f||; higher = more in-distribution.
    The score is invariant to rescaling of either feature set.

    Parameters
    ----------
    n_neighbors : number of neighbours k (FIRM uses k = 1 for its comparisons).
    backend : ``"auto"`` (faiss when installed, else torch), ``"faiss"`` or ``"torch"`` (chunked matrix
        products in the features' precision, memory bounded whatever the bank's size).
    index : ``"flat"`` (exact ``IndexFlatIP``) or ``"ivf"`` (approximate ``IndexIVFFlat`` with ``nlist``
        lists, ``nprobe`` probed) for very large banks.
    query_chunk : queries searched at once, which bounds memory.
    """

    def __init__(
        self, n_neighbors: int = 1, backend: str = "auto", index: str = "flat", nlist: int = 1024, nprobe: int = 16,
        query_chunk: int = 16384,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.backend = backend
        self.index = index
        self.nlist = nlist
        self.nprobe = nprobe
        self.query_chunk = query_chunk

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> KNNCosineDetector:
        """Store the L2-normalised training features as the neighbour bank (``labels`` is ignored)."""
        self._fit_bank(features)
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        """s_con of each row of ``features``, shape (m,)."""
        top, _ = self._top_similarities(features)
        return knn_score(torch.from_numpy(top), "mean").numpy()


class KNNCosineNormDetector(KNNCosineDetector):
    """s_con*: s_con times the feature norm, s_con(x) * ||f(x)|| (FIRM paper eq. 4)."""

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        top, raw = self._top_similarities(features)
        return knn_score(torch.from_numpy(top), "norm", torch.from_numpy(np.ascontiguousarray(raw))).numpy()


class KNNSunDetector(KNNCosineDetector):
    """Sun et al. (2022) KNN: minus the Euclidean distance to the k-th nearest normalised training feature.

    On unit vectors ||u - v|| = sqrt(2 - 2 u.v), so the k-th largest cosine similarity gives the k-th
    nearest distance; score = -sqrt(max(0, 2 - 2 cos_k)). Default k = 50 as in the paper.

    **Convention (differs from the authors' code).** The knn-ood reference returns faiss's *squared* L2
    distance (-||u - v||^2); this detector returns the distance itself. The square root is monotone, so the
    ranking, every AUROC and every conformal decision are the same.
    """

    def __init__(
        self, n_neighbors: int = 50, backend: str = "auto", index: str = "flat", nlist: int = 1024, nprobe: int = 16,
        query_chunk: int = 16384,
    ) -> None:
        super().__init__(n_neighbors=n_neighbors, backend=backend, index=index, nlist=nlist, nprobe=nprobe,
                         query_chunk=query_chunk)

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        top, _ = self._top_similarities(features)
        return knn_score(torch.from_numpy(top), "sun").numpy()

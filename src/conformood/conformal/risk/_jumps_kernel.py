"""Compiled selection of the calibration jump (fast path of :mod:`conformood.conformal.risk.control`).

Both calibrations (CRC COAT eq. 5, COAT Algorithm 1's t') pick the smallest jump point e at which the cumulative jump
height Σ 1/|Y_i| reaches a level, where image i's positive pixel j jumps at e = τ_i − p̂_j (τ_i = 0 for
CRC). The numpy path materialises every positive pixel through masking, gathers and float64 temporaries;
here the maps are read once:

1. :func:`jump_histogram` takes each image while it sits in cache: one branch-free loop counts |Y_i| and
   checks every probability lies in [0, 1]; a second adds 1/|Y_i| to a histogram of the jump points (one
   per thread, summed afterwards) and copies the positive probabilities and their buckets to compact buffers;
2. the bucket where the cumulative height crosses the level is then known, and :func:`gather_bucket`
   collects that bucket's jumps (a few hundred) with their images from the compact buffers only.

Images are split over the threads in contiguous chunks; chunk c writes its positives from offset
c · (images per chunk) · (pixels per image). A jump is computed as float64 τ minus the probability widened to
float64, exactly as the numpy path does, so both paths return the same float.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _bucket(e, lo, scale, n_buckets):
    b = int((e - lo) * scale)
    if b < 0:
        return 0
    if b >= n_buckets:
        return n_buckets - 1
    return b


@njit(parallel=True, cache=True, nogil=True)
def jump_histogram(probs, masks, tau, one_is_always_in, lo, scale, n_buckets, n_chunks):
    """``probs`` (n, N) float, ``masks`` (n, N) bool. Returns (sizes |Y_i|, weighted histogram (n_chunks,
    n_buckets), weight of the always-in pixels (p̂ = 1 when ``one_is_always_in``), whether some value is
    outside [0, 1] or NaN, compact positive probabilities)."""
    n, npx = probs.shape
    per = (n + n_chunks - 1) // n_chunks
    sizes = np.zeros(n, np.int64)
    hist = np.zeros((n_chunks, n_buckets), np.float64)
    always = np.zeros(n_chunks, np.float64)
    bad = np.zeros(n_chunks, np.bool_)
    positives = np.empty(n * npx, probs.dtype)
    buckets = np.empty(n * npx, np.uint16)  # n_buckets <= 65536
    for c in prange(n_chunks):
        pos = c * per * npx
        for i in range(c * per, min(n, (c + 1) * per)):
            k = 0
            valid = 0
            for j in range(npx):  # branch-free, so it vectorises; NaN fails both comparisons
                v = probs[i, j]
                valid += (v >= 0.0) & (v <= 1.0)
                k += masks[i, j]
            sizes[i] = k
            if valid != npx:
                bad[c] = True
            if k == 0 or bad[c]:
                continue
            w = 1.0 / k
            t = tau[i]
            for j in range(npx):
                if masks[i, j]:
                    v = probs[i, j]
                    positives[pos] = v
                    if one_is_always_in and v >= 1.0:
                        always[c] += w
                        buckets[pos] = n_buckets  # never a target: the always-in pixels are not jumps
                    else:
                        b = _bucket(t - np.float64(v), lo, scale, n_buckets)
                        hist[c, b] += w
                        buckets[pos] = b
                    pos += 1
    return sizes, hist, always.sum(), bad.any(), positives, buckets


@njit(parallel=True, cache=True, nogil=True)
def gather_bucket(positives, buckets, sizes, npx, tau, target, n_chunks):
    """The jumps in bucket ``target`` and their image indices, read from :func:`jump_histogram`'s compact
    buffers (positive probabilities and their buckets)."""
    n = sizes.shape[0]
    per = (n + n_chunks - 1) // n_chunks
    found = np.zeros(n_chunks, np.int64)
    values = np.empty(positives.shape[0], np.float64)
    images = np.empty(positives.shape[0], np.int64)
    for c in prange(n_chunks):
        pos = c * per * npx
        out = pos
        for i in range(c * per, min(n, (c + 1) * per)):
            t = tau[i]
            for q in range(pos, pos + sizes[i]):
                if buckets[q] == target:
                    values[out] = t - np.float64(positives[q])
                    images[out] = i
                    out += 1
            pos += sizes[i]
        found[c] = out - c * per * npx
    total = found.sum()
    out_v = np.empty(total, np.float64)
    out_i = np.empty(total, np.int64)
    k = 0
    for c in range(n_chunks):
        start = c * per * npx
        for q in range(start, start + found[c]):
            out_v[k] = values[q]
            out_i[k] = images[q]
            k += 1
    return out_v, out_i

"""The kernels of SLICER's compiled quantization (:func:`._slicer_quant.quantize_fast`):
statistics, kept counts and single-piece grids in a few passes (the top-K thresholds stay
:func:`._slicer_quant.kth_largest`'s: compiled selections measured 2-3x slower than its
sampled bracket).

Imported after numba's cache folder is set; top-level functions so numba's on-disk cache finds
them in every process (see :mod:`.entropy._ans_kernels`). The float32 arithmetic is numpy's:
the same operations in the same order, and the mean of the in-cell positions is numpy's
pairwise float32 sum divided in float64, so the grids and levels equal the numpy path's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._slicer_quant import MAX_LEVELS


@njit(cache=True, nogil=True)
def stats(x):  # pragma: no cover - compiled
    """(max, min, count > 0, count < 0, all finite) of a float32 vector."""
    hi = -np.inf
    lo = np.inf
    n_pos = 0
    n_neg = 0
    finite = True
    for v in x:
        if not np.isfinite(v):
            finite = False
        hi = max(hi, v)
        lo = min(lo, v)
        n_pos += v > 0
        n_neg += v < 0
    return hi, lo, n_pos, n_neg, finite


@njit(cache=True, nogil=True)
def count_kept(x, t_pos, t_neg):  # pragma: no cover - compiled
    """How many values are ``>= t_pos`` and how many ``<= -t_neg`` (float32 thresholds)."""
    n_pos = 0
    n_neg = 0
    for v in x:
        n_pos += v >= t_pos
        n_neg += v <= -t_neg
    return n_pos, n_neg


@njit(cache=True, nogil=True)
def block32(a, lo, n):  # pragma: no cover - compiled
    """numpy's float32 sum of at most 128 values: sequential below 8, else 8 partial sums."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(n):
            res = np.float32(res + a[lo + i])
        return res
    r = np.empty(8, np.float32)
    for j in range(8):
        r[j] = a[lo + j]
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] = np.float32(r[j] + a[lo + i + j])
        i += 8
    res = np.float32(np.float32(np.float32(r[0] + r[1]) + np.float32(r[2] + r[3]))
                     + np.float32(np.float32(r[4] + r[5]) + np.float32(r[6] + r[7])))
    while i < n:
        res = np.float32(res + a[lo + i])
        i += 1
    return res


@njit(cache=True, nogil=True)
def pairwise32(a):  # pragma: no cover - compiled
    """numpy's pairwise float32 sum of ``a``: halves (cut at a multiple of 8) summed
    separately above 128 values. An explicit stack, not recursion: numba's on-disk cache
    does not load recursive functions safely."""
    t_lo = np.empty(128, np.int64)
    t_n = np.empty(128, np.int64)
    t_ph = np.empty(128, np.int64)
    vals = np.empty(128, np.float32)
    ts = 1
    vs = 0
    t_lo[0], t_n[0], t_ph[0] = 0, a.size, 0
    while ts:
        lo, n, ph = t_lo[ts - 1], t_n[ts - 1], t_ph[ts - 1]
        n2 = n // 2
        n2 -= n2 % 8
        if n <= 128:
            vals[vs] = block32(a, lo, n)
            vs += 1
            ts -= 1
        elif ph == 0:
            t_ph[ts - 1] = 1
            t_lo[ts], t_n[ts], t_ph[ts] = lo, n2, 0
            ts += 1
        elif ph == 1:
            t_ph[ts - 1] = 2
            t_lo[ts], t_n[ts], t_ph[ts] = lo + n2, n - n2, 0
            ts += 1
        else:
            vals[vs - 2] = np.float32(vals[vs - 2] + vals[vs - 1])
            vs -= 1
            ts -= 1
    return vals[0]


@njit(cache=True, nogil=True)
def quantize(x, t_pos, t_neg, s_pos, d_pos, s_neg, d_neg, n_keep_pos, n_keep_neg):
    """Keep mask and levels (C order) for one-piece grids of each kept sign (``n_keep_*``:
    how many values the threshold keeps, 0 for a dropped sign), and per sign its cells and
    the mean in-cell position; cells of 0 for a sign that exceeded ``MAX_LEVELS``."""  # noqa
    n = x.size
    kept = np.zeros(n, np.bool_)
    levels = np.empty(n_keep_pos + n_keep_neg, np.int32)
    neg_at = np.empty(n_keep_neg, np.int64)  # where the negative levels sit in ``levels``
    stride_p = max(1, n_keep_pos // 1024)
    stride_n = max(1, n_keep_neg // 1024)
    samp_p = np.empty((n_keep_pos + stride_p - 1) // stride_p, np.float32)
    samp_n = np.empty((n_keep_neg + stride_n - 1) // stride_n, np.float32)
    top_p = np.float32(0.0)
    top_n = np.float32(0.0)
    ip = 0
    ineg = 0
    j = 0
    for i in range(n):
        v = x[i]
        if n_keep_pos and v >= t_pos:
            q = np.float32(np.float32(v - s_pos) / d_pos)
            k = max(np.floor(q), np.float32(0.0))
            top_p = max(top_p, k)
            if ip % stride_p == 0:
                samp_p[ip // stride_p] = np.float32(q - k)
            levels[j] = np.int32(k)
            kept[i] = True
            ip += 1
            j += 1
        elif n_keep_neg and v <= -t_neg:
            q = np.float32(np.float32(np.float32(-v) - s_neg) / d_neg)
            k = max(np.floor(q), np.float32(0.0))
            top_n = max(top_n, k)
            if ineg % stride_n == 0:
                samp_n[ineg // stride_n] = np.float32(q - k)
            levels[j] = np.int32(k)
            neg_at[ineg] = j
            kept[i] = True
            ineg += 1
            j += 1
    cells_p = np.int64(top_p) + 1
    cells_n = np.int64(top_n) + 1
    if cells_p > MAX_LEVELS:
        cells_p = 0
    if cells_n > MAX_LEVELS:
        cells_n = 0
    mean_p = 0.5
    mean_n = 0.5
    if samp_p.size:
        mean_p = np.float64(np.float32(np.float64(pairwise32(samp_p))
                                       / samp_p.size))
    if samp_n.size:
        mean_n = np.float64(np.float32(np.float64(pairwise32(samp_n))
                                       / samp_n.size))
    if n_keep_pos:  # the negative levels come after the positive ones in the alphabet
        for i in range(ineg):
            levels[neg_at[i]] += cells_p
    return kept, levels, cells_p, cells_n, mean_p, mean_n, ip, ineg

"""The kernels of SLICER's compiled quantization: statistics, kept counts and single-piece
grids in a few passes, for :func:`._slicer_quant.quantize_fast` (whose top-K thresholds stay
:func:`._slicer_quant.kth_largest`'s) and for the fast encoder
(:func:`._slicer_fused_enc.encode_fast`: :func:`thresholds` by radix selection, ~15 us where
numpy's statistics, sampled bracket and counts took ~50 us on a ResNet-20 ``layer2`` sample,
and :func:`quantize_dense`, vectorised).

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


@njit(cache=True, nogil=True)
def stats_bits(x):  # pragma: no cover - compiled
    """:func:`stats` on the float32 bits (``key``: the bits made signed-monotone), in integer
    reductions the compiler vectorises: a float max/min is an ordered chain without fast-math
    and measured ~10x slower. Max and min come back as float32; the zero's sign may differ
    (-0.0 for 0.0), which no caller sees: they compare them with 0 or to a positive value."""
    b = x.view(np.int32)
    top = np.int32(-2147483648)
    bot = np.int32(2147483647)
    n_pos = 0
    n_neg = 0
    for i in range(b.size):
        key = b[i] ^ ((b[i] >> 31) & 0x7FFFFFFF)
        top = max(top, key)
        bot = min(bot, key)
        n_pos += key > 0
        n_neg += key < -1  # -0.0 is -1
    finite = b.size == 0 or (top < 0x7F800000 and bot > -2139095041)  # beyond: inf or NaN
    out = np.empty(2, np.int32)
    out[0] = top ^ ((top >> 31) & 0x7FFFFFFF)
    out[1] = bot ^ ((bot >> 31) & 0x7FFFFFFF)
    f = out.view(np.float32)
    return f[0], f[1], n_pos, n_neg, finite


@njit(cache=True, nogil=True)
def bins(x):  # pragma: no cover - compiled
    """Histogram of the top 12 bits of the float32s (sign, exponent, 3 mantissa bits: 1/8
    octave bins), two interleaved halves so that runs of one bin do not chain their adds
    (int32 counts: under 2**32 elements, 16 GiB of float32)."""
    b = x.view(np.int32)
    h = np.zeros((2, 4096), np.int32)
    n = b.size
    for i in range(0, n - 1, 2):
        h[0, (b[i] >> 20) & 0xFFF] += 1
        h[1, (b[i + 1] >> 20) & 0xFFF] += 1
    if n % 2:
        h[0, (b[n - 1] >> 20) & 0xFFF] += 1
    return h


@njit(cache=True, nogil=True)
def kth_kept(x, h, k, sign):  # pragma: no cover - compiled
    """(``k``-th largest of ``sign * x``, how many values of ``sign * x`` are ``>=`` it),
    exactly, for ``k`` up to the count of values of that sign: radix selection, the bin of
    the answer from :func:`bins` ``h``, then a selection among that bin's few values. Replaces
    :func:`._slicer_quant.kth_largest`'s numpy calls (the same order statistic) at ~1/4 of
    its time; a sampled bracket compiled measured slower (selections over ReLU zeros)."""
    top = 0 if sign > 0 else 0x800
    above = 0
    b = 0x7FF
    while b > 0 and above + h[0, top + b] + h[1, top + b] < k:
        above += h[0, top + b] + h[1, top + b]
        b -= 1
    bits = x.view(np.int32)
    band = np.empty(h[0, top + b] + h[1, top + b], np.float32)
    nb = 0
    for i in range(x.size):
        if (bits[i] >> 20) & 0xFFF == top + b:  # rare: one bin
            v = sign * x[i]
            if v > 0:
                band[nb] = v
                nb += 1
    need = k - above
    t = np.partition(band[:nb], nb - need)[nb - need]
    c = above
    for i in range(nb):
        c += band[i] >= t
    return t, c


@njit(cache=True, nogil=True)
def thresholds(x, keep_pos, keep_neg):  # pragma: no cover - compiled
    """:func:`stats_bits`, then per sign :func:`._slicer_quant.threshold` and how many values
    it keeps (``inf`` and 0 for a sign kept at 0 %): (max, min, finite, t+, t-, kept+, kept-)."""
    hi, lo, n_pos, n_neg, finite = stats_bits(x)
    ts = np.full(2, np.inf)
    kept = np.zeros(2, np.int64)
    if not finite:
        return hi, lo, finite, ts[0], ts[1], kept[0], kept[1]
    counts = (n_pos if hi > 0 else 0, n_neg if lo < 0 else 0)
    h = np.zeros((1, 1), np.int32)
    for i in range(2):
        k = int(np.rint((keep_pos if i == 0 else keep_neg) * counts[i]))  # round(): ties even
        if k <= 0 or counts[i] == 0:
            continue
        if h.size == 1:
            h = bins(x)
        t, c = kth_kept(x, h, min(k, counts[i]), np.float32(1.0 if i == 0 else -1.0))
        ts[i] = t
        kept[i] = c
    return hi, lo, finite, ts[0], ts[1], kept[0], kept[1]


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_dense(x, t_pos, t_neg, d_pos, d_neg, n_keep_pos, n_keep_neg, mask, sym):
    """:func:`quantize` (grids of one piece starting at their thresholds) into dense outputs:
    ``mask`` (uint8) and ``sym`` (int32, every position's symbol of the shared alphabet,
    ``L`` for dropped ones). Branch-free (the keep test is a coin flip for the predictor):
    one vectorised pass quantizes (numpy's error model: no zero-division check, which
    blocked vectorising; the steps are never 0), a second gathers the kept positions of each
    sign (their in-cell positions make the mean's sample). (cells+, cells-, mean+, mean-);
    cells of 0 for a sign past ``MAX_LEVELS``. Levels: ``floor`` as truncation of a value
    clamped to [-1, 2**24], which is ``max(floor(q), 0)`` wherever it is below the cap."""  # noqa
    n = x.size
    zero = np.float32(0.0)
    low = np.float32(-1.0)
    cap = np.float32(1 << 24)  # past MAX_LEVELS, and still exact in int32
    lim_n = -t_neg
    top_p = np.int32(0)
    top_n = np.int32(0)
    for i in range(n):
        v = x[i]
        kp = v >= t_pos
        kn = v <= lim_n
        pos = v > zero
        a = np.float32(v - t_pos) if pos else np.float32(np.float32(-v) - t_neg)
        q = np.float32(a / (d_pos if pos else d_neg))
        q = q if q < cap else cap
        q = q if q > low else low
        lv = np.int32(q)
        lv = lv if lv > 0 else np.int32(0)
        top_p = max(top_p, lv if kp else np.int32(0))
        top_n = max(top_n, lv if kn else np.int32(0))
        sym[i] = lv if kp else (np.int32(-2) - lv if kn else np.int32(-1))
        mask[i] = np.uint8(kp | kn)
    idx_p = np.empty(n_keep_pos + 1, np.int32)  # kept positions of each sign, in order
    idx_n = np.empty(n_keep_neg + 1, np.int32)
    if n_keep_pos:
        ip = 0
        for i in range(n):
            idx_p[min(ip, n_keep_pos)] = i
            ip += sym[i] >= 0
    if n_keep_neg:
        ineg = 0
        for i in range(n):
            idx_n[min(ineg, n_keep_neg)] = i
            ineg += sym[i] <= -2
    cells_p = top_p + 1 if top_p < MAX_LEVELS else 0
    cells_n = top_n + 1 if top_n < MAX_LEVELS else 0
    base_n = cells_p if n_keep_pos else 0
    dropped = base_n + (cells_n if n_keep_neg else 0)
    for i in range(n):
        s = sym[i]
        sym[i] = s if s >= 0 else (dropped if s == -1 else base_n - 2 - s)
    mean_p = 0.5
    mean_n = 0.5
    for sign in range(2):
        count = n_keep_pos if sign == 0 else n_keep_neg
        if count == 0:
            continue
        stride = max(1, count // 1024)
        samp = np.empty((count + stride - 1) // stride, np.float32)
        for j in range(samp.size):
            if sign == 0:
                q = np.float32(np.float32(x[idx_p[j * stride]] - t_pos) / d_pos)
            else:
                q = np.float32(np.float32(np.float32(-x[idx_n[j * stride]]) - t_neg) / d_neg)
            samp[j] = np.float32(q - max(np.floor(q), zero))
        mean = np.float64(np.float32(np.float64(pairwise32(samp)) / samp.size))
        if sign == 0:
            mean_p = mean
        else:
            mean_n = mean
    return cells_p, cells_n, mean_p, mean_n

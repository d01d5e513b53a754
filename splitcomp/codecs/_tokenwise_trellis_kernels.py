"""The compiled search of :mod:`._tokenwise_trellis`: its numpy reference's float64 operations
row by row, the predictions' sums in SIMD lanes (:func:`._tokenwise_predict_kernels._dot`),
so the paths are the same but where two costs lie within rounding of each other. Imported
after numba's cache folder is set; top-level functions, so numba's on-disk cache finds them
in every process (see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._tokenwise_predict_kernels import _dot
from ._tokenwise_trellis import KT, U_CLIP


@njit(cache=True, nogil=True)
def _point(q, k):  # pragma: no cover - compiled
    if q == 0 or k == 0:
        return float(k)
    return k - 0.5 if k > 0 else k + 0.5


@njit(cache=True, nogil=True)
def _symbol(k):  # pragma: no cover - compiled
    if abs(k) <= KT:
        return k + KT
    return 2 * KT + 1 + (k & 1)


@njit(cache=True, nogil=True)
def search(e, d, a, fb, bits0, bits1, tab, lam):  # pragma: no cover - compiled
    """Indices (R, C) int64 and decoded values minus centre (R, C) float64 of the best paths:
    :func:`._tokenwise_trellis.search` (``a`` or ``fb`` of shape (0, 0): none)."""
    r, c = e.shape
    predicted, shaped = a.shape[0] > 0, fb.shape[0] > 0
    inf = np.inf
    out_k = np.zeros((r, c), np.int64)
    out_x = np.zeros((r, c))
    xh = np.zeros((4, c))
    err = np.zeros((4, c))
    ks = np.zeros((4, c), np.int64)
    nxh = np.zeros((4, c))
    nerr = np.zeros((4, c))
    nks = np.zeros((4, c), np.int64)
    cost = np.empty(4)
    new = np.empty(4)
    src = np.empty(4, np.int64)
    val = np.empty(4)
    kv = np.empty(4, np.int64)
    for i in range(r):
        b0 = bits0[tab[i]]
        b1 = bits1[tab[i]]
        cost[:] = inf
        cost[0] = 0.0
        for j in range(c):
            new[:] = inf
            src[:] = -1
            for s in range(4):
                if cost[s] >= inf:
                    continue
                p = _dot(xh[s], a[j], j) if predicted else 0.0
                t = e[i, j] + _dot(err[s], fb[j], j) if shaped else e[i, j]
                u = (t - p) / d[i, j]
                u = U_CLIP if u != u else min(max(u, -U_CLIP), U_CLIP)  # NaN: refused later
                q = s >> 1
                if q == 0:
                    kc = int(np.floor(u))
                else:
                    sg = 1.0 if u > 0 else (-1.0 if u < 0 else 0.0)
                    kc = int(np.floor(u + 0.5 * sg))
                for k in range(kc - 1, kc + 3):
                    pt = _point(q, k)
                    sym = _symbol(k)
                    b = b0[j, sym] if q == 0 else b1[j, sym]
                    cc = cost[s] + (u - pt) ** 2 + lam * b
                    h, lo = s >> 1, s & 1
                    ns = (((lo ^ (k & 1)) << 1) | h)  # NEXT[s][k & 1]
                    if cc < new[ns]:
                        new[ns] = cc
                        src[ns] = s
                        val[ns] = p + pt * d[i, j]
                        kv[ns] = k
            for ns in range(4):
                s = src[ns]
                if s < 0:
                    continue
                nxh[ns, :j] = xh[s, :j]
                nerr[ns, :j] = err[s, :j]
                nks[ns, :j] = ks[s, :j]
                nxh[ns, j] = val[ns]
                nerr[ns, j] = e[i, j] - val[ns]
                nks[ns, j] = kv[ns]
            xh, nxh = nxh, xh
            err, nerr = nerr, err
            ks, nks = nks, ks
            cost[:] = new
        best = 0
        for s in range(1, 4):
            if cost[s] < cost[best]:
                best = s
        out_k[i] = ks[best]
        out_x[i] = xh[best]
    return out_k, out_x

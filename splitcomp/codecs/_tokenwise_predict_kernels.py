"""The compiled encoder loop of :mod:`._tokenwise_predict` (closed-loop prediction across a
token's channels, and :mod:`._tokenwise_shaping`'s targets moved by the errors made): the
float64 operations of its numpy reference, the prediction's sum in SIMD lanes (as numpy's
BLAS dot sums in its own order), so the symbols are the same but where a residual lies within
rounding of a cell edge. Imported after numba's cache folder is set; top-level functions, so
numba's on-disk cache finds them in every process (see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def _dot(x, y, n):  # pragma: no cover - compiled
    """``sum(x[:n] * y[:n])`` in SIMD lanes (fastmath: the sum's order is free, as BLAS's is
    in the numpy path; only a residual within rounding of a cell edge can tell them apart)."""
    s = 0.0
    for k in range(n):
        s += x[k] * y[k]
    return s


@njit(cache=True, nogil=True)
def closed_loop(e, d, a, fb, theta, delta):  # pragma: no cover - compiled
    """Symbols and quantizer inputs (R, C) float64: :func:`._tokenwise_predict.closed_loop`
    (``a`` or ``fb`` of shape (0, 0): none)."""
    r, c = e.shape
    q = np.zeros((r, c))
    u = np.zeros((r, c))
    xh = np.zeros(c)
    err = np.zeros(c)
    predicted, shaped = a.shape[0] > 0, fb.shape[0] > 0
    for i in range(r):
        for j in range(c):
            p = _dot(xh, a[j], j) if predicted else 0.0
            t = e[i, j] + _dot(err, fb[j], j) if shaped else e[i, j]
            uj = (t - p) / d[i, j]
            u[i, j] = uj
            s = 1.0 if uj > 0 else (-1.0 if uj < 0 else 0.0)
            qj = s * np.floor(abs(uj) + 0.5 - theta)
            q[i, j] = qj
            sq = 1.0 if qj > 0 else (-1.0 if qj < 0 else 0.0)
            xh[j] = p + (qj - sq * delta[j]) * d[i, j]
            err[j] = e[i, j] - xh[j]
    return q, u

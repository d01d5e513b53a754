"""The compiled encoder loop of :mod:`._tokenwise_predict` (closed-loop prediction across a
token's channels): the same float64 operations in the same order as its numpy reference, so
the symbols are the same. Imported after numba's cache folder is set; a top-level function so
numba's on-disk cache finds it in every process (see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def quantize_closed_loop(e, d, a, theta, delta):  # pragma: no cover - compiled
    """Symbols (R, C) float64 (whole numbers): :func:`._tokenwise_predict.quantize_closed_loop`."""
    r, c = e.shape
    q = np.zeros((r, c))
    xh = np.zeros(c)
    for i in range(r):
        for j in range(c):
            p = 0.0
            for k in range(j):
                p += xh[k] * a[j, k]
            u = (e[i, j] - p) / d[i, j]
            s = 1.0 if u > 0 else (-1.0 if u < 0 else 0.0)
            qj = s * np.floor(abs(u) + 0.5 - theta)
            q[i, j] = qj
            sq = 1.0 if qj > 0 else (-1.0 if qj < 0 else 0.0)
            xh[j] = p + (qj - sq * delta[j]) * d[i, j]
    return q

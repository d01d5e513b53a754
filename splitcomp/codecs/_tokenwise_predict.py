"""Closed-loop prediction across a token's channels for the ``tokenwise`` codec.

An LLM's hidden state has strongly correlated channels (the Gaussian coding gain of its
covariance is ~0.65 bit per element at SmolLM2's middle layer), yet rotating it (KLT,
Hadamard) measured worse: a rotation mixes the heavy-tailed channels into Gaussian-looking
ones, and the per-channel error weights stop applying. Prediction keeps the channel basis:
channel ``j`` is coded as its residual against a linear prediction from the channels before
it, *as the decoder will have decoded them*,

    r_j = (x_j - mu_j) - sum_{k<j} A_jk (xhat_k - mu_k)
    xhat_j = mu_j + sum_{k<j} A_jk (xhat_k - mu_k) + rhat_j

so every channel's error is its own residual's quantization error (at most half a step, the
same bound as without prediction) and only the entropy of what is coded drops (DPCM; ~0.23
bit per element at 2.7 bits on SmolLM2, ``docs/results/llm_bits.json``). The symbols do not
depend on the prediction, so the decoder reads them all first and reconstructs with one
triangular product: ``xhat - mu = (I - A)^-1 rhat``.

``A`` is strictly lower triangular, fitted by :func:`fit_predictor` as the best linear
predictor of each channel from the *decoded* earlier ones: the LDL factorisation of the
calibration covariance plus the quantization noise ``D_j^2 / 12`` on the diagonal (the noise
is what a decoded channel adds; without it the predictor over-trusts noisy inputs). The
encoder's loop over channels is sequential by nature: compiled (numba) when the codecs'
compiled path is on, numpy otherwise (the reference; the two sum the prediction in their
own orders, so a residual within rounding of a cell edge may get the neighbouring symbol:
the decoder is the same either way).
"""

from __future__ import annotations

import numpy as np

from . import _slicer_jit

#: how far the calibration covariance is shrunk toward its diagonal: a few thousand tokens
#: estimate C^2 / 2 coefficients (SmolLM2, 2,044 tokens, 576 channels: 0.2 coded 0.05 bit
#: per element fewer than 0 on held-out text, 0.4 as few as 0.2)
SHRINK = 0.2


def fit_predictor(e: np.ndarray, steps: np.ndarray, shrink: float = SHRINK) -> np.ndarray:
    """Coefficients ``A`` (C, C), strictly lower triangular, float16-representable, of the
    best linear prediction of each column of ``e`` (N, C) (values minus their centre) from
    the earlier columns as decoded with quantization steps ``steps`` (C,), the covariance
    shrunk by ``shrink`` toward its diagonal."""
    e = np.asarray(e, np.float64)
    c = e.shape[1]
    k = e.T @ e / max(e.shape[0], 1)
    k = (1.0 - shrink) * k + shrink * np.diag(np.diag(k))
    k[np.diag_indices(c)] += np.asarray(steps, np.float64) ** 2 / 12.0
    k[np.diag_indices(c)] += 1e-9 * max(float(np.trace(k)) / c, 1e-30)
    g = np.linalg.cholesky(k)  # K = G G^T; the unit factor L = G / diag(G), K = L D L^T
    unit = g / np.diag(g)[None, :]
    a = np.eye(c) - np.linalg.inv(unit)  # e_j - sum_k A_jk e_k are uncorrelated innovations
    a = np.tril(a, -1)
    return np.clip(a, -60000, 60000).astype(np.float16).astype(np.float64)


def reconstruction(a: np.ndarray) -> np.ndarray:
    """``(I - A)^-1`` (C, C), float64: decoded residuals (rows) times its transpose are the
    decoded values minus the centre. None of a hostile context's coefficients can make it
    singular (unit diagonal), but they can make it overflow: the codec refuses (typed) what
    does not decode to finite values."""
    c = a.shape[0]
    with np.errstate(all="ignore"):
        return np.linalg.inv(np.eye(c) - a)


def quantize_closed_loop(e: np.ndarray, d: np.ndarray, a: np.ndarray, theta: float,
                         delta: np.ndarray) -> np.ndarray:
    """Symbols (R, C) float64 (whole numbers; the caller checks their range) of rows ``e``
    (values minus centre) with steps ``d`` (R, C):
    each channel's residual against the prediction from the rows' decoded earlier channels,
    quantized as ``sign(u) floor(|u| + 1/2 - theta)``, decoded as ``(q - sign(q) delta) d``."""
    return closed_loop(e, d, a, None, theta, delta)[0]


def closed_loop(e: np.ndarray, d: np.ndarray, a: np.ndarray | None, fb: np.ndarray | None,
                theta: float, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_closed_loop`'s symbols and what each one rounded, in steps (R, C), with
    ``a`` None for no prediction, and each channel's target moved by the feedback ``fb``
    (strictly lower triangular) of the errors made on the row's earlier channels (None: none;
    :mod:`._tokenwise_shaping`)."""
    e = np.ascontiguousarray(e, np.float64)
    d = np.ascontiguousarray(d, np.float64)
    delta = np.ascontiguousarray(delta, np.float64)
    if _slicer_jit.active():
        from ._tokenwise_predict_kernels import closed_loop as kernel

        return kernel(e, d, _NONE if a is None else np.ascontiguousarray(a, np.float64),
                      _NONE if fb is None else np.ascontiguousarray(fb, np.float64),
                      float(theta), delta)
    r, c = e.shape
    xh, err = np.zeros((r, c)), np.zeros((r, c))
    q, u = np.zeros((r, c)), np.zeros((r, c))
    for j in range(c):
        p = 0.0 if a is None else xh[:, :j] @ a[j, :j]
        t = e[:, j] if fb is None else e[:, j] + err[:, :j] @ fb[j, :j]
        u[:, j] = (t - p) / d[:, j]
        qj = np.sign(u[:, j]) * np.floor(np.abs(u[:, j]) + 0.5 - theta)
        q[:, j] = qj
        xh[:, j] = p + (qj - np.sign(qj) * delta[j]) * d[:, j]
        err[:, j] = e[:, j] - xh[:, j]
    return q, u


#: what the kernel takes for an absent matrix
_NONE = np.zeros((0, 0))


def cross_fitted_residuals(ctx, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Fit ``ctx.pred`` on ``x`` and return the residuals (closed loop, level 0) the knots
    describe. They are cross-fitted: each half of the rows is predicted by a predictor fitted
    on the other half, as held-out text is (in-sample residuals are smaller, and tables
    fitted to them cost ~0.2 bit per element more on other text). The predictor kept is
    fitted on every row whose scale is within 4x of the median (an attention sink's massive
    activations do not set it)."""
    typical = np.abs(codes - np.median(codes)) <= 16
    d = ctx.steps(1.0, codes)
    out = np.empty(x.shape, np.float64)
    half = x.shape[0] // 2
    for fit, use in ((slice(half, None), slice(0, half)), (slice(0, half), slice(half, None))):
        rows = typical[fit]
        ctx.pred = fit_predictor((x[fit] - ctx.mu)[rows] if rows.sum() >= 2
                                 else x[fit] - ctx.mu, ctx.scale * ctx.w)
        ctx._recon = None
        if ctx.shaping is None:  # the residual: its decoding error plus its symbol
            q = ctx.quantize(x[use], d[use])
            out[use] = (x[use] - ctx.reconstruct(q, d[use])) + q * d[use]
        else:
            out[use] = ctx.quantize_inputs(x[use], d[use])[1] * d[use]
    ctx.pred = fit_predictor((x - ctx.mu)[typical], ctx.scale * ctx.w)
    ctx._recon = None
    return out

"""Per-token step allocation for the ``tokenwise`` codec: a coarser step where a token matters less.

How much a token's coding error moves the server's next-token distributions (its Fisher trace
at the cut) varies from token to token far more than from channel to channel: on SmolLM2's
middle layer the spread of per-token traces is worth ~0.46 bit per element at high rate, the
spread across channels ~0.015 (``docs/results/llm_alloc_screen.json``). A step
``~ trace^(-gain/2)`` spends the bits where they count.

The edge cannot compute a token's trace (that needs the server half), but it can predict it
from the token itself: a ridge regression of the log trace on ``[x, |x|, 1]`` (R^2 ~0.44 on
held-out calibration tokens), fitted by :func:`fit_allocation` on the calibration windows with
the traces of the server's gradients
(:func:`splitcomp.llm.tokenwise_calibration.fisher_and_traces`). The encoder codes row ``t``
at level ``level + o_t``,
``o_t = clip(rint(features(x_t) . v), -A, A)`` (the gain and the mean folded into ``v``); rows
whose scale code is more than :data:`TYPICAL` codes from calibration's median (an attention
sink's massive activations) keep ``o_t = 0``. ``o_t`` is sent: one symbol per row after the
row's scale code, under the context's offset model (calibration counts), ~3.5 bits a token.

The decoder needs only the offset model; the weights ``v`` ride in the context too (4 bytes a
feature: ~1 % of a context with a predictor) so that any encoder holding the context allocates
alike and the id covers the policy. Layout: ``docs/bitstream.md``, section "tokenwise",
"Allocation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bytes_io import Reader
from .errors import require

#: largest offset bound a context may declare (levels: 2^(16/8) = 4x the step either way)
MAX_OFFSET_LIMIT = 16
#: calibration's defaults: offsets within +-6 levels, step ~ trace^(-0.75/2) (the screen's
#: better of 0 and 0.75; ``benchmarks/llm_alloc_screen.py``)
MAX_OFFSET, GAIN = 6, 0.75
#: rows whose scale code is further than this from calibration's median code keep offset 0
TYPICAL = 16


def features(x: np.ndarray) -> np.ndarray:
    """Regression features ``[x, |x|, 1]`` (R, 2C + 1) float64 of rows ``x`` (R, C)."""
    x = np.asarray(x, np.float64)
    return np.concatenate([x, np.abs(x), np.ones((x.shape[0], 1))], 1)


@dataclass(eq=False)
class Allocation:
    """What a context carries for per-token allocation: the offset model (calibration counts
    of ``o`` in ``-A .. A``, u16), the folded regression weights ``v`` (2C + 1,) float32 and
    calibration's median scale code."""

    counts: np.ndarray
    weights: np.ndarray
    median_code: int

    @property
    def max_offset(self) -> int:
        return (self.counts.size - 1) // 2

    @property
    def probs(self) -> np.ndarray:
        """Model (1, 2A + 1) of a row's offset symbol ``o + A``: the counts plus a floor."""
        p = self.counts.astype(np.float64) + 1e-3
        return (p / p.sum())[None, :]

    def offsets(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Each row's level offset (R,) int64 (see the module docstring)."""
        a = self.max_offset
        with np.errstate(all="ignore"):
            raw = np.nan_to_num(features(x) @ self.weights.astype(np.float64))
        o = np.clip(np.rint(raw), -a, a).astype(np.int64)
        o[np.abs(np.asarray(codes) - self.median_code) > TYPICAL] = 0
        return o

    # -- bytes (inside a context: its header carries A, its tail the rest) -------------------
    def tail_bytes(self) -> bytes:
        """The median code (u8), the counts (u16 LE) and the weights (f32 LE)."""
        return (bytes([self.median_code]) + self.counts.astype("<u2").tobytes()
                + self.weights.astype("<f4").tobytes())

    @staticmethod
    def tail_size(channels: int, max_offset: int) -> int:
        return 1 + 2 * (2 * max_offset + 1) + 4 * (2 * channels + 1)

    @classmethod
    def read_tail(cls, r: Reader, channels: int, max_offset: int) -> Allocation:
        """Parse :meth:`tail_bytes`; BitstreamError if malformed."""
        median = r.u8()
        require(median <= 127, "tokenwise context: bad allocation median code")
        counts = np.frombuffer(r.take(2 * (2 * max_offset + 1)), "<u2").astype(np.int64)
        weights = np.frombuffer(r.take(4 * (2 * channels + 1)), "<f4").astype(np.float32)
        require(bool(np.all(np.isfinite(weights))), "tokenwise context: allocation not finite")
        return cls(counts, weights, median)


def fit_allocation(x: np.ndarray, log_traces: np.ndarray, codes: np.ndarray,
                   gain: float = GAIN, max_offset: int = MAX_OFFSET) -> Allocation:
    """An :class:`Allocation` from calibration rows ``x`` (N, C), the log of each row's Fisher
    trace (N,) (NaN where unknown: left out of the fit, e.g. each window's first tokens) and
    the rows' scale ``codes`` (N,). The ridge penalty is 0.1 x the mean diagonal of the
    features' Gram matrix; fitted on the typical rows only."""
    if not 1 <= max_offset <= MAX_OFFSET_LIMIT:
        raise ValueError(f"max_offset must be in 1 .. {MAX_OFFSET_LIMIT}, not {max_offset}")
    x = np.asarray(x, np.float64)
    y = np.asarray(log_traces, np.float64)
    codes = np.asarray(codes, np.int64)
    median = int(np.median(codes))
    use = np.isfinite(y) & (np.abs(codes - median) <= TYPICAL) & np.all(np.isfinite(x), 1)
    if use.sum() < 2:
        raise ValueError("fit_allocation needs at least two typical rows with a trace")
    a = features(x[use])
    lam = 0.1 * np.trace(a.T @ a) / a.shape[1]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y[use])
    mean = float(np.mean(a @ w))
    scale = -4.0 * gain / math.log(2.0)  # level offsets of 1/8 octave: step ~ trace^(-gain/2)
    v = scale * w
    v[-1] -= scale * mean
    alloc = Allocation(np.zeros(2 * max_offset + 1, np.int64), v.astype(np.float32), median)
    o = alloc.offsets(x, codes)
    counts = np.bincount(o + max_offset, minlength=2 * max_offset + 1)
    alloc.counts = np.minimum(np.ceil(counts * min(1.0, 65535 / counts.max())), 65535
                              ).astype(np.int64)
    return alloc

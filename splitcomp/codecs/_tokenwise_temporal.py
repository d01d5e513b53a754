"""Previous-token prediction for the ``tokenwise`` codec's context mode.

Consecutive tokens' hidden states at a cut are correlated channel by channel (SmolLM2-135M at
block 15: median lag-1 correlation 0.39). A context with the temporal flag
(:attr:`TokenwiseContext.temporal`, flags bit 2) codes each row as its residual against a
guess from the *previous token's decoded row*, which both ends hold: ``g = a * (prev - m)``
per channel (``a``, ``m``: least squares over calibration pairs), and the decoded row is
``g + decoded residual``; the guess is 0 for a session's first row and after an attention
sink (a previous row whose root mean square ``prev - m`` is over :data:`SINK_FACTOR` times
the calibration's median, :attr:`Temporal.ref`: its few massive channels set it).
Everything else (scale codes, allocation, trellis, tables) works on the residual as it did on
the row, and the context's centres and knots describe residuals (:func:`residual_rows`).

The previous row is session state, not stream content: rows of one stream are guessed from the
stream's previous row, its first row from :data:`~.contexts.PREVIOUS_ROW` in the
:func:`~.contexts.context_scope` (absent: no guess). Whoever decodes a session's streams in
order keeps the last decoded row there (:mod:`splitcomp.llm.hidden_wire`, the LLM server's
sessions, which restore it when a step fails); an encoder guesses from its own decoded rows
(it decodes what it sends). A stream decoded out of order, or twice, decodes against another
row and so to other values, outside its error bound: a session's streams go in order, once.

Measured (``benchmarks/llm_bits.py --variants trellis,ptrellis``): 0.07-0.11 bit per element
fewer at equal KL on four held-out parts of WikiText-2 (docs/results/llm_bits.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bytes_io import Reader
from .contexts import PREVIOUS_ROW, scoped_context
from .errors import require

#: a previous row this many times the calibration's median spread is an attention sink's: no
#: guess from it
SINK_FACTOR = 4.0


@dataclass
class Temporal:
    """The guess ``a * (prev - m)`` and the sink rule's reference spread ``ref``."""

    coef: np.ndarray  #: a (C,) float32
    mean: np.ndarray  #: m (C,) float32
    ref: float  #: calibration's median of a row's root mean square x - m

    def guess(self, prev: np.ndarray | None) -> np.ndarray | None:
        """The guess (C,) float32 from the previous decoded row, or None (no guess)."""
        if prev is None:
            return None
        if prev.shape != self.mean.shape:
            raise ValueError(f"previous row of shape {prev.shape}, the context has "
                             f"{self.mean.size} channels")
        dev = prev.astype(np.float32) - self.mean
        rms = float(np.sqrt(np.mean(np.square(dev, dtype=np.float64))))
        if not rms <= SINK_FACTOR * self.ref:  # NaN too
            return None
        return (self.coef * dev).astype(np.float32)

    def tail_bytes(self) -> bytes:
        """``ref`` (f32 LE), then ``a`` and ``m`` (C f16 LE each)."""
        return (np.float32(self.ref).astype("<f4").tobytes() + self.coef.astype("<f2").tobytes()
                + self.mean.astype("<f2").tobytes())

    @staticmethod
    def tail_size(channels: int) -> int:
        return 4 + 4 * channels

    @classmethod
    def read_tail(cls, r: Reader, channels: int) -> Temporal:
        """Parse :meth:`tail_bytes`; BitstreamError if malformed."""
        (ref,) = r.unpack("<f")
        coef = np.frombuffer(r.take(2 * channels), "<f2").astype(np.float32)
        mean = np.frombuffer(r.take(2 * channels), "<f2").astype(np.float32)
        require(bool(np.isfinite(ref) and ref > 0 and np.all(np.isfinite(coef))
                     and np.all(np.abs(coef) <= 4) and np.all(np.isfinite(mean))),
                "tokenwise context: bad temporal predictor")
        return cls(coef, mean, float(ref))


def previous_row() -> np.ndarray | None:
    """The previous decoded row in scope (C,) float32, or None."""
    prev = scoped_context(PREVIOUS_ROW)  # type: ignore[arg-type]
    return prev if isinstance(prev, np.ndarray) and prev.ndim == 1 else None


def add_guesses(t: Temporal | None, out: np.ndarray) -> np.ndarray:
    """Decoded residual rows ``out`` (R, C) plus, with ``t``, each row's guess from the row
    before it (the first's from the scope's :data:`PREVIOUS_ROW`), in place."""
    if t is not None:
        prev = previous_row()
        for i in range(out.shape[0]):
            g = t.guess(prev)
            if g is not None:
                out[i] += g
            prev = out[i]
    return out


def code_rows(t: Temporal, x2: np.ndarray, quantized: Callable[[np.ndarray], tuple],
              decoded: Callable[[np.ndarray, Any], np.ndarray], trellis: bool) -> tuple:
    """The codec's ``quantized`` (scale codes, offsets or None, steps, coding) of each row of
    ``x2`` (R, C) less its guess, one row at a time: each guess is from the row before as
    ``decoded`` (steps, coding -> rows) makes it, the first's from :data:`PREVIOUS_ROW`.
    The rows' parts concatenated; a coding is the symbols (scalar) or the trellis's
    ``(symbols, models, escaped)``."""
    prev, parts = previous_row(), []
    for i in range(x2.shape[0]):
        g = t.guess(prev)
        part = quantized(x2[i : i + 1] if g is None else x2[i : i + 1] - g)
        prev = decoded(part[2], part[3])[0]
        prev = prev if g is None else prev + g
        parts.append(part)
    codes, offsets, d = (None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
                         for i in range(3))
    if not trellis:
        return codes, offsets, d, np.concatenate([p[3] for p in parts])
    return codes, offsets, d, (np.concatenate([p[3][0] for p in parts]),
                               [m for p in parts for m in p[3][1]],
                               np.concatenate([p[3][2] for p in parts]))


def fit_temporal(sequences: list[np.ndarray]) -> Temporal:
    """A :class:`Temporal` from calibration sequences (each (T, C), in token order): ``m`` the
    mean row, ``a`` per channel the least-squares factor of ``x_t - m`` on ``x_{t-1} - m``
    over the pairs whose earlier row is not a sink (clipped to [-1, 1])."""
    rows = np.concatenate([np.asarray(s, np.float64) for s in sequences])
    mean = rows.mean(0)
    ref = float(np.median(np.sqrt(np.mean((rows - mean) ** 2, axis=1))))
    prev = np.concatenate([np.asarray(s[:-1], np.float64) for s in sequences])
    cur = np.concatenate([np.asarray(s[1:], np.float64) for s in sequences])
    keep = np.sqrt(np.mean((prev - mean) ** 2, axis=1)) <= SINK_FACTOR * ref
    p, c = prev[keep] - mean, cur[keep] - mean
    coef = np.clip((p * c).sum(0) / np.maximum((p * p).sum(0), 1e-30), -1.0, 1.0)
    t = Temporal(coef.astype(np.float16).astype(np.float32),
                 mean.astype(np.float16).astype(np.float32), max(ref, 1e-30))
    return t


def residual_rows(t: Temporal, sequences: list[np.ndarray]) -> np.ndarray:
    """Every sequence's rows minus their guesses from the exact previous rows (open loop: at
    the rates used the decoded rows are close): what the context's centres and knots are
    fitted on, concatenated (N, C) float32."""
    out = []
    for s in sequences:
        s = np.asarray(s, np.float32)
        r = s.copy()
        for i in range(1, len(s)):
            g = t.guess(s[i - 1])
            if g is not None:
                r[i] -= g
        out.append(r)
    return np.concatenate(out)

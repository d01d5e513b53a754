"""Previous-token prediction for the ``tokenwise`` codec's context mode.

Consecutive tokens' hidden states at a cut are correlated channel by channel (SmolLM2-135M at
block 15: median lag-1 correlation 0.39). A context with the temporal flag
(:attr:`TokenwiseContext.temporal`, flags bit 2) codes each row as its residual against a
guess from the *previous token's decoded row*, which both ends hold: ``g = a * (prev - m)``
per channel, plus, with flags bit 3, a low-rank term ``((prev - m) V) U`` across channels
(``V`` the calibration pairs' top :data:`RANK` principal directions of ``prev - m``; ``a``,
``U``, ``m``: least squares over calibration pairs), and the decoded row is
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
fewer at equal KL on four held-out parts of WikiText-2 (docs/results/llm_bits.json); the
low-rank term: see that file's ``temporal_rank`` entry.
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
#: principal directions of the previous row in the low-rank term (``calibrate-lm``'s default)
RANK = 32
#: the largest rank a context may carry (one byte)
MAX_RANK = 255
#: calibration pairs a direction of the low-rank term needs: fewer, and it fits noise
#: (each channel's factor is fitted jointly with the rank's, on the same pairs)
PAIRS_PER_DIRECTION = 64


@dataclass
class Temporal:
    """The guess ``a * (prev - m) + ((prev - m) V) U`` and the sink rule's reference spread
    ``ref``."""

    coef: np.ndarray  #: a (C,) float32
    mean: np.ndarray  #: m (C,) float32
    ref: float  #: calibration's median of a row's root mean square x - m
    basis: np.ndarray | None = None  #: V (C, r) float32, or None: no low-rank term
    mix: np.ndarray | None = None  #: U (r, C) float32

    @property
    def rank(self) -> int:
        return 0 if self.basis is None else self.basis.shape[1]

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
        g = self.coef * dev
        if self.basis is not None and self.mix is not None:
            with np.errstate(all="ignore"):  # a hostile context overflows: not finite, refused
                g += (dev @ self.basis) @ self.mix
        return g.astype(np.float32)

    def tail_bytes(self) -> bytes:
        """``ref`` (f32 LE), then ``a`` and ``m`` (C f16 LE each), then with a low-rank term
        ``V`` (C x r) and ``U`` (r x C), f16 LE, row-major (the rank is in the header)."""
        out = (np.float32(self.ref).astype("<f4").tobytes() + self.coef.astype("<f2").tobytes()
               + self.mean.astype("<f2").tobytes())
        if self.basis is not None and self.mix is not None:
            out += self.basis.astype("<f2").tobytes() + self.mix.astype("<f2").tobytes()
        return out

    @staticmethod
    def tail_size(channels: int, rank: int = 0) -> int:
        return 4 + 4 * channels + 4 * channels * rank

    @classmethod
    def read_tail(cls, r: Reader, channels: int, rank: int = 0) -> Temporal:
        """Parse :meth:`tail_bytes`; BitstreamError if malformed."""
        (ref,) = r.unpack("<f")
        coef = np.frombuffer(r.take(2 * channels), "<f2").astype(np.float32)
        mean = np.frombuffer(r.take(2 * channels), "<f2").astype(np.float32)
        require(bool(np.isfinite(ref) and ref > 0 and np.all(np.isfinite(coef))
                     and np.all(np.abs(coef) <= 4) and np.all(np.isfinite(mean))),
                "tokenwise context: bad temporal predictor")
        if not rank:
            return cls(coef, mean, float(ref))
        basis = np.frombuffer(r.take(2 * channels * rank), "<f2").astype(np.float32)
        mix = np.frombuffer(r.take(2 * channels * rank), "<f2").astype(np.float32)
        require(bool(np.all(np.isfinite(basis)) and np.all(np.isfinite(mix))),
                "tokenwise context: bad temporal low-rank term")
        return cls(coef, mean, float(ref), basis.reshape(channels, rank),
                   mix.reshape(rank, channels))


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


def fit_temporal(sequences: list[np.ndarray], rank: int = 0) -> Temporal:
    """A :class:`Temporal` from calibration sequences (each (T, C), in token order): ``m`` the
    mean row, ``a`` per channel the least-squares factor of ``x_t - m`` on ``x_{t-1} - m``
    over the pairs whose earlier row is not a sink (clipped to [-1, 1]); with ``rank`` > 0,
    also ``V`` the top ``rank`` principal directions (at most one per
    :data:`PAIRS_PER_DIRECTION` pairs) of those ``x_{t-1} - m`` and ``U`` the
    least squares of what ``a`` leaves on ``(x_{t-1} - m) V`` (``a`` fitted jointly with it,
    then clipped; each fitted against the others' float16 values, as the decoder has them)."""
    if not 0 <= rank <= MAX_RANK:
        raise ValueError(f"temporal rank {rank}: 0 .. {MAX_RANK}")
    rows = np.concatenate([np.asarray(s, np.float64) for s in sequences])
    mean = rows.mean(0)
    ref = float(np.median(np.sqrt(np.mean((rows - mean) ** 2, axis=1))))
    prev = np.concatenate([np.asarray(s[:-1], np.float64) for s in sequences])
    cur = np.concatenate([np.asarray(s[1:], np.float64) for s in sequences])
    keep = np.sqrt(np.mean((prev - mean) ** 2, axis=1)) <= SINK_FACTOR * ref
    mean = _f16(mean).astype(np.float64)  # as the decoder has it
    p, c = prev[keep] - mean, cur[keep] - mean
    rank = min(rank, p.shape[1], p.shape[0] // PAIRS_PER_DIRECTION)
    if not rank:
        coef = (p * c).sum(0) / np.maximum((p * p).sum(0), 1e-30)
        return Temporal(_f16(np.clip(coef, -1.0, 1.0)), mean.astype(np.float32), max(ref, 1e-30))
    basis = _f16(np.linalg.svd(p, full_matrices=False)[2][:rank].T).astype(np.float64)
    z = p @ basis
    coef = _f16(np.clip(_joint_coef(p, c, z), -1.0, 1.0)).astype(np.float64)
    zz = z.T @ z
    mix = np.linalg.solve(zz + (1e-9 * np.trace(zz) + 1e-30) * np.eye(rank),
                          z.T @ (c - coef * p))
    return Temporal(coef.astype(np.float32), mean.astype(np.float32), max(ref, 1e-30),
                    basis.astype(np.float32), _f16(mix))


def _f16(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to float16, as a context carries it, in float32."""
    return np.asarray(a).astype(np.float16).astype(np.float32)


def _joint_coef(p: np.ndarray, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each channel's ``a_j`` in the least squares of ``c_j`` on ``[p_j, z]`` (C,)."""
    r = z.shape[1]
    g = np.empty((p.shape[1], r + 1, r + 1))
    g[:, 0, 0] = (p * p).sum(0)
    g[:, 0, 1:] = g[:, 1:, 0] = p.T @ z
    g[:, 1:, 1:] = z.T @ z
    b = np.concatenate([(p * c).sum(0)[:, None], (z.T @ c).T], axis=1)
    ridge = (1e-9 * np.trace(g, axis1=1, axis2=2) + 1e-30)[:, None, None] * np.eye(r + 1)
    return np.linalg.solve(g + ridge, b[..., None])[:, 0, 0]


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

"""Trellis-coded (dependent) quantization for the ``tokenwise`` codec's context mode.

A context with the trellis flag (:attr:`TokenwiseContext.trellis`, flags bit 1) codes each
row's channels, in channel order, with two scalar quantizers in units of the row's step
``d_j`` (the codec's steps: scale code, level and allocation offset as ever): ``Q0`` with the
points ``k`` and ``Q1`` with the points ``k - sgn(k) / 2``. Which one codes channel ``j`` is
the state of a 4-state machine driven by the parities of the earlier indices
(:data:`NEXT`, states 0 and 1 use ``Q0``, 2 and 3 ``Q1``, every row starts in state 0), so
the union of the two is a quantizer half a step fine whose index costs what one of step
``d`` costs. The encoder picks the whole row's path by a Viterbi search minimising
``sum (u_j - point_j)^2 + LAMBDA bits_j`` (``bits``: ``-log2`` of the index's probability in
its table), each survivor carrying its own decoded history, as the closed-loop predictor and
the Fisher shaping feed each channel's target from the decoded earlier channels
(``benchmarks/llm_tcq_screen.py``: ~0.095 bit per element fewer at equal KL on SmolLM2).

Tables (derived, never sent): per table key a pair ``(Q0, Q1)`` of (C, 2 KT + 3) rows, the
symbols ``k + KT`` for ``|k| <= KT`` and two escapes, even ``2 KT + 1`` and odd ``2 KT + 2``
(the decoder follows the state through an escape; the escaped ``k`` follows as a zigzag
varint after the rows, in the same rANS stack). A cell's mass is the channel's piecewise-linear CDF
through its knots over the cell's edges (in ``u`` times the step in units of ``z``):
``Q0``'s cell of ``k`` is ``[k - 1/2, k + 1/2)``, ``Q1``'s are ``[-1/4, 1/4)`` for 0,
``[1/4, 1)`` and ``[-1, -1/4)`` for +-1 and ``[point - 1/2, point + 1/2)`` beyond; each
escape gets half the mass outside the cells; plus the floor, normalised. Decoded:
``xhat - mu = (I - A)^-1 (point * d)`` (no reconstruction offset). Layout:
``docs/bitstream.md``, section "tokenwise", "Trellis".

The search runs compiled (:mod:`._tokenwise_trellis_kernels`) when the codecs' compiled path
is on, else here in numpy (the reference, vectorised over rows and states); the two sum the
predictions in their own orders, so a path within rounding of a tie may differ (the decoder
is the same either way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _slicer_jit
from .errors import require

if TYPE_CHECKING:
    from ._tokenwise_context import TokenwiseContext

#: largest index magnitude with a symbol of its own; beyond, an escape
KT = 16
#: symbols a table row has: ``k + KT`` for ``|k| <= KT``, escape-even, escape-odd
N_SYM = 2 * KT + 3
#: weight of the bits against the squared error (in steps) in the encoder's search
LAMBDA = 0.02
#: next state, indexed [state][k & 1]
NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
#: the quantizer of each state
QUANT = np.array([0, 0, 1, 1], np.int64)
#: the largest distance, in steps, of a path's point from its channel's input (the search's
#: candidates are the 4 points around it)
MAX_ERROR = 2.0
#: the relative probability floor of every symbol (as the scalar tables')
FLOOR = 1e-6
#: where the search clips a channel's input (in steps; NaN, from a hostile predictor's
#: overflow, becomes this): far beyond any index the codec accepts (the caller refuses
#: those), and an exact integer range in float64
U_CLIP = float(1 << 40)
_INF = np.inf


def cells() -> tuple[np.ndarray, np.ndarray]:
    """The cell edges, in steps, of ``Q0`` and ``Q1``'s indices ``-KT .. KT`` (2 KT + 2 each:
    cell ``i`` is ``[edges[i], edges[i + 1])``)."""
    k = np.arange(-KT, KT + 1, dtype=np.float64)
    e0 = np.concatenate([k - 0.5, [KT + 0.5]])
    pts = k - 0.5 * np.sign(k)
    lo = np.where(k == 0, -0.25, np.where(k == 1, 0.25, pts - 0.5))
    return e0, np.concatenate([lo, [KT]])


def build_tables(knots: np.ndarray, p_grid: np.ndarray, width: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The probability rows (C, N_SYM) of ``Q0`` and ``Q1`` at a step of ``width`` in units of
    ``z`` for channels with ``knots`` (C, M) at the cumulative probabilities ``p_grid``."""
    out = []
    for edges in cells():
        z = edges * width
        cdf = np.empty((knots.shape[0], z.size))
        for j in range(knots.shape[0]):
            cdf[j] = np.interp(z, knots[j], p_grid)
        half = (cdf[:, :1] + (1.0 - cdf[:, -1:])) / 2
        probs = np.concatenate([np.diff(cdf, axis=1), half, half], axis=1).clip(0) + FLOOR
        out.append(probs / probs.sum(axis=1, keepdims=True))
    return out[0], out[1]


def points(quant: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The reconstruction points, in steps, of indices ``k`` under quantizers ``quant`` (0/1)."""
    k = np.asarray(k, np.float64)
    return k - 0.5 * np.asarray(quant) * np.sign(k)


def symbols(k: np.ndarray) -> np.ndarray:
    """The symbols (int64) of indices ``k``: ``k + KT``, or the escape of ``k``'s parity."""
    k = np.asarray(k, np.int64)
    return np.where(np.abs(k) <= KT, k + KT, 2 * KT + 1 + (k & 1))


def quantizers(k: np.ndarray) -> np.ndarray:
    """The quantizer (0/1, int64) of every index of rows ``k`` (R, C) on the state path their
    parities drive from state 0: with state ``2h + l``, :data:`NEXT` is ``h' = l ^ p``,
    ``l' = h``, so ``h_j`` is the parity of ``k_{j-1} + k_{j-3} + ...``."""
    p = np.asarray(k, np.int64) & 1
    h = np.zeros(p.shape, np.int64)
    for r in (0, 1):  # h[j] for j = r + 1 + 2m: the parity of p[r], p[r + 2], .., p[j - 1]
        h[..., r + 1 :: 2] = np.cumsum(p[..., r::2], axis=-1)[..., : h[..., r + 1 :: 2].shape[-1]]
    return h & 1


def search(e: np.ndarray, d: np.ndarray, a: np.ndarray | None, fb: np.ndarray | None,
           bits0: np.ndarray, bits1: np.ndarray, tab: np.ndarray, lam: float = LAMBDA
           ) -> tuple[np.ndarray, np.ndarray]:
    """The best path's indices (R, C) int64 and decoded values minus centre (R, C) float64 of
    rows ``e`` (values minus centre) with steps ``d`` (R, C), the predictor ``a`` and the
    shaping feedback ``fb`` (None: none), row ``i`` priced by the bits ``bits0[tab[i]]`` and
    ``bits1[tab[i]]`` (C, N_SYM) of its tables."""
    e = np.ascontiguousarray(e, np.float64)
    d = np.ascontiguousarray(d, np.float64)
    tab = np.ascontiguousarray(tab, np.int64)
    if _slicer_jit.active():
        from ._tokenwise_trellis_kernels import search as kernel

        none = np.zeros((0, 0))
        return kernel(e, d, none if a is None else np.ascontiguousarray(a, np.float64),
                      none if fb is None else np.ascontiguousarray(fb, np.float64),
                      np.ascontiguousarray(bits0, np.float64),
                      np.ascontiguousarray(bits1, np.float64), tab, float(lam))
    with np.errstate(all="ignore"):  # a hostile predictor overflows: refused by the caller
        return _search_numpy(e, d, a, fb, bits0, bits1, tab, lam)


def _search_numpy(e, d, a, fb, bits0, bits1, tab, lam):
    """:func:`search` in numpy, rows and states at once; candidates ``kc - 1 .. kc + 2`` of
    each survivor, the first of equal costs (states, then indices, in increasing order) kept."""
    r, c = e.shape
    rows = np.arange(r)[:, None]
    cost = np.full((r, 4), _INF)
    cost[:, 0] = 0.0
    xh, err = np.zeros((r, 4, c)), np.zeros((r, 4, c))
    ks = np.zeros((r, 4, c), np.int64)
    q = QUANT[None, :, None]  # (1, 4, 1)
    for j in range(c):
        p = np.zeros((r, 4)) if a is None else xh[:, :, :j] @ a[j, :j]
        t = e[:, j, None] if fb is None else e[:, j, None] + err[:, :, :j] @ fb[j, :j]
        u = (t - p) / d[:, j, None]
        u = np.clip(np.where(np.isnan(u), U_CLIP, u), -U_CLIP, U_CLIP)  # NaN: refused later
        kc = np.where(QUANT[None, :] == 0, np.floor(u), np.floor(u + 0.5 * np.sign(u)))
        k = kc[:, :, None].astype(np.int64) + np.arange(-1, 3)  # (r, 4 states, 4 candidates)
        pt = points(q, k)
        sym = symbols(k)
        b = np.where(q == 0, bits0[tab[:, None, None], j, sym], bits1[tab[:, None, None], j, sym])
        cc = (cost[:, :, None] + (u[:, :, None] - pt) ** 2 + lam * b).reshape(r, 16)
        ns = NEXT[np.arange(4)[:, None], k & 1].reshape(r, 16)
        new = np.empty((r, 4))
        pick = np.empty((r, 4), np.int64)
        for s in range(4):
            m = np.where(ns == s, cc, _INF)
            pick[:, s] = np.argmin(m, axis=1)
            new[:, s] = m[rows[:, 0], pick[:, s]]
        src = pick // 4
        val = p[rows, src] + pt.reshape(r, 16)[rows, pick] * d[:, j, None]
        xh, err, ks = xh[rows, src], err[rows, src], ks[rows, src]
        xh[:, :, j] = val
        err[:, :, j] = e[:, j, None] - val
        ks[:, :, j] = k.reshape(r, 16)[rows, pick]
        cost = new
    best = np.argmin(cost, axis=1)
    return ks[rows[:, 0], best], xh[rows[:, 0], best]


def encode_rows(ctx: TokenwiseContext, x2: np.ndarray, d: np.ndarray, keys: list[tuple],
                q_max: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Rows ``x2`` (R, C) with steps ``d`` (R, C) and table keys ``keys`` (one a row, the
    context's ``("tcq",) + table_key``): their symbols (R, C) int32, each row's symbol model
    (the table pair and each channel's quantizer), and the escaped indices in coding order.
    ValueError for an index beyond ``q_max``."""
    uniq: dict[tuple, int] = {}
    tab = np.array([uniq.setdefault(key, len(uniq)) for key in keys], np.int64)
    pairs = [ctx.tables_at(key) for key in uniq]
    with np.errstate(divide="ignore"):
        bits0 = np.stack([-np.log2(t0.probs) for t0, _ in pairs])
        bits1 = np.stack([-np.log2(t1.probs) for _, t1 in pairs])
    a, fb = ctx.pred, ctx.shaping
    k, _ = search((x2 - ctx.mu).astype(np.float64), d, a, fb, bits0, bits1, tab)
    if not np.all(np.abs(k) <= q_max):
        raise ValueError("tokenwise: values too large for this context and level")
    h = quantizers(k)
    models = [(pairs[tab[i]][0].probs, pairs[tab[i]][1].probs, h[i]) for i in range(len(k))]
    return symbols(k).astype(np.int32), models, k[np.abs(k) > KT]


def row_model(p0: np.ndarray, p1: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each channel's probability row (C, N_SYM): ``p0``'s where ``h`` is 0, ``p1``'s else."""
    return np.where(h[:, None] == 1, p1, p0)


def decode_rows(ctx: TokenwiseContext, sym: np.ndarray, escaped: np.ndarray,
                d: np.ndarray, q_max: int) -> np.ndarray:
    """Decoded rows (R, C) float32 of symbols ``sym`` (R, C) (read along the state path), the
    zigzagged escaped indices ``escaped`` (one per escape symbol, in coding order) and steps
    ``d``; BitstreamError where they disagree."""
    sym = np.asarray(sym, np.int64)
    require(bool(np.all((sym >= 0) & (sym < N_SYM))), "tokenwise: bad trellis symbol")
    esc = sym > 2 * KT
    require(int(esc.sum()) == len(escaped), "tokenwise: escaped values mismatch")
    k = sym - KT
    if len(escaped):
        u = np.asarray(escaped).astype(np.int64)
        v = np.where(u & 1, -((u + 1) >> 1), u >> 1)
        par = sym[esc] - (2 * KT + 1)
        require(bool(np.all((np.abs(v) > KT) & (np.abs(v) <= q_max) & ((v & 1) == par))),
                "tokenwise: bad escaped value")
        k[esc] = v
    return reconstruct(ctx, points(quantizers(k), k), d)


def reconstruct(ctx: TokenwiseContext, pts: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Decoded rows (R, C) float32 of points ``pts`` (in steps) with steps ``d``:
    ``mu + (I - A)^-1 (pts d)`` (not checked finite: the caller does)."""
    with np.errstate(all="ignore"):
        r = pts.astype(np.float32) * d.astype(np.float32)
    return ctx.from_residuals(r)

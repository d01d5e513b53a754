"""SLICER's value side: asymmetric top-K thresholds and the block-wise magnitude quantizer.

Pure functions of numpy arrays; :mod:`splitcomp.codecs.slicer` puts them on the wire.

One sign at a time (positives, then negatives as magnitudes), the kept magnitudes ``a >= t``
are quantized on a *piecewise-uniform* grid: piece ``p`` starts at ``s_p`` (``s_0 = t``),
has step ``d_p`` and ``c_p`` cells; its levels are ``G_p .. G_p + c_p - 1`` with
``G_p = c_0 + .. + c_{p-1}``. A value ``a`` in piece ``p`` (``s_p <= a < s_{p+1}``) gets level
``G_p + floor((a - s_p) / d_p)``; level ``G_p + j`` decodes to ``s_p + (j + o / 256) d_p``,
``o`` being the mean position of the values in their cells. Pieces come from magnitude blocks
(:func:`split_blocks`) whose steps differ after :func:`allocate`; one piece is the common case.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

import numpy as np

#: most levels one sign may use (bounds the value alphabet and the decoder's tables)
MAX_LEVELS = 1 << 16
#: most pieces one sign's grid may have
MAX_PIECES = 16
_BLOCK_SAMPLE = 2048
_MAX_STEP = 2.0**126  # steps stay finite in float32, and so does t + step
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Grid:
    """One sign's quantizer: threshold, pieces (starts, steps, cells), and where in its cell
    a level decodes (``offset / 256`` of the way up; 128: the middle)."""

    t: float
    starts: np.ndarray  # float32, starts[0] == t, strictly increasing
    steps: np.ndarray  # float32, > 0
    cells: np.ndarray  # int64, >= 1 (unknown before quantize: ones)
    offset: int = 128

    @property
    def levels(self) -> int:
        return int(self.cells.sum())

    def first_levels(self) -> np.ndarray:
        """``G_p``: the first level of each piece."""
        return np.concatenate([[0], np.cumsum(self.cells)[:-1]]).astype(np.int64)

    def quantize(self, a: np.ndarray) -> tuple[np.ndarray, Grid]:
        """Level of each kept magnitude ``a >= t`` (int32), and this grid with its cell counts
        and the offset that minimises the squared error of a common position in the cell
        (the mean position: values crowd the low end of cells where the density falls).

        More than :data:`MAX_LEVELS` levels (an absurd range for the step) doubles every step
        until they fit.
        """
        grid = self
        while True:
            if grid.starts.size == 1:
                q = (a - grid.starts[0]) / grid.steps[0]
                k = np.maximum(np.floor(q), 0)
                cells = np.array([int(k.max()) + 1 if k.size else 1], np.int64)
            else:
                p = np.maximum(np.searchsorted(grid.starts, a, side="right") - 1, 0)
                q = (a - np.take(grid.starts, p)) / np.take(grid.steps, p)
                k = np.maximum(np.floor(q), 0)
                cells = np.ones(grid.starts.size, np.int64)
                np.maximum.at(cells, p, k.astype(np.int64) + 1)
            if cells.sum() <= MAX_LEVELS:
                break
            scale = 2.0 ** math.ceil(math.log2(cells.sum() / MAX_LEVELS))
            steps = np.minimum(grid.steps.astype(np.float64) * scale, _MAX_STEP)
            grid = replace(grid, steps=steps.astype(np.float32))
        sub = slice(None, None, max(1, q.size // 1024))  # the mean position needs a sample only
        pos = float(np.mean(q[sub] - k[sub])) if q.size else 0.5
        grid = replace(grid, cells=cells, offset=min(max(round(256 * pos), 1), 255))
        if grid.starts.size > 1:
            k += np.take(grid.first_levels(), p)
        return k.astype(np.int32), grid

    def reconstruction(self) -> np.ndarray:
        """Magnitude every level decodes to (float64, ``levels`` values)."""
        first = self.first_levels()
        p = np.repeat(np.arange(self.cells.size), self.cells)
        j = np.arange(self.levels, dtype=np.float64) - first[p] + self.offset / 256
        rec = self.starts.astype(np.float64)[p] + j * self.steps.astype(np.float64)[p]
        return np.minimum(rec, _F32_MAX)

    def max_error(self) -> float:
        """Largest distance from a value in a cell to the level it decodes to."""
        o = self.offset / 256
        return float(np.max(self.steps.astype(np.float64))) * max(o, 1 - o)


def kth_largest(x: np.ndarray, k: int, sign: int) -> float:
    """The ``k``-th largest of ``sign * x`` (``1 <= k <= x.size``), exactly, without sorting.

    A strided sample of ~1,024 values brackets the answer; one pass counts what lies above the
    bracket and one extracts the few percent inside it, where a small ``np.partition`` finds
    it. Cheaper than a full selection (``torch.kthvalue`` or ``np.partition`` on everything,
    which slows down on the many exact zeros of ReLU maps) and exact, unlike a histogram.
    """
    v = x if sign > 0 else -x
    n = v.size
    if n > 4096:
        stride = n // 1024
        stride += 1 - stride % 2  # odd: does not lock onto even channel/row strides
        sample = np.sort(v[::stride])
        m = sample.size
        r = k * m / n  # rank of the answer in the sample, from the top
        margin = 4.0 * math.sqrt(r * (1 - r / m) + 1) + 2
        hi = sample[max(m - 1 - int(r - margin), 0)] if r - margin > 0 else math.inf
        lo = sample[max(m - 1 - int(r + margin), 0)]
        above = int(np.count_nonzero(v > hi)) if math.isfinite(hi) else 0
        inside = np.flatnonzero((v >= lo) & (v <= hi))
        need = k - above
        if 1 <= need <= inside.size:
            band = np.take(v, inside)
            return float(np.partition(band, band.size - need)[band.size - need])
    torch = sys.modules.get("torch")  # used where loaded (faster on many zeros), never imported
    if torch is not None:
        t = torch.from_numpy(np.ascontiguousarray(v))
        return float(torch.kthvalue(t, n - k + 1).values)
    return float(np.partition(v.ravel(), n - k)[n - k])  # the same value: a k-th order statistic


def threshold(x: np.ndarray, count: int, keep: float, sign: int) -> float:
    """Magnitude threshold that keeps the ``keep`` fraction of the ``count`` values of a sign.

    ``inf`` keeps none. Ties at the threshold are all kept.
    """
    k = int(round(keep * count))
    if k <= 0 or count == 0:
        return math.inf
    t = kth_largest(x, k, sign)
    if t <= 0.0:  # sampled selection can land on zero: keep only strictly signed values
        t = float(np.min(np.abs(x[(x > 0) if sign > 0 else (x < 0)])))
    return t


def level_cap(count: float) -> float:
    """Most cells a block of ``count`` values gets before its step is coarsened: past ~2
    cells a value, most cells are empty and finer steps only cost histogram bitmap bits."""
    return max(64.0, 2.0 * count)


def split_blocks(
    a: np.ndarray, n_blocks: int, base_step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude blocks of the kept magnitudes ``a``: (lowest, highest, share of values).

    ``n_blocks`` equal-cardinality blocks (quantiles of a strided sample of at most 2,048
    values). Then, while a block is too wide for its values at ``base_step`` (more than
    :func:`level_cap` cells), the widest such block is cut at its widest gap: a tail of
    outliers ends up in blocks of its own, and the ordinary values below the gap keep the fine
    step instead of sharing the tail's.
    """
    sample = np.sort(a[:: max(1, a.size // _BLOCK_SAMPLE)])
    m = sample.size
    bounds = sorted({(j * m) // n_blocks for j in range(n_blocks)} | {m})
    while len(bounds) <= MAX_PIECES:
        b = np.array(bounds)
        lo, hi = b[:-1], b[1:] - 1
        cells = (sample[hi] - sample[lo]) / base_step
        over = cells / np.maximum(64.0, 2.0 * (hi - lo + 1) / m * a.size)
        over[hi == lo] = 0
        i = int(np.argmax(over))
        if over[i] <= 1:
            break
        bounds.insert(i + 1, int(lo[i]) + int(np.argmax(np.diff(sample[lo[i] : hi[i] + 1]))) + 1)
    b = np.array(bounds)
    return sample[b[:-1]].astype(np.float64), sample[b[1:] - 1].astype(np.float64), np.diff(b) / m


def allocate(
    t: float,
    count: int,
    base_step: float,
    blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    a_max: float,
) -> Grid:
    """Per-block steps that meet the distortion budget at the lowest estimated rate.

    Budget: mean squared quantization error ``<= base_step**2 / 12`` over the kept values
    (what one uniform grid of step ``base_step`` gives). With entropy-coded levels the rate of
    a block is ``n_b * log2(w_b / d_b)`` and its error ``n_b * d_b**2 / 12``; the Lagrangian
    optimum is the same step in every block. What breaks the tie is the model: each cell costs
    a bit of histogram bitmap and each used one a few bits of table, so a block is coarsened
    (step doubled, one bit less) while it would have more than :func:`level_cap` cells. That
    happens to wide, sparse tails (outliers 1000x the body; 100x outlier channels of LLM
    hidden states still fit). The other blocks then share what is left of the budget (their
    step shrinks, at most by half). Adjacent blocks with the same step merge into one piece.
    ``blocks=None``: one block from ``t`` to ``a_max``.
    """
    t32 = float(np.float32(t))
    if blocks is None:  # one block: the same arithmetic on scalars (numpy's per-call cost)
        width = max(max(a_max, t32) - t32, 0.0)
        cap1 = max(64.0, 2.0 * float(count))
        step = base_step
        if width / step > cap1:
            step = base_step * float(np.exp2(np.ceil(np.log2(width / (cap1 * base_step)))))
        return Grid(t32, np.array([t32], np.float32),
                    np.array([min(step, _MAX_STEP)], np.float64).astype(np.float32),
                    np.ones(1, np.int64))
    if blocks is None:
        lo, hi, n_b = np.array([t32]), np.array([max(a_max, t32)]), np.array([float(count)])
    else:
        lo, hi, share = blocks
        lo, hi, n_b = lo.copy(), hi.copy(), share * count
        lo[0] = t32
    widths = np.maximum(hi - lo, 0.0)
    cap = np.maximum(64.0, 2.0 * n_b)  # level_cap of each block
    steps = np.full(lo.size, base_step, np.float64)
    coarse = widths / steps > cap
    if coarse.any():
        doublings = np.ceil(np.log2(widths[coarse] / (cap[coarse] * base_step)))
        steps[coarse] = base_step * np.exp2(doublings)
        free = ~coarse
        if free.any():  # pay back the capped blocks' excess error where levels are cheap
            excess = float(n_b[coarse] @ (steps[coarse] ** 2 - base_step**2))
            shared = base_step**2 - excess / max(float(n_b[free].sum()), 1.0)
            steps[free] = max(math.sqrt(max(shared, 0.0)), base_step / 2)
    steps = np.minimum(steps, _MAX_STEP).astype(np.float32)
    starts = lo.astype(np.float32)
    starts[0] = np.float32(t32)
    # a block joins the piece below when it has the same step and no gap of a cell or more
    # separates them (a gap inside a piece would cost empty cells), and when it does not start
    # above the piece's start (ties)
    gap = lo[1:] - hi[:-1]
    joins = ((steps[1:] == steps[:-1]) & (gap < steps[1:])) | (np.diff(starts) <= 0)
    keep = np.concatenate([[True], ~joins])
    starts, steps = starts[keep], steps[keep]
    return Grid(t32, starts, steps, np.ones(starts.size, np.int64))


def quantize_fast(xf: np.ndarray, keep_pos: float, keep_neg: float, distortion: float,
                  n_blocks: int) -> tuple[list[tuple[int, Grid]], np.ndarray, np.ndarray] | None:
    """``SlicerCodec._quantize`` through compiled kernels (:mod:`._slicer_quant_kernels`):
    the same grids, mask and levels. None where only the numpy path applies: a sign whose
    values need magnitude blocks, or a grid of more than :data:`MAX_LEVELS` levels."""
    from . import _slicer_jit as jit
    from . import _slicer_quant_kernels as k

    jit.kernels()  # numba's cache folder is set before the kernels import numba
    hi32, lo32, n_pos, n_neg, finite = k.stats(xf)
    if not finite:
        raise ValueError("slicer: input contains NaN or inf")
    hi, lo = float(hi32), float(lo32)
    n_pos, n_neg = (int(n_pos) if hi > 0 else 0), (int(n_neg) if lo < 0 else 0)
    ts = [threshold(xf, n_pos, keep_pos, 1), threshold(xf, n_neg, keep_neg, -1)]
    ref = min(ts)
    if not math.isfinite(ref):
        return [], np.zeros(xf.size, bool), np.zeros(0, np.int32)
    base = distortion * max(ref, max(hi, -lo) * 2.0**-24)  # float32 resolution
    t32 = [np.float32(t) if math.isfinite(t) else np.float32(np.inf) for t in ts]
    counts = k.count_kept(xf, t32[0], t32[1])
    grids = []
    for i, top in enumerate((hi, -lo)):
        if not math.isfinite(ts[i]):
            grids.append(None)
            continue
        t, count = float(t32[i]), int(counts[i])
        if n_blocks > 1 and (top - t) / base > level_cap(count / n_blocks):
            return None
        grids.append(allocate(t, count, base, None, top))
    g_pos, g_neg = grids
    kept, levels, cells_p, cells_n, mean_p, mean_n, _, _ = k.quantize(
        xf, t32[0], t32[1],
        g_pos.starts[0] if g_pos else np.float32(0), g_pos.steps[0] if g_pos else np.float32(1),
        g_neg.starts[0] if g_neg else np.float32(0), g_neg.steps[0] if g_neg else np.float32(1),
        int(counts[0]) if g_pos else 0, int(counts[1]) if g_neg else 0)
    out = []
    for sign, g, cells, mean in ((1, g_pos, cells_p, mean_p), (-1, g_neg, cells_n, mean_n)):
        if g is None:
            continue
        if cells == 0:
            return None
        offset = min(max(round(256 * float(mean)), 1), 255)
        out.append((sign, replace(g, cells=np.array([cells], np.int64), offset=offset)))
    return out, kept, levels

"""Compiled pieces of the rans cost model (``rans.RansCodec._choose`` / ``_quantize``) and
of :func:`.tables.histogram` / :func:`.tables.ranks`: integer work, and float costs by
:func:`._tables_kernels.table_cost` (numpy's pairwise sums over numpy's own logs), so every
decision the cost model takes is the one the numpy reference takes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._tables_kernels import np_sum, table_cost


@njit(cache=True, nogil=True)
def histogram(u, top):  # pragma: no cover - compiled
    """``tables.histogram`` of an int array whose maximum is ``top`` (the narrow case:
    ``top`` under the caller's limit): (ok, alphabet, counts), both int64; not ok for a
    negative value (the reference raises)."""
    counts = np.zeros(top + 1, np.int64)
    for i in range(u.size):
        if u[i] < 0:
            return False, counts, counts
        counts[u[i]] += 1
    m = 0
    for v in range(top + 1):
        m += counts[v] != 0
    alphabet = np.empty(m, np.int64)
    out = np.empty(m, np.int64)
    j = 0
    for v in range(top + 1):
        if counts[v]:
            alphabet[j] = v
            out[j] = counts[v]
            j += 1
    return True, alphabet, out


@njit(cache=True, nogil=True)
def ranks(u, alphabet):  # pragma: no cover - compiled
    """``tables.ranks`` for a span under the lookup-table bound: (ok, int32 ranks); not ok
    for a value outside the span (left to the reference)."""
    lo = alphabet[0]
    span = alphabet[alphabet.size - 1] - lo + 1
    lut = np.zeros(span, np.int32)
    for i in range(alphabet.size):
        lut[alphabet[i] - lo] = i
    out = np.empty(u.size, np.int32)
    for i in range(u.size):
        j = np.int64(u[i]) - lo
        if j < 0 or j >= span:
            return False, out
        out[i] = lut[j]
    return True, out


@njit(cache=True, nogil=True)
def block_counts(r, rows, m):  # pragma: no cover - compiled
    """The (rows, m) count matrix of ``r`` cut into ``rows`` equal blocks, and the
    ``np.bincount`` of its cells (for ``rans._sum_xlogx``)."""
    out = np.zeros((rows, m), np.int64)
    b = r.size // rows
    top = 0
    for row in range(rows):
        for i in range(row * b, (row + 1) * b):
            out[row, r[i]] += 1
        for i in range(m):
            top = max(top, out[row, i])
    mult = np.zeros(top + 1, np.int64)
    for row in range(rows):
        for i in range(m):
            mult[out[row, i]] += 1
    return out, mult


@njit(cache=True, nogil=True)
def run_tables(r, zero_rank, lg):  # pragma: no cover - compiled
    """``rans.ent.runs(r != zero_rank)`` then ``rans._run_tables``: (first, lengths, bits,
    n_parts, then symbols, alphabet and counts of each part, empty where absent)."""
    n = r.size
    first = r[0] != zero_rank
    n_runs = 1
    for i in range(1, n):
        n_runs += (r[i] != zero_rank) != (r[i - 1] != zero_rank)
    lengths = np.empty(n_runs, np.int64)
    j = 0
    start = 0
    for i in range(1, n + 1):
        if i == n or (r[i] != zero_rank) != (r[i - 1] != zero_rank):
            lengths[j] = i - start
            j += 1
            start = i
    bits = 16.0
    none = np.zeros(0, np.int64)
    parts = [(none, none, none), (none, none, none)]
    n_parts = 0
    for p in range(2):
        at = (1 if first else 0) if p == 0 else (0 if first else 1)
        count = (n_runs - at + 1) // 2
        if count <= 0:
            continue
        syms = np.empty(count, np.int64)
        top = 0
        for i in range(count):
            syms[i] = lengths[at + 2 * i] - 1
            top = max(top, syms[i])
        _, alphabet, counts = histogram(syms, top)
        bits += table_cost(alphabet, counts.reshape(1, -1), 0, lg)
        parts[n_parts] = (syms, alphabet, counts)
        n_parts += 1
    return (first, lengths, bits, n_parts, parts[0][0], parts[0][1], parts[0][2], parts[1][0],
            parts[1][1], parts[1][2])


@njit(cache=True, nogil=True)
def _edge(counts, base, tail, extreme):  # pragma: no cover - compiled
    """``rans._range``'s ``edge`` over ``counts[base : base + 2048]``."""
    size = 2048
    acc = 0
    i = 0  # buckets wholly in the tail: searchsorted(from_top, tail, side="right")
    while i < size:
        nxt = acc + counts[base + size - 1 - i]
        if nxt > tail:
            break
        acc = nxt
        i += 1
    if i == 0 or i >= size or acc == 0:
        return extreme
    bits = np.empty(1, np.uint32)
    bits[0] = np.uint32((size - i) << 20)
    return min(extreme, float(bits.view(np.float32)[0]))


@njit(cache=True, nogil=True)
def clip_range(x, lo, hi, tail):  # pragma: no cover - compiled
    """``rans._range`` for ``tail >= 1`` values beyond each end: (lo, hi)."""
    counts = np.zeros(4096, np.int64)
    bits = x.view(np.uint32)
    for i in range(bits.size):
        counts[bits[i] >> np.uint32(20)] += 1
    hi_c = _edge(counts, 0, tail, hi)
    lo_c = -_edge(counts, 2048, tail, -lo)
    if hi_c - lo_c <= 0:
        return lo, hi
    return lo_c, hi_c


@njit(cache=True, nogil=True)
def quantize(x, inv, q_min, limit):  # pragma: no cover - compiled
    """``u = rint(x * inv) - q_min`` as int32 (float32 products, as ``rans._quantize``) and
    ``tables.histogram(u)``: (u, ok, alphabet, counts); not ok (no histogram) when a ``u`` is
    negative or ``limit`` or more (the reference's wide case)."""
    u = np.empty(x.size, np.int32)
    top = 0
    low = 0
    for i in range(x.size):
        v = np.int32(np.rint(x[i] * inv)) - np.int32(q_min)
        u[i] = v
        top = max(top, np.int64(v))
        low = min(low, np.int64(v))
    if low < 0 or top >= limit:
        none = np.zeros(0, np.int64)
        return u, False, none, none
    ok, alphabet, counts = histogram(u, top)
    return u, ok, alphabet, counts


@njit(cache=True, nogil=True)
def xlogx_sum(v, lg):  # pragma: no cover - compiled
    """``rans._xlogx(v).sum()`` (every ``v`` in ``[0, lg.size)``): numpy's float."""
    terms = np.empty(v.size, np.float64)
    for i in range(v.size):
        terms[i] = float(v[i]) * lg[v[i]]
    return np_sum(terms)


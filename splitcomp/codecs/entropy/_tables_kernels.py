"""Compiled (numba) forms of :mod:`.tables`' fit, serialisation and parsing of a FreqTable.

Imported only after ``_slicer_jit.active()`` returned True (numba's cache folder is set by
then). Every kernel computes what its numpy reference in :mod:`.tables` computes, bit for bit:

* integers (bins, counts, codes, bytes) by the same arithmetic;
* ``log2`` values are never computed here: the caller passes ``lg``, numpy's ``np.log2`` of
  ``0 .. len(lg) - 1`` (``lg[0] = 0``), so every ``c * log2(c)`` is numpy's own value; a
  kernel returns :data:`NEED_TABLE` when a count is past the table;
* float sums follow numpy's pairwise summation (:func:`pairwise`), so a cost that picks a bin
  width or a code precision is the very float numpy compares.

Parsers return a status instead of raising (0: fine, else the table is malformed), read only
inside ``buf[pos:end]`` and allocate only after the size was checked against the payload.
Top-level functions, not closures, so numba's on-disk cache finds them again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: status: a count lies past the log2 table handed in; the caller grows it or falls back
NEED_TABLE = -1
_K_CHOICES = (1, 2, 4, 8)
_LN2 = math.log(2)


@njit(cache=True, nogil=True)
def _block_sum(a, lo, n):  # pragma: no cover - compiled
    """numpy's sum of a block of at most 128: sequential below 8, else 8 accumulators."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    stop = n - (n % 8)
    while i < stop:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def pairwise(a, lo, n):  # pragma: no cover - compiled
    """``a[lo:lo + n].sum()`` in numpy's order (blocks of up to 128, halves above: the left
    half ``n // 2`` rounded down to a multiple of 8), so the float is numpy's to the last bit.
    The recursion runs on an explicit stack: numba's cache cannot reload recursive kernels."""
    if n <= 128:
        return _block_sum(a, lo, n)
    depth = 128
    s_lo = np.empty(depth, np.int64)
    s_n = np.empty(depth, np.int64)
    s_stage = np.empty(depth, np.int64)
    s_left = np.empty(depth, np.float64)
    s_lo[0], s_n[0], s_stage[0] = lo, n, 0
    sp = 1
    ret = 0.0
    while sp > 0:
        f = sp - 1
        fn = s_n[f]
        if fn <= 128:
            ret = _block_sum(a, s_lo[f], fn)
            sp -= 1
            continue
        n2 = fn // 2
        n2 -= n2 % 8
        if s_stage[f] == 0:
            s_stage[f] = 1
            s_lo[sp], s_n[sp], s_stage[sp] = s_lo[f], n2, 0
            sp += 1
        elif s_stage[f] == 1:
            s_left[f] = ret
            s_stage[f] = 2
            s_lo[sp], s_n[sp], s_stage[sp] = s_lo[f] + n2, fn - n2, 0
            sp += 1
        else:
            ret = s_left[f] + ret
            sp -= 1
    return ret


@njit(cache=True, nogil=True)
def np_sum(a):  # pragma: no cover - compiled
    """``float(a.sum())`` of a flat float64 array, as numpy computes it."""
    return 0.0 + pairwise(a, 0, a.size)


@njit(cache=True, nogil=True)
def bits_needed(v):  # pragma: no cover - compiled
    """``max(1, v.bit_length())`` for ``v >= 0``."""
    b = 0
    while v > 0:
        b += 1
        v >>= 1
    return max(1, b)


@njit(cache=True, nogil=True)
def binned(alphabet, counts, shift):  # pragma: no cover - compiled
    """``tables._binned``: bins ``alphabet >> shift`` (distinct) and their (rows, bins) counts."""
    m = alphabet.size
    nb = 1
    for i in range(1, m):
        if (alphabet[i] >> shift) != (alphabet[i - 1] >> shift):
            nb += 1
    bins = np.empty(nb, np.int64)
    col = np.empty(m, np.int64)
    b = -1
    for i in range(m):
        if i == 0 or (alphabet[i] >> shift) != (alphabet[i - 1] >> shift):
            b += 1
            bins[b] = alphabet[i] >> shift
        col[i] = b
    rows = counts.shape[0]
    out = np.zeros((rows, nb), np.int64)
    for r in range(rows):
        for i in range(m):
            out[r, col[i]] += counts[r, i]
    return bins, out


@njit(cache=True, nogil=True)
def table_cost(bins, counts, shift, lg):  # pragma: no cover - compiled
    """``tables._table_cost``, the same float (``lg`` covers the total count)."""
    rows, nb = counts.shape
    span = bins[nb - 1] - bins[0] + 1
    n_iv = 1
    for i in range(1, nb):
        if bins[i] - bins[i - 1] != 1:
            n_iv += 1
    alphabet_bits = 40 + (0 if span == nb else min(span, 16 * n_iv))
    top = 0
    for r in range(rows):
        for i in range(nb):
            top = max(top, counts[r, i])
    side = rows * nb * bits_needed(np.int64(np.rint(2 * math.log2(max(top, 1)))) + 1)
    row_terms = np.empty(rows, np.float64)
    cell_terms = np.empty(rows * nb, np.float64)
    total = 0
    for r in range(rows):
        n_row = 0
        for i in range(nb):
            c = counts[r, i]
            n_row += c
            cell_terms[r * nb + i] = float(c) * lg[c]
        row_terms[r] = float(n_row) * lg[n_row]
        total += n_row
    coded = np_sum(row_terms) - np_sum(cell_terms)
    return float(alphabet_bits + side) + coded + float(total) * shift


@njit(cache=True, nogil=True)
def fit(alphabet, counts, limit, lg):  # pragma: no cover - compiled
    """``FreqTable.fit``: (status, shift, k, bins, codes as uint8). Status 1: bad alphabet
    size, 2: not sorted/distinct/in range (the reference raises ValueError), 3: a negative
    count (the reference's behaviour is not defined: left to it), or NEED_TABLE with the
    total count in place of the shift."""
    m = alphabet.size
    rows = counts.shape[0]
    empty = np.zeros((0, 0), np.uint8)
    if not (0 < m <= limit) or counts.shape[1] != m:
        return 1, 0, 0, alphabet, empty
    if alphabet[0] < 0 or alphabet[m - 1] > (1 << 40) - 1:
        return 2, 0, 0, alphabet, empty
    for i in range(1, m):
        if alphabet[i] <= alphabet[i - 1]:
            return 2, 0, 0, alphabet, empty
    total = 0
    for r in range(rows):
        for i in range(m):
            if counts[r, i] < 0:
                return 3, 0, 0, alphabet, empty
            total += counts[r, i]
    if total >= lg.size:  # every count, binned or not, and every row total is <= total
        return NEED_TABLE, total, 0, alphabet, empty
    shift = 0
    bins = alphabet
    binc = counts
    best = 0.0
    if m > 2:
        best = table_cost(bins, binc, 0, lg)
    size8 = rows * m * 8
    if m > 2 and size8 > 256 and size8 > 0.01 * best:
        for s in range(1, 8):
            b, c = binned(alphabet, counts, s)
            if (b.size << s) > limit:
                break
            cost = table_cost(b, c, s, lg)
            if cost >= best:
                break
            best, shift, bins, binc = cost, s, b, c
    top = 0
    n_int = 0
    for r in range(binc.shape[0]):
        for i in range(binc.shape[1]):
            top = max(top, binc[r, i])
            n_int += binc[r, i]
    n_sym = float(n_int)
    best_cost = np.inf
    best_k = 1
    for k in (1, 2, 4, 8):
        w = bits_needed(np.int64(np.rint(k * math.log2(max(top, 1)))) + 1)
        cost = float(binc.size * w) + n_sym * _LN2 / (24 * k * k)
        if w <= 8 and cost < best_cost:
            best_cost, best_k = cost, k
    codes = np.zeros(binc.shape, np.uint8)
    for r in range(binc.shape[0]):
        for i in range(binc.shape[1]):
            c = binc[r, i]
            if c > 0:
                codes[r, i] = np.uint8(np.int64(np.rint(best_k * lg[c])) + 1)
    return 0, shift, best_k, bins, codes


@njit(cache=True, nogil=True)
def _put_varint(out, n, v):  # pragma: no cover - compiled
    while v >= 0x80:
        out[n] = np.uint8((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    out[n] = np.uint8(v)
    return n + 1


@njit(cache=True, nogil=True)
def to_bytes(bins, codes, k_index, shift):  # pragma: no cover - compiled
    """``FreqTable.to_bytes``: spec byte, alphabet (``tables._alphabet_bytes``), packed codes."""
    m = bins.size
    rows = codes.shape[0]
    cmax = 0
    for r in range(rows):
        for i in range(m):
            cmax = max(cmax, np.int64(codes[r, i]))
    w = bits_needed(cmax) if codes.size else 1
    out = np.empty(64 + 20 * m + (rows * m * w + 7) // 8, np.uint8)
    out[0] = np.uint8(k_index << 6 | shift << 3 | (w - 1))
    first = bins[0]
    last = bins[m - 1]
    n = _put_varint(out, 1, m)
    n = _put_varint(out, n, first)
    n = _put_varint(out, n, last - first)
    span = last - first + 1
    n_brk = 0
    for i in range(1, m):
        if bins[i] - bins[i - 1] != 1:
            n_brk += 1
    if span == m:
        out[n] = 2
        n += 1
    elif (span + 7) // 8 <= 2 * n_brk + 1:
        out[n] = 1
        n += 1
        nbytes = (span + 7) // 8
        out[n : n + nbytes] = 0
        for i in range(m):
            p = bins[i] - first
            out[n + (p >> 3)] |= np.uint8(0x80 >> (p & 7))
        n += nbytes
    else:
        out[n] = 0
        n = _put_varint(out, n + 1, n_brk + 1)
        start = 0
        for i in range(1, m + 1):
            if i == m or bins[i] - bins[i - 1] != 1:
                n = _put_varint(out, n, i - 1 - start)  # interval length - 1
                if i < m:
                    n = _put_varint(out, n, bins[i] - bins[i - 1] - 2)  # gap - 1
                start = i
    acc = 0
    nacc = 0
    for r in range(rows):
        for i in range(m):
            acc = (acc << w) | np.int64(codes[r, i])
            nacc += w
            while nacc >= 8:
                nacc -= 8
                out[n] = np.uint8((acc >> nacc) & 0xFF)
                n += 1
            acc &= (1 << nacc) - 1
    if nacc:
        out[n] = np.uint8((acc << (8 - nacc)) & 0xFF)
        n += 1
    return out[:n]


@njit(cache=True, nogil=True)
def _varint(buf, pos, end, max_bits):  # pragma: no cover - compiled
    """``Reader.varint``: (value, pos); value -2 for an error (truncated, too long), -1 for
    a value of 2**63 or more (past every bound a caller checks)."""
    shift = 0
    result = np.uint64(0)
    huge = False
    while True:
        if pos >= end:
            return -2, pos
        byte = np.int64(buf[pos])
        pos += 1
        part = byte & 0x7F
        if shift == 63:
            huge = huge or part > 1
            result |= np.uint64(part & 1) << np.uint64(63)
        else:
            result |= np.uint64(part) << np.uint64(shift)
        if not byte & 0x80:
            if huge or (result >> np.uint64(63)) != np.uint64(0):
                return -1, pos
            return np.int64(result), pos
        shift += 7
        if shift > max_bits:
            return -2, pos


@njit(cache=True, nogil=True)
def read(buf, pos, end, rows, max_symbol, max_alphabet):  # pragma: no cover - compiled
    """``FreqTable.read`` of ``buf[pos:end]``: (status, pos, k index, shift, bins, codes);
    status 0 where the reference parses the table, 1 where it raises BitstreamError."""
    no_bins = np.zeros(0, np.int64)
    no_codes = np.zeros((0, 0), np.uint8)
    if not (1 <= rows <= 8 * (end - pos)):
        return 1, pos, 0, 0, no_bins, no_codes
    spec = np.int64(buf[pos])
    pos += 1
    k_index, shift, w = spec >> 6, (spec >> 3) & 7, (spec & 7) + 1
    limit = min(max_alphabet, 1 << 20) >> shift
    max_sym = max_symbol >> shift
    m, pos = _varint(buf, pos, end, 63)
    if m == -2:
        return 1, pos, 0, 0, no_bins, no_codes
    first, pos = _varint(buf, pos, end, 62)
    if first < 0:
        return 1, pos, 0, 0, no_bins, no_codes
    width, pos = _varint(buf, pos, end, 62)
    if width < 0 or pos >= end:
        return 1, pos, 0, 0, no_bins, no_codes
    layout = np.int64(buf[pos])
    pos += 1
    if not (1 <= m <= limit) or m * rows * w > 8 * (end - pos):
        return 1, pos, 0, 0, no_bins, no_codes
    if first > max_sym or width > max_sym - first or m > width + 1:
        return 1, pos, 0, 0, no_bins, no_codes
    bins = np.empty(m, np.int64)
    if layout == 2:
        if m != width + 1:
            return 1, pos, 0, 0, no_bins, no_codes
        for i in range(m):
            bins[i] = first + i
    elif layout == 1:
        nbytes = (width + 1 + 7) // 8
        if nbytes > end - pos:
            return 1, pos, 0, 0, no_bins, no_codes
        j = 0
        for p in range(8 * nbytes):
            if (buf[pos + (p >> 3)] >> (7 - (p & 7))) & 1:
                if p > width or j >= m:
                    return 1, pos, 0, 0, no_bins, no_codes
                bins[j] = first + p
                j += 1
        if j != m or bins[0] != first or bins[m - 1] != first + width:
            return 1, pos, 0, 0, no_bins, no_codes
        pos += nbytes
    elif layout == 0:
        n_iv, pos = _varint(buf, pos, end, 63)
        if not (1 <= n_iv <= m):
            return 1, pos, 0, 0, no_bins, no_codes
        count = 2 * n_iv - 1
        if count > end - pos:
            return 1, pos, 0, 0, no_bins, no_codes
        seq = np.empty(count, np.int64)
        for i in range(count):  # tables.read_varints: at most 9 bytes each
            v = np.uint64(0)
            ln = 0
            while True:
                if pos >= end:
                    return 1, pos, 0, 0, no_bins, no_codes
                byte = np.uint64(buf[pos])
                pos += 1
                if ln < 9:
                    v |= (byte & np.uint64(0x7F)) << np.uint64(7 * ln)
                ln += 1
                if byte < 0x80:
                    break
            if ln > 9 or v > np.uint64(width):
                return 1, pos, 0, 0, no_bins, no_codes
            seq[i] = np.int64(v)
        total = 0
        span = 0
        for i in range(n_iv):
            total += seq[2 * i] + 1
            span += seq[2 * i] + 1
            if i < n_iv - 1:
                span += seq[2 * i + 1] + 1
        if total != m or span - 1 != width:
            return 1, pos, 0, 0, no_bins, no_codes
        j = 0
        s = first
        for i in range(n_iv):
            ln = seq[2 * i] + 1
            for t in range(ln):
                bins[j] = s + t
                j += 1
            if i < n_iv - 1:
                s += ln + seq[2 * i + 1] + 1
    else:
        return 1, pos, 0, 0, no_bins, no_codes
    nbits = rows * m * w
    nbytes = (nbits + 7) // 8
    if nbytes > end - pos:
        return 1, pos, 0, 0, no_bins, no_codes
    max_code = 40 * (1 << k_index) + 1
    codes = np.empty((rows, m), np.uint8)
    acc = 0
    nacc = 0
    q = pos
    mask = (1 << w) - 1
    for r in range(rows):
        for i in range(m):
            while nacc < w:
                acc = (acc << 8) | np.int64(buf[q])
                q += 1
                nacc += 8
            nacc -= w
            c = (acc >> nacc) & mask
            acc &= (1 << nacc) - 1
            if c > max_code:
                return 1, pos, 0, 0, no_bins, no_codes
            codes[r, i] = np.uint8(c)
    if acc != 0:  # non-zero padding
        return 1, pos, 0, 0, no_bins, no_codes
    return 0, pos + nbytes, k_index, shift, bins, codes

"""Compiled one-pass coders: frequency tables, models and rANS words in one kernel call.

Python around the coder (table parsing, models, a call per stream) cost more than the coding
itself on tensors of a few thousand elements; these kernels do a whole stream in one call.
:func:`decode_symbols` / :func:`encode_symbols` are :func:`.tables.decode_symbol_indices` /
:func:`.tables.encode_symbols` (:func:`decode_scaled` / :func:`encode_scaled`: the same on
values and row steps, tokenwise's self-contained rows), and :func:`decode_rans` /
:func:`encode_rans` the ``coder="ans"`` part of ``RansCodec.decode_array`` /
``encode_array``, each computing what the compiled path of the reference computes: tables
fitted, written and parsed by :mod:`._tables_kernels`, frequencies as ``tables._code_freqs``,
models by ``_ans_kernels.quantized_cdf`` and words by ``_ans_kernels.write`` / ``read`` /
``read_slots`` under the rule of ``AnsReader.read_model`` (a slot table above 64 symbols
for 2,048 symbols or more). Per stream, what ``AnsWriter.add`` / ``AnsReader.read`` do:
nothing coded for no symbols or a row with one symbol, an error for a row with none.
Decoders return status 0 where the reference decodes and 1 where it raises (the caller then
runs the reference for its error and message); no read outside the payload, no allocation
past what the caller's bounds allow.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._ans_kernels import finish, quantized_cdf, read, read_slots, reader_init, slot_table, write
from ._choose_kernels import histogram
from ._tables_kernels import fit, to_bytes
from ._tables_kernels import read as read_table

#: ``tables._MANTISSA``, one row per k index (k = 1, 2, 4, 8), zero-padded
_MANTISSA = np.array(
    [
        [1048576, 0, 0, 0, 0, 0, 0, 0],
        [1048576, 1482910, 0, 0, 0, 0, 0, 0],
        [1048576, 1246974, 1482910, 1763488, 0, 0, 0, 0],
        [1048576, 1143480, 1246974, 1359835, 1482910, 1617125, 1763488, 1923097],
    ],
    np.int64,
)
_SLOTS_ABOVE, _SLOT_BITS, _SLOTS_FROM = 64, 12, 2048
_F32_MAX = float(np.finfo(np.float32).max)


@njit(cache=True, nogil=True)
def row_freqs(codes, row, k_index, shift):  # pragma: no cover - compiled
    """``FreqTable.freqs(row)``: integer frequencies (float64), each bin's repeated
    ``2**shift`` times."""
    k = 1 << k_index
    m = codes.shape[1]
    width = 1 << shift
    out = np.empty(m * width, np.float64)
    for i in range(m):
        c = np.int64(codes[row, i])
        f = 0
        if c > 0:
            j = c - 1
            f = ((_MANTISSA[k_index, j % k] << (j // k)) + (1 << 19)) >> 20
        for t in range(width):
            out[i * width + t] = float(f)
    return out


@njit(cache=True, nogil=True)
def read_row(words, st, freqs, count, out, at):  # pragma: no cover - compiled
    """``AnsReader.read(count, freqs)`` into ``out[at:]``; False where it raises."""
    if count == 0:
        return True
    n_sym = freqs.size
    nz = 0
    last = 0
    for i in range(n_sym):
        if freqs[i] != 0:
            nz += 1
            last = i
    if nz == 0:
        return False
    if nz == 1:
        out[at : at + count] = last
        return True
    cdf = np.full(max(n_sym + 1, 17), np.uint32(1 << 24), np.uint32)
    if not quantized_cdf(freqs, cdf):
        return False
    # every search finds the one lo with cdf[lo] <= q < cdf[lo + 1] (the cdf rises
    # strictly), so the symbols and state do not depend on the search: AnsReader's rule,
    # plus a small slot table for streams of 17 symbols or more (a linear or binary search
    # there costs up to twice as much a symbol)
    if n_sym > _SLOTS_ABOVE and count >= _SLOTS_FROM:
        slots = slot_table(cdf, n_sym, _SLOT_BITS)
        read_slots(words, st, cdf, slots, _SLOT_BITS, count, out, at)
    elif n_sym > 16 and count >= 32:
        read_slots(words, st, cdf, slot_table(cdf, n_sym, 8), 8, count, out, at)
    else:
        read(words, st, cdf, n_sym, count, out, at)
    return True


@njit(cache=True, nogil=True)
def _words(buf, pos, end):  # pragma: no cover - compiled
    """The little-endian uint32 words of ``buf[pos:end]`` (a whole number of them)."""
    n = (end - pos) // 4
    w = np.empty(n, np.uint32)
    for i in range(n):
        j = pos + 4 * i
        lo16 = np.uint32(buf[j]) | (np.uint32(buf[j + 1]) << np.uint32(8))
        hi16 = np.uint32(buf[j + 2]) | (np.uint32(buf[j + 3]) << np.uint32(8))
        w[i] = lo16 | (hi16 << np.uint32(16))
    return w


@njit(cache=True, nogil=True)
def _symbol(bins, shift, idx):  # pragma: no cover - compiled
    """``FreqTable.symbols[idx]``."""
    if shift == 0:
        return bins[idx]
    return (bins[idx >> shift] << shift) + (idx & ((1 << shift) - 1))


@njit(cache=True, nogil=True)
def decode_symbols(buf, pos, end, n, max_symbol, max_alphabet):  # pragma: no cover
    """``decode_symbol_indices`` of ``buf[pos:end]`` (``n >= 1``): (status, symbols, idx)."""
    no_sym = np.zeros(0, np.int64)
    no_idx = np.zeros(0, np.int32)
    status, pos, k_index, shift, bins, codes = read_table(buf, pos, end, 1, max_symbol,
                                                          max_alphabet)
    if status or (end - pos) % 4:
        return 1, no_sym, no_idx
    words = _words(buf, pos, end)
    st = np.zeros(2, np.uint64)
    if not reader_init(words, st):
        return 1, no_sym, no_idx
    idx = np.empty(n, np.int32)
    if not read_row(words, st, row_freqs(codes, 0, k_index, shift), n, idx, 0):
        return 1, no_sym, no_idx
    width = 1 << shift
    symbols = np.empty(bins.size * width, np.int64)
    for i in range(symbols.size):
        symbols[i] = _symbol(bins, shift, i)
    return 0, symbols, idx


@njit(cache=True, nogil=True)
def decode_scaled(buf, pos, end, steps, c, max_symbol, max_alphabet):  # pragma: no cover
    """:func:`decode_symbols` of ``steps.size * c >= 1`` zigzagged integers, each value
    (float32) times its row's float32 step (a float32 product, as numpy's): (status,
    float32 values)."""
    n = steps.size * c
    status, symbols, idx = decode_symbols(buf, pos, end, n, max_symbol, max_alphabet)
    if status:
        return status, np.zeros(0, np.float32)
    levels = np.empty(symbols.size, np.float32)
    for i in range(symbols.size):
        u = symbols[i]
        levels[i] = np.float32((u >> 1) ^ -(u & 1))
    out = np.empty(n, np.float32)
    for row in range(steps.size):
        step = np.float32(steps[row])
        for j in range(row * c, row * c + c):
            out[j] = np.float32(levels[idx[j]] * step)
    return 0, out


@njit(cache=True, nogil=True)
def decode_rans(buf, pos, end, n, rows, runs, first, n_runs, n_zero, q_min, delta, cap_1,
                cap_rows, max_value):  # pragma: no cover - compiled
    """``RansCodec.decode_array`` after the header (``coder="ans"``): (status, n float32).

    ``runs``: the zero/non-zero mask is sent as ``n_runs`` runs, ``n_zero`` of them zero
    runs, the first non-zero iff ``first``; the value table has ``rows`` rows (blocks of
    ``n // rows``), symbols up to ``max_value``; ``cap_1``/``cap_rows``: the tables' caps."""
    fail = np.zeros(0, np.float32)
    block = n // rows
    n_nonzero_runs = n_runs - n_zero
    run_c = (n_zero, n_nonzero_runs)
    # the run tables: zero runs' (slot 0), then non-zero runs' (slot 1), where sent
    bins0 = bins1 = np.zeros(0, np.int64)
    codes0 = codes1 = np.zeros((0, 0), np.uint8)
    k0 = k1 = sh0 = sh1 = 0
    if runs and n_zero > 0:
        status, pos, k0, sh0, bins0, codes0 = read_table(buf, pos, end, 1, n - 1, cap_1)
        if status:
            return 1, fail
    if runs and n_nonzero_runs > 0:
        status, pos, k1, sh1, bins1, codes1 = read_table(buf, pos, end, 1, n - 1, cap_1)
        if status:
            return 1, fail
    has_values = not runs or n_nonzero_runs > 0
    vk = vs = 0
    v_bins = np.zeros(0, np.int64)
    v_codes = np.zeros((0, 0), np.uint8)
    if has_values:
        status, pos, vk, vs, v_bins, v_codes = read_table(buf, pos, end, rows, max_value,
                                                          cap_rows)
        if status:
            return 1, fail
    if (end - pos) % 4:
        return 1, fail
    words = _words(buf, pos, end)
    st = np.zeros(2, np.uint64)
    if not reader_init(words, st):
        return 1, fail
    mask = np.ones(n, np.bool_)
    if runs:
        lengths = np.empty(n_runs, np.int64)
        for s in range(2):
            c = run_c[s]
            if c == 0:
                continue
            idx = np.empty(c, np.int32)
            codes, k, sh, bins = (codes0, k0, sh0, bins0) if s == 0 else (codes1, k1, sh1, bins1)
            if not read_row(words, st, row_freqs(codes, 0, k, sh), c, idx, 0):
                return 1, fail
            # zero runs (s = 0) sit at odd places when the first run is non-zero
            at = (1 if first else 0) if s == 0 else (0 if first else 1)
            for i in range(c):
                lengths[at + 2 * i] = _symbol(bins, sh, idx[i]) + 1
        total = 0
        for i in range(n_runs):
            total += lengths[i]
        if total != n:
            return 1, fail
        p = 0
        for i in range(n_runs):
            value = (i % 2 == 0) == first
            mask[p : p + lengths[i]] = value
            p += lengths[i]
        if not has_values:
            for i in range(n):
                if mask[i]:
                    return 1, fail
            return 0, np.zeros(n, np.float32)
    width = 1 << vs
    n_sym = v_bins.size * width
    levels = np.empty(n_sym, np.float32)
    for i in range(n_sym):
        v = float(_symbol(v_bins, vs, i) + q_min) * delta
        levels[i] = np.float32(min(max(v, -_F32_MAX), _F32_MAX))
    out = np.zeros(n, np.float32)
    sym = np.empty(block, np.int32)
    for row in range(rows):
        count = block
        if runs:
            count = 0
            for i in range(row * block, (row + 1) * block):
                count += mask[i]
        if not read_row(words, st, row_freqs(v_codes, row, vk, vs), count, sym, 0):
            return 1, fail
        j = 0
        for i in range(row * block, (row + 1) * block):
            if mask[i]:
                out[i] = levels[sym[j]]
                j += 1
    return 0, out


@njit(cache=True, nogil=True)
def _rank(bins, shift, v):  # pragma: no cover - compiled
    """``ranks([v], FreqTable.symbols)[0]`` for a ``v`` inside the table's bins."""
    b = v >> shift
    lo, hi = 0, bins.size - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if bins[mid] < b:
            lo = mid + 1
        else:
            hi = mid
    return (lo << shift) + (v & ((1 << shift) - 1))


@njit(cache=True, nogil=True)
def _fit_bytes(alphabet, counts, limit, lg):  # pragma: no cover - compiled
    """``FreqTable.fit`` then ``to_bytes``: (status, bins, codes, k index, shift, bytes)."""
    status, shift, k, bins, codes = fit(alphabet, counts, limit, lg)
    k_index = 0 if k == 1 else (1 if k == 2 else (2 if k == 4 else 3))
    if status:
        return status, bins, codes, k_index, shift, np.zeros(0, np.uint8)
    return 0, bins, codes, k_index, shift, to_bytes(bins, codes, k_index, shift)


@njit(cache=True, nogil=True)
def _push(buf, st, freqs, symbols):  # pragma: no cover - compiled
    """``AnsWriter.add`` then its share of ``finish``: code ``symbols`` under ``freqs``
    (nothing for a row with one symbol); False where the compiled writer raises."""
    nz = 0
    for i in range(freqs.size):
        nz += freqs[i] != 0
    if symbols.size == 0 or nz <= 1:
        return True
    cdf = np.full(max(freqs.size + 1, 17), np.uint32(1 << 24), np.uint32)
    if not quantized_cdf(freqs, cdf):
        return False
    return write(buf, st, cdf[: freqs.size + 1], symbols, 0, symbols.size)


@njit(cache=True, nogil=True)
def encode_rans(r, alphabet, mat, zero_rank, n_parts, syms0, alpha0, counts0, syms1, alpha1,
                counts1, cap_1, cap_rows, lg):  # pragma: no cover - compiled
    """``RansCodec.encode_array`` after the header (``coder="ans"``): (status, bytes).

    ``r``: ranks into ``alphabet``; ``mat``: the blocking's (rows, m) counts; runs mode when
    ``n_parts`` (1 or 2) run-length streams are given, each symbols, alphabet and counts, and
    then ``zero_rank`` is the rank of the zero symbol.
    Status: 0, NEED_TABLE (``lg`` too short), else the reference raises ValueError."""
    fail = np.zeros(0, np.uint8)
    n_bytes = 0
    pieces = []
    run_syms = []
    run_freqs = []
    for p in range(n_parts):
        syms, alpha, cnt = (syms0, alpha0, counts0) if p == 0 else (syms1, alpha1, counts1)
        status, bins, codes, ki, sh, data = _fit_bytes(alpha, cnt.reshape(1, -1), cap_1, lg)
        if status:
            return status, fail
        pieces.append(data)
        n_bytes += data.size
        idx = np.empty(syms.size, np.int32)
        for i in range(syms.size):
            idx[i] = _rank(bins, sh, syms[i])
        run_syms.append(idx)
        run_freqs.append(row_freqs(codes, 0, ki, sh))
    rows, m = mat.shape
    counts = mat
    if n_parts > 0:  # runs mode: the zero symbol is coded by the runs
        counts = mat.copy()
        counts[:, zero_rank] = 0
        kept = 0
        for i in range(r.size):
            kept += r[i] != zero_rank
        rr = np.empty(kept, np.int32)
        j = 0
        for i in range(r.size):
            if r[i] != zero_rank:
                rr[j] = r[i]
                j += 1
    else:
        rr = r.copy()
    total = rr.size
    for p in range(n_parts):
        total += run_syms[p].size
    buf = np.empty(total * 24 // 32 + 3, np.uint32)
    st = np.zeros(2, np.uint64)
    if rr.size:
        status, bins, codes, ki, sh, data = _fit_bytes(alphabet, counts, cap_rows, lg)
        if status:
            return status, fail
        pieces.append(data)
        n_bytes += data.size
        if sh:  # ranks into the present symbols -> ranks into the table's bins
            remap = np.empty(m, np.int32)
            for i in range(m):
                remap[i] = _rank(bins, sh, alphabet[i])
            for i in range(rr.size):
                rr[i] = remap[rr[i]]
        ends = np.zeros(rows + 1, np.int64)
        for row in range(rows):
            s = 0
            for i in range(m):
                s += counts[row, i]
            ends[row + 1] = ends[row] + s
        for row in range(rows - 1, -1, -1):  # the last stream added is coded first
            if not _push(buf, st, row_freqs(codes, row, ki, sh), rr[ends[row] : ends[row + 1]]):
                return 1, fail
    for p in range(n_parts - 1, -1, -1):
        if not _push(buf, st, run_freqs[p], run_syms[p]):
            return 1, fail
    n_words = finish(buf, st)
    if n_words < 0:
        return 1, fail
    out = np.empty(n_bytes + 4 * n_words, np.uint8)
    at = 0
    for piece in pieces:
        out[at : at + piece.size] = piece
        at += piece.size
    for i in range(n_words):
        w = buf[i]
        for b in range(4):
            out[at + 4 * i + b] = np.uint8((w >> np.uint32(8 * b)) & np.uint32(0xFF))
    return 0, out


@njit(cache=True, nogil=True)
def encode_symbols(u, cap, lg):  # pragma: no cover - compiled
    """``tables.encode_symbols`` of a non-empty int array: (status, bytes). Status 0; 1 a
    negative value, 2 a span past the histogram's narrow case, or a fit status: the caller
    leaves those to the reference."""
    fail = np.zeros(0, np.uint8)
    top = 0
    for i in range(u.size):
        if u[i] < 0:
            return 1, fail
        top = max(top, np.int64(u[i]))
    if top >= max(4 * u.size, 1 << 16):
        return 2, fail
    _, alphabet, counts = histogram(u, top)
    status, bins, codes, ki, sh, data = _fit_bytes(alphabet, counts.reshape(1, -1), cap, lg)
    if status:
        return status, fail
    lut = np.empty(top + 1, np.int32)
    for i in range(alphabet.size):
        lut[alphabet[i]] = _rank(bins, sh, alphabet[i])
    idx = np.empty(u.size, np.int32)
    for i in range(u.size):
        idx[i] = lut[u[i]]
    freqs = row_freqs(codes, 0, ki, sh)
    nz = 0
    for i in range(freqs.size):
        nz += freqs[i] != 0
    buf = np.empty((u.size if nz > 1 else 0) * 24 // 32 + 3, np.uint32)
    st = np.zeros(2, np.uint64)
    if not _push(buf, st, freqs, idx):
        return 3, fail
    n_words = finish(buf, st)
    if n_words < 0:
        return 3, fail
    out = np.empty(data.size + 4 * n_words, np.uint8)
    out[: data.size] = data
    for i in range(n_words):
        w = buf[i]
        for b in range(4):
            out[data.size + 4 * i + b] = np.uint8((w >> np.uint32(8 * b)) & np.uint32(0xFF))
    return 0, out


@njit(cache=True, nogil=True)
def encode_scaled(x, steps, cap, lg):  # pragma: no cover - compiled
    """:func:`encode_symbols` of the zigzagged ``rint(x[row] / steps[row])`` of float32 rows
    ``x`` (r, c) on float32 ``steps`` (each a float32 quotient, rounded half to even, as
    numpy's): (status, bytes). Status 4 where a step is not positive and finite or a
    quotient not below 2**62 (the caller leaves those to numpy), else encode_symbols's."""
    r, c = x.shape
    u = np.empty(r * c, np.int64)
    for row in range(r):
        step = np.float32(steps[row])
        if not (step > 0 and step < np.inf):
            return 4, np.zeros(0, np.uint8)
        for j in range(c):
            y = np.rint(np.float32(x[row, j] / step))
            if not abs(y) < 4.6e18:
                return 4, np.zeros(0, np.uint8)
            q = np.int64(y)
            u[row * c + j] = (q << 1) ^ (q >> 63)
    return encode_symbols(u, cap, lg)

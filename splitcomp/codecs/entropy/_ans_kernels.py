"""The kernels of :mod:`._ans_jit` (imported there, after numba's cache folder is set).

Top-level functions, not closures: numba keys its on-disk cache by a function's code and its
closure, and a closure over another compiled function differs in every process, so such a
kernel would be compiled again by every process."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._ans_jit import PRECISION

mask24 = np.uint64((1 << PRECISION) - 1)
low = np.uint64(1 << 32)
shift_p = np.uint64(PRECISION)
shift_w = np.uint64(32)
shift_hi = np.uint64(64 - PRECISION)
mask32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def quantized_cdf(freqs, out):  # pragma: no cover - compiled
    """``out[: n + 1]``: constriction's fast-quantized cdf of ``freqs`` (n floats);
    False where constriction refuses the model (fewer than 2 symbols, no mass)."""
    n = freqs.size
    if n < 2 or n >= (1 << PRECISION) - 1 or out.size < n + 1:
        return False
    norm = 0.0
    for i in range(n):
        norm += freqs[i]
    # constriction: the sum must be a normal, positive float
    if not (norm >= 2.2250738585072014e-308 and norm < np.inf):
        return False
    scale = float((1 << PRECISION) - n) / norm
    cum = 0.0
    for i in range(n):
        v = cum * scale
        # Rust's float-to-int cast saturates (NaN to 0)
        q = 0 if not (v > 0.0) else (0xFFFFFFFF if v >= 4294967295.0 else int(v))
        out[i] = np.uint32((q + i) & 0xFFFFFFFF)
        cum += freqs[i]
    out[n] = np.uint32(1 << PRECISION)
    return True


@njit(cache=True, nogil=True)
def reader_init(words, st):  # pragma: no cover - compiled
    """Start decoding ``words`` (uint32): ``st = [state, words left]``; False for a
    stream that ends in a zero word."""
    n = words.size
    if n == 0:
        st[0] = np.uint64(0)
        st[1] = np.uint64(0)
        return True
    if words[n - 1] == 0:
        return False
    state = np.uint64(words[n - 1])
    left = n - 1
    if left > 0:
        left -= 1
        state = (state << shift_w) | np.uint64(words[left])
    st[0] = state
    st[1] = np.uint64(left)
    return True


@njit(cache=True, nogil=True)
def read(words, st, cdf, n_sym, count, out, at):  # pragma: no cover - compiled
    """Decode ``count`` symbols of the model ``cdf[: n_sym + 1]`` into ``out[at:]``.

    Decoding is latency-bound (each symbol needs the state the previous one left), so
    the symbol search avoids branches: a fixed count of 15 compares when ``cdf`` has at
    least 17 entries and those past ``n_sym`` are ``2**24`` (never below a quantile),
    a variable count up to 64 symbols, a binary search above."""
    state = st[0]
    left = np.int64(st[1])
    fixed = n_sym <= 16 and cdf.size >= 17
    for k in range(count):
        quantile = state & mask24
        q = np.uint32(quantile)
        lo = 0
        if fixed:
            for i in range(1, 16):
                lo += np.int64(cdf[i] <= q)
        elif n_sym <= 64:
            for i in range(1, n_sym):
                lo += np.int64(cdf[i] <= q)
        else:
            hi = n_sym  # invariant: cdf[lo] <= q < cdf[hi]
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if cdf[mid] <= q:
                    lo = mid
                else:
                    hi = mid
        left_c = np.uint64(cdf[lo])
        prob = np.uint64(cdf[lo + 1]) - left_c
        state = (state >> shift_p) * prob + (quantile - left_c)
        if state < low and left > 0:
            left -= 1
            state = (state << shift_w) | np.uint64(words[left])
        out[at + k] = lo
    st[0] = state
    st[1] = np.uint64(left)


@njit(cache=True, nogil=True)
def slot_table(cdf, n_sym, bits):  # pragma: no cover - compiled
    """``t[i]``: the symbol of quantile ``i << (24 - bits)``, for ``i`` up to ``2**bits``
    (the last entry: ``n_sym - 1``); a large alphabet's search then stays within
    ``t[i] .. t[i + 1]``, a few symbols."""
    size = 1 << bits
    t = np.empty(size + 1, np.int64)
    s = 0
    for i in range(size):
        q = np.uint32(i << (PRECISION - bits))
        while s + 1 < n_sym and cdf[s + 1] <= q:
            s += 1
        t[i] = s
    t[size] = n_sym - 1
    return t


@njit(cache=True, nogil=True)
def read_slots(words, st, cdf, slots, bits, count, out, at):  # pragma: no cover
    """:func:`read` for large alphabets, the search narrowed by ``slots`` (from
    :func:`slot_table` with ``bits``). The state update is written out again here: as a
    shared inlined helper returning (state, left) it measured 1.7x slower per symbol."""
    state = st[0]
    left = np.int64(st[1])
    drop = np.uint64(PRECISION - bits)
    for k in range(count):
        quantile = state & mask24
        q = np.uint32(quantile)
        i = np.int64(quantile >> drop)
        lo = slots[i]
        hi = slots[i + 1] + 1  # invariant: cdf[lo] <= q < cdf[hi]
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if cdf[mid] <= q:
                lo = mid
            else:
                hi = mid
        left_c = np.uint64(cdf[lo])
        prob = np.uint64(cdf[lo + 1]) - left_c
        state = (state >> shift_p) * prob + (quantile - left_c)
        if state < low and left > 0:
            left -= 1
            state = (state << shift_w) | np.uint64(words[left])
        out[at + k] = lo
    st[0] = state
    st[1] = np.uint64(left)


@njit(cache=True, nogil=True)
def slot_entries(cdf, n_sym, bits, tbl):  # pragma: no cover - compiled
    """``tbl[i]`` (``2**bits`` int64) for the quantiles ``i << (24 - bits)`` onwards of a
    strictly increasing ``cdf`` from 0 (as :func:`quantized_cdf` makes them): where one
    symbol ``s`` covers the whole slot, ``s | cdf[s] << 8 | probability << 33``; where a
    symbol starts inside it, ``-1 - s`` (``s``: the symbol at the slot's start). Filled by
    ranges, a store per entry."""
    size = 1 << bits
    drop = PRECISION - bits
    i = 0
    for s in range(n_sym):
        end = size if s == n_sym - 1 else min(
            (np.int64(cdf[s + 1]) + (1 << drop) - 1) >> drop, size)
        e = (s | (np.int64(cdf[s]) << 8)
             | ((np.int64(cdf[s + 1]) - np.int64(cdf[s])) << 33))
        while i < end:
            tbl[i] = e
            i += 1
    for s in range(1, n_sym):
        j = np.int64(cdf[s]) >> drop
        if np.int64(cdf[s]) & ((1 << drop) - 1) and j < size and tbl[j] >= 0:
            tbl[j] = -1 - (tbl[j] & 0xFF)


@njit(cache=True, nogil=True)
def read_entries(words, st, cdf, tbl, bits, count, out, at):  # pragma: no cover
    """:func:`read` of a ``cdf`` of at most 256 symbols with :func:`slot_entries`' table
    (the same symbols and state): one load gives a slot's symbol, start and probability;
    a slot that a boundary splits (a predicted branch, rare) steps over ``cdf`` from its
    first symbol (``cdf[n_sym] = 2**24`` ends it). ~0.5x :func:`read`'s time a symbol:
    the state's chain holds one load, not a search and two loads."""
    state = st[0]
    left = np.int64(st[1])
    drop = np.uint64(PRECISION - bits)
    for k in range(count):
        quantile = state & mask24
        e = tbl[np.int64(quantile >> drop)]
        if e >= 0:
            lo = e & 0xFF
            left_c = np.uint64((e >> 8) & 0x1FFFFFF)
            prob = np.uint64(e >> 33)
        else:
            q = np.uint32(quantile)
            lo = -1 - e
            while cdf[lo + 1] <= q:
                lo += 1
            left_c = np.uint64(cdf[lo])
            prob = np.uint64(cdf[lo + 1]) - left_c
        state = (state >> shift_p) * prob + (quantile - left_c)
        if state < low and left > 0:
            left -= 1
            state = (state << shift_w) | np.uint64(words[left])
        out[at + k] = lo
    st[0] = state
    st[1] = np.uint64(left)


@njit(cache=True, nogil=True)
def read_rows(words, st, probs, out):  # pragma: no cover - compiled
    """One symbol per row of ``probs`` (each row its own model, quantized as
    :func:`quantized_cdf` does); False where constriction would refuse a row."""
    n_sym = probs.shape[1]
    cdf = np.empty(max(n_sym + 1, 17), np.uint32)
    cdf[:] = np.uint32(1 << PRECISION)
    for r in range(probs.shape[0]):
        if not quantized_cdf(probs[r], cdf):
            return False
        read(words, st, cdf, n_sym, 1, out, r)
    return True


@njit(cache=True, nogil=True)
def read_rows_trellis(words, st, probs0, probs1, kt, out):  # pragma: no cover - compiled
    """One symbol per channel of a trellis row: :func:`read_rows` with the row of ``probs0``
    in states 0 and 1, of ``probs1`` in 2 and 3, from state 0; state ``2h + l`` moves to
    ``2 (l ^ p) + h`` with the symbol's parity ``p`` (of ``s - kt`` for ``s <= 2 kt``, 0 for
    the even escape ``2 kt + 1``, 1 for the odd one)."""
    n_sym = probs0.shape[1]
    if probs1.shape[0] != probs0.shape[0] or probs1.shape[1] != n_sym:
        return False
    cdf = np.empty(max(n_sym + 1, 17), np.uint32)
    cdf[:] = np.uint32(1 << PRECISION)
    state = 0
    for r in range(probs0.shape[0]):
        if not quantized_cdf(probs0[r] if state < 2 else probs1[r], cdf):
            return False
        read(words, st, cdf, n_sym, 1, out, r)
        s = out[r]
        par = ((s - kt) if s <= 2 * kt else s - 2 * kt - 1) & 1
        state = (((state & 1) ^ par) << 1) | (state >> 1)
    return True


@intrinsic
def umulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64: one ``mul`` instruction. numba has
    no 128-bit integers, and four 32-bit products instead measured ~7 % slower per symbol."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))

    return sig, codegen


@njit(cache=True, nogil=True)
def reciprocals(cdf, rcp, rsh):  # pragma: no cover - compiled
    """Per symbol of ``cdf``: ryg_rans' ``Rans64EncSymbolInit`` reciprocal of its probability
    (Alverson: ``rcp = ceil(2**(63 + shift) / p)``), so :func:`write_rcp` divides by a
    multiply and a shift; ``p < 2``: rcp 0 (:func:`write_rcp` then divides)."""
    one = np.uint64(1)
    for s in range(cdf.size - 1):
        freq = np.uint64(cdf[s + 1]) - np.uint64(cdf[s])
        if freq < 2:
            rcp[s] = np.uint64(0)
            rsh[s] = np.uint64(0)
            continue
        shift = np.uint64(0)
        while freq > (one << shift):
            shift += one
        # the 96-bit long division (2**(shift + 63) + freq - 1) // freq in two 64-bit steps
        x1 = one << (shift + np.uint64(31))
        t1 = x1 // freq
        t0 = (freq - one + ((x1 % freq) << shift_w)) // freq
        rcp[s] = t0 + (t1 << shift_w)
        rsh[s] = shift - one


@njit(cache=True, nogil=True)
def write_rcp(buf, st, cdf, rcp, rsh, symbols, lo, hi):  # pragma: no cover - compiled
    """:func:`write` with the division by the probability done by :func:`reciprocals`'
    multiply-high and shift: ryg_rans' "fast encode" quotient is exact for states below
    ``2**63`` and at most one too high above (constriction's states reach ``2**64``, with
    probabilities over 1/2); a remainder check catches that and divides, so the state and
    the words are the division's, at ~0.55x its time (measured, 6,500 symbols)."""
    one_p = np.uint64(1 << PRECISION)
    state = st[0]
    n = np.int64(st[1])
    n_sym = cdf.size - 1
    for k in range(hi - 1, lo - 1, -1):
        s = symbols[k]
        if s < 0 or s >= n_sym:
            return False
        left_c = np.uint64(cdf[s])
        prob = np.uint64(cdf[s + 1]) - left_c
        if (state >> shift_hi) >= prob:
            if n >= buf.size:
                return False
            buf[n] = np.uint32(state & mask32)
            n += 1
            state = state >> shift_w
        q = umulhi(state, rcp[s]) >> rsh[s]
        if state - q * prob >= prob:  # rare: see above (and probability 1: rcp 0)
            state = ((state // prob) << shift_p) | (left_c + state % prob)
        else:  # (q << 24) | (left_c + state - q * prob), one multiply on the state's path
            state = state + left_c + q * (one_p - prob)
    st[0] = state
    st[1] = np.uint64(n)
    return True


@njit(cache=True, nogil=True)
def write(buf, st, cdf, symbols, lo, hi):  # pragma: no cover - compiled
    """Push ``symbols[lo:hi]`` in reverse (so they decode in order) onto the stack
    ``st = [state, words in buf]``; False if ``buf`` is full or a symbol is outside the
    model (constriction raises for both). Streams long for their alphabet go through
    :func:`write_rcp` (reciprocals cost two divisions a symbol of the alphabet)."""
    n_sym = cdf.size - 1
    if hi - lo > 2 * n_sym + 8:
        rcp = np.empty(max(n_sym, 0), np.uint64)
        rsh = np.empty(max(n_sym, 0), np.uint64)
        reciprocals(cdf, rcp, rsh)
        return write_rcp(buf, st, cdf, rcp, rsh, symbols, lo, hi)
    state = st[0]
    n = np.int64(st[1])
    for k in range(hi - 1, lo - 1, -1):
        s = symbols[k]
        if s < 0 or s >= n_sym:
            return False
        left_c = np.uint64(cdf[s])
        prob = np.uint64(cdf[s + 1]) - left_c
        if (state >> shift_hi) >= prob:
            if n >= buf.size:
                return False
            buf[n] = np.uint32(state & mask32)
            n += 1
            state = state >> shift_w
        state = ((state // prob) << shift_p) | (left_c + state % prob)
    st[0] = state
    st[1] = np.uint64(n)
    return True


@njit(cache=True, nogil=True)
def finish(buf, st):  # pragma: no cover - compiled
    """Append the state's words (low, then a non-zero high); the stream's word count,
    or -1 if ``buf`` has no room."""
    state = st[0]
    n = np.int64(st[1])
    extra = 0 if state == 0 else (1 if state < low else 2)
    if n + extra > buf.size:
        return -1
    if extra >= 1:
        buf[n] = np.uint32(state & np.uint64(0xFFFFFFFF))
    if extra == 2:
        buf[n + 1] = np.uint32(state >> shift_w)
    return n + extra


@njit(cache=True, nogil=True)
def write_rows(buf, st, probs, symbols):  # pragma: no cover - compiled
    """:func:`write` with one model per symbol, the rows of ``probs``."""
    n_sym = probs.shape[1]
    cdf = np.empty(n_sym + 1, np.uint32)
    for r in range(symbols.size - 1, -1, -1):
        if not quantized_cdf(probs[r], cdf):
            return False
        if not write(buf, st, cdf, symbols, r, r + 1):
            return False
    return True


@njit(cache=True, nogil=True)
def write_parts(buf, st, cdfs, sizes, bounds, symbols):  # pragma: no cover - compiled
    """:func:`write` of parts ``symbols[bounds[i]:bounds[i + 1]]`` under the model
    ``cdfs[i, : sizes[i] + 1]``, part 0 first (so the last part decodes first)."""
    for i in range(sizes.size):
        if not write(buf, st, cdfs[i, : sizes[i] + 1], symbols, bounds[i], bounds[i + 1]):
            return False
    return True

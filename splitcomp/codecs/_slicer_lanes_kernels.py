"""SLICER's two rANS lanes (flags bit 4, ``docs/bitstream.md``): the symbols of every stream
alternate between two independent rANS stacks, even positions on lane 0, odd on lane 1, so a
decoder runs two state chains side by side (a symbol's state update waits on the previous
one's: the chain, not the work, bounds a single stack). Readers for both layouts (one lane:
the streams before bit 4) and the encoder's writer; kernels of :mod:`._slicer_fused` and
:mod:`._slicer_fused_enc`."""

from __future__ import annotations

import numpy as np
from numba import njit

from .entropy import _ans_kernels as ans
from .entropy._ans_jit import PRECISION
from .entropy._ans_kernels import finish, read, umulhi

#: quantile bits of the slot tables (:func:`.entropy._ans_kernels.slot_entries`), 2 KiB
#: each: the mask models' (precomputed) and the level models' (a decode's ~30 stay in L1; 10
#: bits measured no faster: fewer split slots, but 8 KiB tables)
quad_bits = level_bits = 8
quad_drop = np.uint64(24 - quad_bits)
level_drop = np.uint64(24 - level_bits)


@njit(cache=True, nogil=True)
def pairs(lanes, w0, w1, st, cdf, tbl, drop, count, out, at, nib):  # pragma: no cover
    """:func:`.entropy._ans_kernels.read_entries` of ``count`` symbols, alternating between
    the lanes (lane 0 only when ``lanes`` is 1), written at ``at``: into ``out[at + k]``,
    or (``nib``) as the four bits of a mask nibble into ``out[at + 4 k :]``. ``st``: [state,
    words left] of lane 0, then of lane 1. The two state chains written side by side: each
    symbol's state waits on its lane's previous one only. The step is
    :func:`.entropy._ans_kernels.read_entries`' written out twice on purpose: the same step
    as one shared njit function (inline ``"always"`` or not) ran the slicer ~3.5x slower here
    (decode 208 against 60 us a sample, encode likewise with ``write_rcp``'s step)."""
    s0, l0, s1, l1 = st[0], np.int64(st[1]), st[2], np.int64(st[3])
    both = lanes == 2
    k = 0
    while k < count:
        q0 = s0 & ans.mask24
        e0 = tbl[np.int64(q0 >> drop)]
        if e0 >= 0:
            a = e0 & 0xFF
            c0 = np.uint64((e0 >> 8) & 0x1FFFFFF)
            p0 = np.uint64(e0 >> 33)
        else:
            a = -1 - e0
            while cdf[a + 1] <= np.uint32(q0):
                a += 1
            c0 = np.uint64(cdf[a])
            p0 = np.uint64(cdf[a + 1]) - c0
        s0 = (s0 >> ans.shift_p) * p0 + (q0 - c0)
        if s0 < ans.low and l0 > 0:
            l0 -= 1
            s0 = (s0 << ans.shift_w) | np.uint64(w0[l0])
        if nib:
            o = at + 4 * k
            out[o] = a & 1
            out[o + 1] = (a >> 1) & 1
            out[o + 2] = (a >> 2) & 1
            out[o + 3] = a >> 3
        else:
            out[at + k] = a
        k += 1
        if not both or k >= count:
            continue
        q1 = s1 & ans.mask24
        e1 = tbl[np.int64(q1 >> drop)]
        if e1 >= 0:
            b = e1 & 0xFF
            c1 = np.uint64((e1 >> 8) & 0x1FFFFFF)
            p1 = np.uint64(e1 >> 33)
        else:
            b = -1 - e1
            while cdf[b + 1] <= np.uint32(q1):
                b += 1
            c1 = np.uint64(cdf[b])
            p1 = np.uint64(cdf[b + 1]) - c1
        s1 = (s1 >> ans.shift_p) * p1 + (q1 - c1)
        if s1 < ans.low and l1 > 0:
            l1 -= 1
            s1 = (s1 << ans.shift_w) | np.uint64(w1[l1])
        if nib:
            o = at + 4 * k
            out[o] = b & 1
            out[o + 1] = (b >> 1) & 1
            out[o + 2] = (b >> 2) & 1
            out[o + 3] = b >> 3
        else:
            out[at + k] = b
        k += 1
    st[0], st[1], st[2], st[3] = s0, np.uint64(l0), s1, np.uint64(l1)


@njit(cache=True, nogil=True)
def nibbles(lanes, w0, w1, st, cdf, tbl, count, bits, at):  # pragma: no cover - compiled
    """``count`` 4-bit mask symbols (``tbl`` of ``quad_bits``), each as its four bits into
    ``bits[at + 4 k :]`` (a run's padding bits land past its end: the next run, read after
    it, or the slack of ``bits``)."""
    pairs(lanes, w0, w1, st, cdf, tbl, quad_drop, count, bits, at, True)


@njit(cache=True, nogil=True)
def levels(lanes, w0, w1, st, cdf, tbl, fast, n_sym, count, out, at):  # pragma: no cover
    """Level symbols: by the slot table (``level_bits``) where ``fast``, else by
    :func:`.entropy._ans_kernels.read`'s search, lane by lane, then dealt in turn."""
    if fast:
        pairs(lanes, w0, w1, st, cdf, tbl, level_drop, count, out, at, False)
    elif lanes == 1:
        read(w0, st[0:2], cdf, n_sym, count, out, at)
    else:
        c0 = (count + 1) // 2
        tmp = np.empty(max(count, 1), np.int32)
        read(w0, st[0:2], cdf, n_sym, c0, tmp, 0)
        read(w1, st[2:4], cdf, n_sym, count - c0, tmp, c0)
        for k in range(count):
            out[at + k] = tmp[(k >> 1) + (c0 if k & 1 else 0)]


@njit(cache=True, nogil=True)
def lane_words(buf, pos, lanes):  # pragma: no cover - compiled
    """The rANS words from ``buf[pos:]``: (lane 0's, lane 1's, error code); two lanes: a
    varint count of lane 0's words first."""
    n = buf.size
    n0 = -1
    if lanes == 2:
        n0 = 0
        shift = 0
        big = False
        while True:
            if pos >= n:
                return np.empty(0, np.uint32), np.empty(0, np.uint32), 1
            b = np.int64(buf[pos])
            pos += 1
            v = b & 0x7F
            if v:
                if shift >= 32:
                    big = True
                else:
                    n0 |= v << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                return np.empty(0, np.uint32), np.empty(0, np.uint32), 12
        if big or 4 * n0 > n - pos:
            return np.empty(0, np.uint32), np.empty(0, np.uint32), 1
    if (n - pos) % 4:
        return np.empty(0, np.uint32), np.empty(0, np.uint32), 9
    words = np.empty((n - pos) // 4, np.uint32)
    for i in range(words.size):
        q = pos + 4 * i
        words[i] = (np.uint32(buf[q]) | (np.uint32(buf[q + 1]) << 8)
                    | (np.uint32(buf[q + 2]) << 16) | (np.uint32(buf[q + 3]) << 24))
    if n0 < 0:
        n0 = words.size
    return words[:n0], words[n0:], 0


@njit(cache=True, nogil=True)
def write_pairs(b0, b1, st, cdf, rcp, rsh, symbols, lo, hi):  # pragma: no cover - compiled
    """:func:`.entropy._ans_kernels.write_rcp` of ``symbols[lo:hi]`` on two lanes: position
    ``k`` on lane ``(k - lo) & 1`` (buffer ``b0`` or ``b1``; ``st``: [state, words] of
    each), the two lanes' state chains side by side; False as ``write_rcp``. Its step is
    written out per lane for the reason :func:`pairs` gives."""
    one_p = np.uint64(1 << PRECISION)
    n_sym = cdf.size - 1
    top = (hi - 1 - lo) & 1  # the lane of the last position, coded first
    sa, na, sb, nb = st[2 * top], np.int64(st[2 * top + 1]), st[2 - 2 * top], np.int64(
        st[3 - 2 * top])
    ba = b1 if top else b0
    bb = b0 if top else b1
    k = hi - 1
    while k >= lo:
        s = symbols[k]
        if s < 0 or s >= n_sym:
            return False
        left_c = np.uint64(cdf[s])
        prob = np.uint64(cdf[s + 1]) - left_c
        if (sa >> ans.shift_hi) >= prob:
            if na >= ba.size:
                return False
            ba[na] = np.uint32(sa & ans.mask32)
            na += 1
            sa = sa >> ans.shift_w
        q = umulhi(sa, rcp[s]) >> rsh[s]
        if sa - q * prob >= prob:  # rare: see write_rcp
            sa = ((sa // prob) << ans.shift_p) | (left_c + sa % prob)
        else:
            sa = sa + left_c + q * (one_p - prob)
        k -= 1
        if k < lo:
            break
        s = symbols[k]
        if s < 0 or s >= n_sym:
            return False
        left_c = np.uint64(cdf[s])
        prob = np.uint64(cdf[s + 1]) - left_c
        if (sb >> ans.shift_hi) >= prob:
            if nb >= bb.size:
                return False
            bb[nb] = np.uint32(sb & ans.mask32)
            nb += 1
            sb = sb >> ans.shift_w
        q = umulhi(sb, rcp[s]) >> rsh[s]
        if sb - q * prob >= prob:
            sb = ((sb // prob) << ans.shift_p) | (left_c + sb % prob)
        else:
            sb = sb + left_c + q * (one_p - prob)
        k -= 1
    st[2 * top], st[2 * top + 1] = sa, np.uint64(na)
    st[2 - 2 * top], st[3 - 2 * top] = sb, np.uint64(nb)
    return True


@njit(cache=True, nogil=True)
def write_lanes(words, head, h, sym, starts, model, n_parts, quad, quad_rcp, quad_rsh, cdf,
                rcp, rsh, n_levels):  # pragma: no cover - compiled
    """The streams ``sym[starts[i] : starts[i + 1]]`` (model ``m = model[i]``: the mask
    model ``quad[-1 - m]`` when negative, else level row ``m``) on two lanes: lane 0's words
    then lane 1's into ``words``, the varint count of lane 0's appended to ``head`` at
    ``h``; (new ``h``, words), or (-1, 0) when a buffer is too small or a symbol is
    outside its model."""
    spare = np.empty(words.size, np.uint32)
    st = np.zeros(4, np.uint64)
    for i in range(n_parts - 1, -1, -1):  # the last stream first
        m = model[i]
        if m < 0:
            ok = write_pairs(words, spare, st, quad[-1 - m], quad_rcp[-1 - m],
                             quad_rsh[-1 - m], sym, starts[i], starts[i + 1])
        else:
            ok = write_pairs(words, spare, st, cdf[m, : n_levels + 1], rcp[m], rsh[m], sym,
                             starts[i], starts[i + 1])
        if not ok:
            return -1, 0
    n0 = finish(words, st[0:2])
    n1 = finish(spare, st[2:4])
    if n0 < 0 or n1 < 0 or n0 + n1 > words.size:
        return -1, 0
    words[n0 : n0 + n1] = spare[:n1]
    v = n0
    while True:
        if h >= head.size:
            return -1, 0
        if v < 128:
            head[h] = v
            return h + 1, n0 + n1
        head[h] = (v & 0x7F) | 0x80
        h += 1
        v >>= 7

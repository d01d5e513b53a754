"""The kernels of :mod:`._slicer_fused`: SLICER's decoder in one compiled pass (imported
there, after numba's cache folder is set; top-level functions so numba's on-disk cache finds
them in every process, see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._slicer_quant import MAX_LEVELS, MAX_PIECES
from ._slicer_values import N_CONTEXTS
from .entropy._ans_kernels import quantized_cdf, read, reader_init

n_ctx = N_CONTEXTS
f32_max = float(np.finfo(np.float32).max)


@njit(cache=True, nogil=True)
def f32_at(buf, pos, tmp):  # pragma: no cover - compiled
    tmp[0] = (np.uint32(buf[pos]) | (np.uint32(buf[pos + 1]) << 8)
              | (np.uint32(buf[pos + 2]) << 16) | (np.uint32(buf[pos + 3]) << 24))
    return tmp.view(np.float32)[0]


@njit(cache=True, nogil=True)
def read_grid(buf, pos, g, starts, steps, cells, offsets, pieces, tmp):  # pragma: no cover
    """Grid ``g`` at ``pos``: (new pos, error code)."""
    n = buf.size
    if pos + 6 > n:
        return pos, 1
    t = f32_at(buf, pos, tmp)
    if not (np.isfinite(t) and t > 0):
        return pos, 3
    offsets[g] = buf[pos + 4]
    pieces[g] = buf[pos + 5]
    pos += 6
    if offsets[g] == 0 or not (1 <= pieces[g] <= MAX_PIECES):
        return pos, 3
    total = 0
    for i in range(pieces[g]):
        if pos + 4 > n:
            return pos, 1
        steps[g, i] = f32_at(buf, pos, tmp)
        pos += 4
        value = 0
        shift = 0
        big = False
        while True:
            if pos >= n:
                return pos, 1
            b = np.int64(buf[pos])
            pos += 1
            v = b & 0x7F
            if v:
                if shift >= 24:
                    big = True
                else:
                    value |= v << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                return pos, 12
        if big or value < 1 or total + value > MAX_LEVELS:
            return pos, 3
        cells[g, i] = value
        total += value
    if pos + 4 * (pieces[g] - 1) > n:
        return pos, 1
    starts[g, 0] = t
    for i in range(1, pieces[g]):
        starts[g, i] = f32_at(buf, pos, tmp)
        pos += 4
    for i in range(pieces[g]):
        if not (np.isfinite(steps[g, i]) and steps[g, i] > 0 and np.isfinite(starts[g, i])):
            return pos, 3
        if i and not starts[g, i] > starts[g, i - 1]:
            return pos, 3
    return pos, 0


@njit(cache=True, nogil=True)
def read_histograms(buf, pos, rows, size, table, freqs):  # pragma: no cover - compiled
    """``rows`` histograms of ``size`` symbols into ``freqs``: (new pos, error code)."""
    n = buf.size
    if pos >= n:
        return pos, 1
    width = np.int64(buf[pos])
    pos += 1
    if not 1 <= width <= 6:
        return pos, 8
    span = (size + 7) // 8
    if pos + rows * span > n:
        return pos, 1
    m = 0
    for r in range(rows):
        base = pos + r * span
        any_ = False
        for s in range(span * 8):
            bit = (buf[base + (s >> 3)] >> (s & 7)) & 1
            if bit:
                if s >= size:
                    return pos, 8
                any_ = True
                m += 1
        if not any_:
            return pos, 8
    bitmap = pos
    pos += rows * span
    nbytes = (m * width + 7) // 8
    if pos + nbytes > n:
        return pos, 1
    for b in range(m * width, nbytes * 8):
        if (buf[pos + (b >> 3)] >> (7 - (b & 7))) & 1:
            return pos, 8
    k = 0
    for r in range(rows):
        for s in range(size):
            freqs[r, s] = 0.0
            if (buf[bitmap + r * span + (s >> 3)] >> (s & 7)) & 1:
                code = 0
                for i in range(width):
                    b = k * width + i
                    code = (code << 1) | ((buf[pos + (b >> 3)] >> (7 - (b & 7))) & 1)
                if not 1 <= code < table.size:
                    return pos, 8
                freqs[r, s] = table[code]
                k += 1
    return pos + nbytes, 0


@njit(cache=True, nogil=True)
def read_bits(words, st, quad, code, count, bits, at):  # pragma: no cover - compiled
    """``count`` mask bits (a run of 4-bit symbols) into ``bits[at : at + count]``."""
    n_nib = (count + 3) // 4
    nib = np.empty(n_nib, np.int32)
    read(words, st, quad[code], 16, n_nib, nib, 0)
    for k in range(count):
        bits[at + k] = (nib[k >> 2] >> (k & 3)) & 1


@njit(cache=True, nogil=True)
def first_total(cells, pieces, g):  # pragma: no cover - compiled
    total = 0
    for i in range(pieces[g]):
        total += cells[g, i]
    return total


@njit(cache=True, nogil=True)
def decode(buf, planes, channels, phase_a, phase_b, nbr, base, rescale, quad, table, out):
    """One slicer payload into ``out`` (planes, plane size); 0 or an error code."""  # noqa
    n = buf.size
    n_a, n_b = phase_a.size, phase_b.size
    tmp = np.empty(1, np.uint32)
    if n < 1:
        return 1
    flags = np.int64(buf[0])
    pos = 1
    if flags >= 16:
        return 2
    starts = np.zeros((2, MAX_PIECES), np.float32)
    steps = np.zeros((2, MAX_PIECES), np.float32)
    cells = np.zeros((2, MAX_PIECES), np.int64)
    offsets = np.zeros(2, np.int64)
    pieces = np.zeros(2, np.int64)
    signs = np.zeros(2, np.float64)
    n_grids = 0
    for bit in (1, 2):
        if flags & bit:
            pos, err = read_grid(buf, pos, n_grids, starts, steps, cells, offsets, pieces,
                                 tmp)
            if err:
                return err
            signs[n_grids] = 1.0 if bit == 1 else -1.0
            n_grids += 1
    if n_grids == 0:
        if flags != 0 or pos != n:
            return 4
        out[:] = 0.0
        return 0
    # reconstruction table: levels of each grid in alphabet order, then "dropped"
    n_levels = 0
    for g in range(n_grids):
        for i in range(pieces[g]):
            n_levels += cells[g, i]
    lut = np.empty(n_levels + 1, np.float32)
    signed = np.empty(n_levels + 1, np.int64)
    k = 0
    for g in range(n_grids):
        first = 0
        o = offsets[g] / 256
        for i in range(pieces[g]):
            s0, d = np.float64(starts[g, i]), np.float64(steps[g, i])
            for j in range(cells[g, i]):
                rec = s0 + ((np.float64(first + j) - np.float64(first)) + o) * d
                lut[k] = np.float32(signs[g] * min(rec, f32_max))
                k += 1
            first += cells[g, i]
    k = 0
    for g in range(n_grids):
        for j in range(first_total(cells, pieces, g)):
            signed[k] = (j + 1) if signs[g] > 0 else -(j + 1)
            k += 1
    lut[n_levels] = 0.0
    signed[n_levels] = 0
    # mask model
    n_cls = 4 if flags & 4 else 1
    cls = np.zeros(planes, np.int64)
    if flags & 4:
        nbytes = (channels + 3) // 4
        if pos + nbytes > n:
            return 1
        for p in range(planes):
            ch = p % channels
            cls[p] = (buf[pos + (ch >> 2)] >> (2 * (ch & 3))) & 3
        pos += nbytes
    n_code_b = n_cls * 5 if n_b else n_cls
    if pos + n_cls + (n_code_b if n_b else 0) > n:
        return 1
    code_a = buf[pos : pos + n_cls]
    pos += n_cls
    code_b = code_a
    if n_b:
        code_b = buf[pos : pos + n_code_b]
        pos += n_code_b
    for c in code_a:
        if c == 0:
            return 5
    for c in code_b:
        if c == 0:
            return 5
    # value models
    use_ctx = (flags & 8) != 0
    if use_ctx and not (n_b > 0 and n_levels > 1):
        return 6
    shift = 0
    used = np.zeros(n_ctx, np.bool_)
    rows = 0
    if use_ctx:
        if pos + 3 > n:
            return 1
        shift = np.int64(buf[pos])
        present = np.int64(buf[pos + 1]) | (np.int64(buf[pos + 2]) << 8)
        pos += 3
        if shift > 15 or present >= (1 << n_ctx):
            return 7
        rows = 1
        for c in range(n_ctx):
            used[c] = (present >> c) & 1
            rows += used[c]
    elif n_levels > 1:
        rows = 1
    # padded to 17 entries of 2**24 at least: the fixed-width symbol search
    cdfs = np.full((rows, max(n_levels + 1, 17)), 1 << 24, np.uint32)
    if rows:
        freqs = np.zeros((rows, n_levels))
        pos, err = read_histograms(buf, pos, rows, n_levels, table, freqs)
        if err:
            return err
        for r in range(rows):
            quantized_cdf(freqs[r], cdfs[r])
    # the rANS stack
    if (n - pos) % 4:
        return 9
    words = np.empty((n - pos) // 4, np.uint32)
    for i in range(words.size):
        q = pos + 4 * i
        words[i] = (np.uint32(buf[q]) | (np.uint32(buf[q + 1]) << 8)
                    | (np.uint32(buf[q + 2]) << 16) | (np.uint32(buf[q + 3]) << 24))
    st = np.zeros(2, np.uint64)
    if not reader_init(words, st):
        return 9
    # phase A: planes grouped by class, each class one run
    bits = np.empty(max(planes * max(n_a, n_b), 1), np.uint8)
    mask_a = np.zeros((planes, n_a), np.bool_)
    kept_a = 0
    for c in range(n_cls):
        count = 0
        for p in range(planes):
            count += n_a if cls[p] == c else 0
        if count == 0:
            continue
        read_bits(words, st, quad, code_a[c], count, bits, 0)
        k = 0
        for p in range(planes):
            if cls[p] == c:
                for j in range(n_a):
                    mask_a[p, j] = bits[k]
                    kept_a += bits[k]
                    k += 1
    # phase B: bits grouped by (class, kept neighbours), each group one run in the
    # order of its positions; decoded group by group, then dealt back in position order
    mask_b = np.zeros((planes, n_b), np.bool_)
    kept_b = 0
    if n_b:
        key = np.empty(planes * n_b, np.int64)
        start = np.zeros(n_code_b + 1, np.int64)
        ext = np.zeros(n_a + 1, np.int64)  # one plane of phase A, then a 0 sentinel
        for p in range(planes):
            for j in range(n_a):
                ext[j] = mask_a[p, j]
            for j in range(n_b):  # branch-free: the mask bits are unpredictable
                cnt = (base[j] + ext[nbr[0, j]] + ext[nbr[1, j]] + ext[nbr[2, j]]
                       + ext[nbr[3, j]])
                kk = rescale[cnt] + 5 * cls[p]
                key[p * n_b + j] = kk
                start[kk + 1] += 1
        for c in range(n_code_b):
            if start[c + 1]:
                read_bits(words, st, quad, code_b[c], start[c + 1], bits, start[c])
            start[c + 1] += start[c]
        flat_b = mask_b.reshape(-1)
        for i in range(key.size):
            b = bits[start[key[i]]]
            start[key[i]] += 1
            flat_b[i] = b
            kept_b += b
    # level symbols
    vals_a = np.zeros(kept_a, np.int32)
    vals_b = np.zeros(kept_b, np.int32)
    if n_levels > 1 and not use_ctx:
        both = np.empty(kept_a + kept_b, np.int32)
        read(words, st, cdfs[0], n_levels, kept_a + kept_b, both, 0)
        vals_a[:] = both[:kept_a]
        vals_b[:] = both[kept_a:]
    elif n_levels > 1:
        read(words, st, cdfs[0], n_levels, kept_a, vals_a, 0)
        # branch-free loops: read a (clamped) value everywhere, keep it where kept
        ext = np.zeros(n_a + 1, np.int64)  # signed levels of a phase-A plane, 0 sentinel
        vctx = np.empty(kept_b + 1, np.int64)  # a spare slot: every position writes
        sizes = np.zeros(n_ctx + 1, np.int64)  # n_ctx: not kept
        last_a = max(kept_a - 1, 0)
        va = vals_a if kept_a else np.zeros(1, np.int32)
        ka = 0
        kb = 0
        for p in range(planes):
            for j in range(n_a):
                m = np.int64(mask_a[p, j])
                ext[j] = signed[va[min(ka, last_a)]] * m
                ka += m
            for j in range(n_b):
                m = np.int64(mask_b[p, j])
                s = ext[nbr[0, j]] + ext[nbr[1, j]] + ext[nbr[2, j]] + ext[nbr[3, j]]
                s = min(max((s >> shift) + 4, 0), n_ctx - 1)
                vctx[kb] = s
                sizes[s * m + n_ctx * (1 - m)] += 1
                kb += m
        for c in range(n_ctx):
            if (sizes[c] > 0) != used[c]:
                return 10
        grouped = np.empty(kept_b, np.int32)
        start = np.zeros(n_ctx, np.int64)
        at = 0
        row = 1
        for c in range(n_ctx):
            start[c] = at
            if used[c]:
                read(words, st, cdfs[row], n_levels, sizes[c], grouped, at)
                at += sizes[c]
                row += 1
        for i in range(kept_b):
            vals_b[i] = grouped[start[vctx[i]]]
            start[vctx[i]] += 1
    if st[0] != 0:
        return 11
    # scatter into planes
    va = vals_a if kept_a else np.zeros(1, np.int32)
    vb = vals_b if kept_b else np.zeros(1, np.int32)
    last_a, last_b = max(kept_a - 1, 0), max(kept_b - 1, 0)
    ka = 0
    kb = 0
    for p in range(planes):  # branch-free, as above; lut[n_levels]: dropped
        for j in range(n_a):
            m = np.int64(mask_a[p, j])
            out[p, phase_a[j]] = lut[va[min(ka, last_a)] * m + n_levels * (1 - m)]
            ka += m
        for j in range(n_b):
            m = np.int64(mask_b[p, j])
            out[p, phase_b[j]] = lut[vb[min(kb, last_b)] * m + n_levels * (1 - m)]
            kb += m
    return 0

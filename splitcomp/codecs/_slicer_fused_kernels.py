"""The kernels of :mod:`._slicer_fused`: SLICER's decoder in one compiled pass (imported
there, after numba's cache folder is set; top-level functions so numba's on-disk cache finds
them in every process, see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._slicer_lanes_kernels import lane_words, level_bits, levels, nibbles
from ._slicer_quant import MAX_LEVELS, MAX_PIECES
from ._slicer_values import N_CONTEXTS
from .entropy._ans_kernels import quantized_cdf, reader_init, slot_entries

n_ctx = N_CONTEXTS
f32_max = float(np.finfo(np.float32).max)


@njit(cache=True, nogil=True)
def u(i):  # pragma: no cover - compiled
    """``i`` (never negative) as an unsigned index: numba then skips its wraparound."""
    return np.uint64(i)


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
def slot_tables(cdfs, n_levels, ok):  # pragma: no cover - compiled
    """The level models' slot tables, if any (at most 64 levels, every model quantized:
    ``ok``; a hostile stream's split slots then cost no more steps than the search): (the
    tables, at least one row; whether they were made)."""
    n = cdfs.shape[0] if n_levels <= 64 and ok else 0
    tbls = np.zeros((max(n, 1), 1 << level_bits), np.int64)
    for r in range(n):
        slot_entries(cdfs[r], n_levels, level_bits, tbls[r])
    return tbls, n > 0


@njit(cache=True, nogil=True)
def first_total(cells, pieces, g):  # pragma: no cover - compiled
    total = 0
    for i in range(pieces[g]):
        total += cells[g, i]
    return total


@njit(cache=True, nogil=True)
def decode(buf, planes, channels, phase_a, phase_b, nbr, base, rescale, quad, quad_lut, table, out):
    """One slicer payload into ``out`` (planes, plane size); 0 or an error code. ``quad_lut``:
    the ``quad`` mask models' slot tables (:func:`.entropy._ans_kernels.slot_entries`)."""  # noqa
    n = buf.size
    n_a, n_b = phase_a.size, phase_b.size
    tmp = np.empty(1, np.uint32)
    if n < 1:
        return 1
    flags = np.int64(buf[0])
    pos = 1
    if flags >= 32:
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
    ok = True
    if rows:
        freqs = np.zeros((rows, n_levels))
        pos, err = read_histograms(buf, pos, rows, n_levels, table, freqs)
        if err:
            return err
        for r in range(rows):
            ok &= quantized_cdf(freqs[r], cdfs[r])
    luts, fast = slot_tables(cdfs, n_levels, ok)
    # the rANS stacks: one lane, or two (bit 4)
    lanes = 2 if flags & 16 else 1
    w0, w1, err = lane_words(buf, pos, lanes)
    if err:
        return err
    st = np.zeros(4, np.uint64)
    if not (reader_init(w0, st[0:2]) and reader_init(w1, st[2:4])):
        return 9
    # phase A: planes grouped by class, each class one run (every plane has a class)
    bits = np.empty(planes * max(n_a, n_b) + 4, np.uint8)  # 4: a run's padding bits
    mask_a = np.empty((planes, n_a), np.uint8)
    kept_a = 0
    for c in range(n_cls):
        count = 0
        for p in range(planes):
            count += n_a if cls[p] == c else 0
        if count == 0:
            continue
        nibbles(lanes, w0, w1, st, quad[code_a[c]], quad_lut[code_a[c]], (count + 3) // 4, bits,
                0)
        k = 0
        for p in range(planes):
            if cls[p] == c:
                for j in range(n_a):
                    b = bits[u(k + j)]
                    mask_a[p, u(j)] = b
                    kept_a += b
                k += n_a
    # phase B: bits grouped by (class, kept neighbours), each group one run in the order
    # of its positions; decoded group by group, then dealt back by each position's rank in
    # its group (no running count on the dealing path)
    total_b = planes * n_b
    key = np.empty(max(total_b, 1), np.uint8)
    rank = np.empty(max(total_b, 1), np.int64)
    start = np.zeros(n_code_b + 1, np.int64)
    if n_b:
        group_ranks(planes, n_a, n_b, nbr, base, rescale, cls, mask_a, key, rank, start)
        for c in range(n_code_b):
            if start[c + 1]:
                nibbles(lanes, w0, w1, st, quad[code_b[c]], quad_lut[code_b[c]],
                        (start[c + 1] + 3) // 4, bits, start[c])
            start[c + 1] += start[c]
    mask_b = np.zeros(max(total_b, 1), np.uint8)
    kept_b = 0
    for ii in range(total_b):
        i = u(ii)
        m = bits[u(start[u(key[i])] + rank[i])]
        mask_b[i] = m
        kept_b += m
    # level symbols, then the planes
    if n_levels > 1 and use_ctx:
        return context_levels(lanes, w0, w1, st, planes, n_a, n_b, phase_a, phase_b, nbr, mask_a,
                              mask_b, kept_a, n_levels, shift, used, cdfs, luts, fast, lut,
                              signed, out)
    vals = np.zeros(max(kept_a + kept_b, 1), np.int32)
    if n_levels > 1:
        levels(lanes, w0, w1, st, cdfs[0], luts[0], fast, n_levels, kept_a + kept_b, vals, 0)
    if st[0] != 0 or st[2] != 0:
        return 11
    scatter(planes, n_a, n_b, phase_a, phase_b, mask_a, mask_b, vals, kept_a,
            kept_a + kept_b, n_levels, lut, out)
    return 0


@njit(cache=True, nogil=True)
def group_ranks(planes, n_a, n_b, nbr, base, rescale, cls, mask_a, key, rank,
                counts):  # pragma: no cover - compiled
    """Phase B's mask groups: ``key`` (5 class + rescaled kept neighbours) and ``rank`` in
    its group of every position, ``counts[1 + g]`` group ``g``'s size. Unsigned indices: numba
    then skips its wraparound, ~0.55x the time (per-plane counts in a register: no faster)."""
    ext = np.zeros(n_a + 1, np.int64)  # one plane of phase A, then a 0 sentinel
    i = 0
    for p in range(planes):
        for j in range(n_a):
            ext[u(j)] = mask_a[p, u(j)]
        c5 = 5 * cls[p]
        for jj in range(n_b):
            j = u(jj)
            cnt = (base[j] + ext[u(nbr[0, j])] + ext[u(nbr[1, j])] + ext[u(nbr[2, j])]
                   + ext[u(nbr[3, j])])
            kk = rescale[u(cnt)] + c5
            key[u(i)] = kk
            r = counts[u(kk + 1)]
            rank[u(i)] = r
            counts[u(kk + 1)] = r + 1
            i += 1


@njit(cache=True, nogil=True)
def scatter(planes, n_a, n_b, phase_a, phase_b, mask_a, mask_b, vals, kept_a, kept, n_levels,
            lut, out):  # pragma: no cover - compiled
    """``out`` from the masks and the level symbols of the kept positions, phase A's
    (``vals[:kept_a]``) then phase B's, in position order; ``lut[n_levels]``: dropped."""
    ka = 0
    kb = kept_a
    last_a, last = max(kept_a - 1, 0), max(kept - 1, 0)
    for p in range(planes):  # branch-free: read a (clamped) value everywhere
        for jj in range(n_a):  # unsigned indices: see group_ranks
            j = u(jj)
            m = np.int64(mask_a[p, j])
            out[p, u(phase_a[j])] = lut[u(vals[u(min(ka, last_a))] * m + n_levels * (1 - m))]
            ka += m
        for jj in range(n_b):
            j = u(jj)
            m = np.int64(mask_b[u(p * n_b + jj)])
            out[p, u(phase_b[j])] = lut[u(vals[u(min(kb, last))] * m + n_levels * (1 - m))]
            kb += m


@njit(cache=True, nogil=True)
def context_levels(lanes, w0, w1, st, planes, n_a, n_b, phase_a, phase_b, nbr, mask_a, mask_b,
                   kept_a, n_levels, shift, used, cdfs, luts, fast, lut, signed,
                   out):  # pragma: no cover - compiled
    """The level symbols with value contexts, into ``out``; 0 or an error code. Phase A's
    run first; then one pass over the planes writes phase A's values and gives each kept
    phase-B position its context (the signed levels of its phase-A neighbours), its rank
    among its context's kept positions and its place in ``out``; each context's run is
    read, and only the kept phase-B values written (``out`` starts as "dropped")."""
    vals_a = np.zeros(max(kept_a, 1), np.int32)
    levels(lanes, w0, w1, st, cdfs[0], luts[0], fast, n_levels, kept_a, vals_a, 0)
    total_b = planes * n_b
    plane = out.shape[1]
    flat = out.reshape(out.size)
    ext = np.zeros(n_a + 1, np.int64)  # signed levels of a phase-A plane, 0 sentinel
    vctx = np.empty(total_b + 1, np.uint8)  # a spare slot: every position writes
    vrank = np.empty(total_b + 1, np.int64)
    opos = np.empty(total_b + 1, np.int64)
    sizes = np.zeros(n_ctx + 1, np.int64)
    dropped = lut[n_levels]
    last_a = max(kept_a - 1, 0)
    flat[:] = dropped
    ka = 0
    kb = 0
    for p in range(planes):  # branch-free: read a (clamped) value everywhere
        for jj in range(n_a):  # unsigned indices: see group_ranks
            j = u(jj)
            m = np.int64(mask_a[p, j])
            v = u(vals_a[u(min(ka, last_a))] * m + n_levels * (1 - m))
            ext[j] = signed[v]
            flat[u(p * plane + phase_a[j])] = lut[v]
            ka += m
        for jj in range(n_b):
            j = u(jj)
            m = np.int64(mask_b[u(p * n_b + jj)])
            s = (ext[u(nbr[0, j])] + ext[u(nbr[1, j])] + ext[u(nbr[2, j])]
                 + ext[u(nbr[3, j])])
            s = min(max((s >> shift) + 4, 0), n_ctx - 1)
            vctx[u(kb)] = s
            slot = u(s * m + n_ctx * (1 - m))
            r = sizes[slot]
            vrank[u(kb)] = r
            sizes[slot] = r + 1
            opos[u(kb)] = p * plane + phase_b[j]
            kb += m
    kept_b = kb
    for c in range(n_ctx):
        if (sizes[c] > 0) != used[c]:
            return 10
    grouped = np.zeros(max(kept_b, 1), np.int32)
    vstart = np.zeros(n_ctx, np.int64)
    at = 0
    row = 1
    for c in range(n_ctx):
        vstart[c] = at
        if used[c]:
            levels(lanes, w0, w1, st, cdfs[row], luts[row], fast, n_levels, sizes[c], grouped,
                   at)
            at += sizes[c]
            row += 1
    if st[0] != 0 or st[2] != 0:
        return 11
    for e in range(kept_b):
        flat[u(opos[u(e)])] = lut[u(grouped[u(vstart[u(vctx[u(e)])] + vrank[u(e)])])]
    return 0

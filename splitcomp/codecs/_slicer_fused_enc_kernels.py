"""The kernels of :mod:`._slicer_fused_enc`: SLICER's encoder after quantization in one
compiled pass (imported there, after numba's cache folder is set; top-level functions so
numba's on-disk cache finds them in every process, see :mod:`.entropy._ans_kernels`).

Written for the few cycles an element it has (a ResNet-20 ``layer2`` sample: ~8,000
elements, ~100 us): counts and stable groupings split into interleaved partial sequences
(:func:`bincount4`, :func:`group_stable`), since one sequence chains each update on the last
where keys repeat; rANS by reciprocals (:func:`.entropy._ans_kernels.write_rcp`), the mask
models' made once; numpy's error model on :func:`encode` (no zero-division branches)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._slicer_lanes_kernels import write_lanes
from ._slicer_mask import N_CLASSES, N_NEIGHBOUR
from ._slicer_quant_kernels import quantize_dense
from ._slicer_values import N_CONTEXTS
from .entropy._ans_kernels import quantized_cdf, reciprocals

n_ctx, n_cls4, n_nbr = N_CONTEXTS, N_CLASSES, N_NEIGHBOUR


@njit(cache=True, nogil=True)
def np_sum(a):  # pragma: no cover - compiled
    """``a.sum()`` in numpy's order (up to 128 values): sequential below 8 values,
    else eight partial sums, combined pairwise, then the remainder."""
    n = a.size
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r = a[:8].copy()
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += a[i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def prob_code(ones, tot):  # pragma: no cover - compiled
    if tot == 0:
        return 128
    p = np.rint((256.0 * ones) / max(tot, 1.0))
    return int(min(max(p, 1.0), 255.0))


@njit(cache=True, nogil=True)
def put_runs(bits, n, code, nib, at):  # pragma: no cover - compiled
    """``n`` bits as 4-bit symbols into ``nib[at:]``, padded with the likelier bit."""
    full = n // 4
    for q in range(full):
        b = 4 * q
        nib[at + q] = bits[b] | (bits[b + 1] << 1) | (bits[b + 2] << 2) | (bits[b + 3] << 3)
    if n % 4:
        pad = np.uint8(1 if code > 128 else 0)
        v = 0
        for b in range(4):
            i = 4 * full + b
            v |= (bits[i] if i < n else pad) << b
        nib[at + full] = v
    return at + (n + 3) // 4


@njit(cache=True, nogil=True)
def bincount4(vals, n, size):  # pragma: no cover - compiled
    """``np.bincount(vals[:n], minlength=size)`` into four interleaved partial counts: runs
    of one value would otherwise chain every increment on the one before (store to load)."""
    part = np.zeros((4, size), np.int64)
    i = 0
    while i + 4 <= n:
        part[0, vals[i]] += 1
        part[1, vals[i + 1]] += 1
        part[2, vals[i + 2]] += 1
        part[3, vals[i + 3]] += 1
        i += 4
    while i < n:
        part[0, vals[i]] += 1
        i += 1
    out = np.empty(size, np.int64)
    for s in range(size):
        out[s] = part[0, s] + part[1, s] + part[2, s] + part[3, s]
    return out


@njit(cache=True, nogil=True)
def group_stable(keys, vals, n_keys, out, at):  # pragma: no cover - compiled
    """``vals`` grouped by ``keys`` (0 .. n_keys - 1), stably, into ``out[at:]`` (a counting
    sort); returns the groups' starts (``n_keys + 1``). The input is cut in four quarters
    with their own write positions, handled side by side: one sequence's position updates
    chain (store to load) whenever a key repeats, and four interleaved ones overlap."""
    n = keys.size
    quarter = n // 4
    part = np.zeros((4, n_keys), np.int64)
    for i in range(quarter):
        part[0, keys[i]] += 1
        part[1, keys[quarter + i]] += 1
        part[2, keys[2 * quarter + i]] += 1
        part[3, keys[3 * quarter + i]] += 1
    for i in range(4 * quarter, n):
        part[3, keys[i]] += 1
    start = np.zeros(n_keys + 1, np.int64)
    for c in range(n_keys):
        start[c + 1] = start[c] + part[0, c] + part[1, c] + part[2, c] + part[3, c]
    for c in range(n_keys):
        pos = at + start[c]
        for q in range(4):
            cnt = part[q, c]
            part[q, c] = pos
            pos += cnt
    for i in range(quarter):
        k0 = keys[i]
        k1 = keys[quarter + i]
        k2 = keys[2 * quarter + i]
        k3 = keys[3 * quarter + i]
        out[part[0, k0]] = vals[i]
        part[0, k0] += 1
        out[part[1, k1]] = vals[quarter + i]
        part[1, k1] += 1
        out[part[2, k2]] = vals[2 * quarter + i]
        part[2, k2] += 1
        out[part[3, k3]] = vals[3 * quarter + i]
        part[3, k3] += 1
    for i in range(4 * quarter, n):
        out[part[3, keys[i]]] = vals[i]
        part[3, keys[i]] += 1
    return start


@njit(cache=True, nogil=True)
def put_histograms(hist, rows, size, head, h):  # pragma: no cover - compiled
    """:func:`_slicer_values.histogram_bytes` of ``hist[:rows]`` into ``head[h:]``;
    returns the new position and the model frequencies."""
    codes = np.zeros((rows, size), np.int64)
    top = 0
    for r in range(rows):
        for s in range(size):
            c = hist[r, s]
            if c > 0:
                codes[r, s] = np.int64(np.rint(2.0 * np.log2(np.float64(c)))) + 1
                top = max(top, codes[r, s])
    width = 1
    while (1 << width) <= top:
        width += 1
    head[h] = width
    h += 1
    span = (size + 7) // 8
    for r in range(rows):
        for b in range(span):
            v = 0
            for i in range(8):
                s = 8 * b + i
                if s < size and hist[r, s] > 0:
                    v |= 1 << i
            head[h] = v
            h += 1
    acc = 0
    n_acc = 0
    for r in range(rows):
        for s in range(size):
            if hist[r, s] > 0:
                for i in range(width - 1, -1, -1):
                    acc = (acc << 1) | ((codes[r, s] >> i) & 1)
                    n_acc += 1
                    if n_acc == 8:
                        head[h] = acc
                        h += 1
                        acc = 0
                        n_acc = 0
    if n_acc:
        head[h] = acc << (8 - n_acc)
        h += 1
    return h, codes


@njit(cache=True, nogil=True, error_model="numpy")
def encode(planes, dense, levels, neg, channels, phase_a, phase_b, nbr, base, rescale,
           quad, quad_rcp, quad_rsh, log2p, log2q, table, head, words):  # pragma: no cover
    """(flag bits, bytes in ``head``, words in ``words``) of the keep mask ``planes`` and the
    symbols ``dense`` (both (planes, plane size); dropped: ``L``); -1 bytes: a buffer too
    small. ``quad_rcp``, ``quad_rsh``: the mask models' :func:`reciprocals`."""
    n_planes, size = planes.shape
    n_a, n_b = phase_a.size, phase_b.size
    n_levels = 0
    for g in range(levels.size):
        n_levels += levels[g]
    mask_a = np.zeros((n_planes, n_a + 1), np.uint8)  # the last column: the border's 0
    mask_b = np.empty((n_planes, n_b), np.uint8)
    n_kept = 0
    for p in range(n_planes):
        for j in range(n_a):
            mask_a[p, j] = planes[p, phase_a[j]]
            n_kept += mask_a[p, j]
        for j in range(n_b):
            mask_b[p, j] = planes[p, phase_b[j]]
            n_kept += mask_b[p, j]
    # neighbour contexts of phase B, channel classes
    ctx = np.empty((n_planes, n_b), np.int64)
    for p in range(n_planes):
        row = mask_a[p]
        for j in range(n_b):
            ctx[p, j] = rescale[base[j] + row[nbr[0, j]] + row[nbr[1, j]] + row[nbr[2, j]]
                                + row[nbr[3, j]]]
    rate = np.zeros(channels, np.int64)
    for p in range(n_planes):
        c = 0
        for j in range(size):
            c += planes[p, j]
        rate[p % channels] += c
    denom = n_planes // channels * size
    cls = np.empty(n_planes, np.int64)
    cls_ch = np.empty(channels, np.int64)
    for ch in range(channels):
        cls_ch[ch] = min(np.int64((rate[ch] / denom) * n_cls4), n_cls4 - 1)
    for p in range(n_planes):
        cls[p] = cls_ch[p % channels]
    # the mask model: four classes or one (fit_model)
    n_rows = n_cls4 + n_cls4 * n_nbr
    ones = np.zeros(n_rows + 1 + n_nbr)
    tot = np.zeros(n_rows + 1 + n_nbr)
    key = np.empty(n_planes * n_b, np.int64)  # (class, context) of phase B, then its bit
    for p in range(n_planes):
        c = cls[p]
        k = 0
        for j in range(n_a):
            k += mask_a[p, j]
        ones[c] += k
        tot[c] += n_a
        for j in range(n_b):
            key[p * n_b + j] = (c * n_nbr + ctx[p, j]) * 2 + mask_b[p, j]
    cnt = bincount4(key, key.size, 2 * n_cls4 * n_nbr)  # integer counts: exact in any order
    for r in range(n_cls4 * n_nbr):
        tot[n_cls4 + r] = cnt[2 * r] + cnt[2 * r + 1]
        ones[n_cls4 + r] = cnt[2 * r + 1]
    ones[n_rows] = np_sum(ones[:n_cls4])
    tot[n_rows] = np_sum(tot[:n_cls4])
    for i in range(n_nbr):
        o = 0.0
        t = 0.0
        for c in range(n_cls4):
            o += ones[n_cls4 + c * n_nbr + i]
            t += tot[n_cls4 + c * n_nbr + i]
        ones[n_rows + 1 + i] = o
        tot[n_rows + 1 + i] = t
    code = np.empty(ones.size, np.int64)
    bits = np.empty(ones.size)
    for i in range(ones.size):
        code[i] = prob_code(ones[i], tot[i])
        bits[i] = -(ones[i] * log2p[code[i]] + (tot[i] - ones[i]) * log2q[code[i]])
    extra = 8 * ((channels + 3) // 4 + (n_cls4 - 1) * (1 + n_nbr * (1 if n_b > 0 else 0)))
    use_classes = np_sum(bits[:n_rows]) + extra < np_sum(bits[n_rows:])
    flags = 4 if use_classes else 0
    h = 0
    if use_classes:
        code_a = code[:n_cls4]
        code_b = code[n_cls4:n_rows]
        for b in range((channels + 3) // 4):
            v = 0
            for i in range(4):
                if 4 * b + i < channels:
                    v |= cls_ch[4 * b + i] << (2 * i)
            head[h] = v
            h += 1
    else:
        code_a = code[n_rows : n_rows + 1]
        code_b = code[n_rows + 1 :]
        cls[:] = 0
    for c in code_a:
        head[h] = c
        h += 1
    if n_b:
        for c in code_b:
            head[h] = c
            h += 1
    # the streams, in decoding order: (first symbol, end) and model (-1 - code: quad)
    n_parts_max = code_a.size + code_b.size + 2 + n_ctx
    starts = np.zeros(n_parts_max + 1, np.int64)
    model = np.zeros(n_parts_max, np.int64)
    n_sym_max = (n_planes * size + 3) // 4 + 2 * (code_a.size + code_b.size) + 2 * n_kept
    sym = np.empty(n_sym_max + 1, np.int32)
    n_parts = 0
    at = 0
    buf = np.empty(max(n_planes * max(n_a, n_b), 1), np.uint8)
    for c in range(code_a.size):  # phase A: planes of each class in order
        k = 0
        for p in range(n_planes):
            if cls[p] == c:
                for j in range(n_a):
                    buf[k] = mask_a[p, j]
                    k += 1
        if k:
            starts[n_parts] = at
            model[n_parts] = -1 - code_a[c]
            at = put_runs(buf, k, code_a[c], sym, at)
            n_parts += 1
    if n_b:  # phase B: positions of each (class, context) key in order
        for p in range(n_planes):
            for j in range(n_b):
                key[p * n_b + j] = ctx[p, j] + n_nbr * cls[p]
        count = group_stable(key, mask_b.reshape(-1), code_b.size, buf, 0)
        for c in range(code_b.size):
            k = count[c + 1] - count[c]
            if k:
                starts[n_parts] = at
                model[n_parts] = -1 - code_b[c]
                at = put_runs(buf[count[c]:], k, code_b[c], sym, at)
                n_parts += 1
    # level symbols: phase A then phase B, kept positions in plane order
    freqs = np.zeros((1, 1))
    if n_levels > 1:
        signed = np.zeros(n_levels + 1, np.int64)
        s = 0
        for g in range(levels.size):
            for j in range(levels[g]):
                signed[s] = -(j + 1) if neg[g] else j + 1
                s += 1
        # branch-free loops (the mask bits are unpredictable): every position writes its
        # symbol to a spare-slotted output, kept ones advance
        signed_a = np.zeros((n_planes, n_a + 1), np.int64)  # the last column: the border's 0
        vals_a = np.empty(n_kept + 1, np.int32)
        vals_b = np.empty(n_kept + 1, np.int32)
        ka = 0
        kb = 0
        for p in range(n_planes):
            for j in range(n_a):
                v = dense[p, phase_a[j]]
                signed_a[p, j] = signed[v]
                vals_a[ka] = v
                ka += mask_a[p, j]
            for j in range(n_b):
                vals_b[kb] = dense[p, phase_b[j]]
                kb += mask_b[p, j]
        count_a = bincount4(vals_a, ka, n_levels)
        counts = count_a + bincount4(vals_b, kb, n_levels)
        if not (n_b > 0 and kb >= 32 * n_levels):
            h, cd = put_histograms(counts.reshape(1, n_levels), 1, n_levels, head, h)
            freqs = np.zeros((1, n_levels))
            for s in range(n_levels):
                freqs[0, s] = table[cd[0, s]]
            starts[n_parts] = at
            model[n_parts] = 0
            sym[at : at + ka] = vals_a[:ka]
            sym[at + ka : at + ka + kb] = vals_b[:kb]
            at += ka + kb
            n_parts += 1
        else:
            flags |= 8
            total = 0
            weighted = 0
            for s in range(n_levels):
                total += counts[s]
                weighted += counts[s] * abs(signed[s])
            mean = weighted / total
            shift = 0
            if mean > 0:
                shift = min(max(np.int64(np.rint(np.log2(2.0 * mean))), 0), 15)
            hist = np.zeros((1 + n_ctx, n_levels), np.int64)
            hist[0] = count_a
            k = 0
            vctx = np.empty(kb + 1, np.int64)
            for p in range(n_planes):
                row = signed_a[p]
                for j in range(n_b):
                    v = row[nbr[0, j]] + row[nbr[1, j]] + row[nbr[2, j]] + row[nbr[3, j]]
                    vctx[k] = min(max((v >> shift) + 4, 0), n_ctx - 1)
                    k += mask_b[p, j]
            key = np.empty(kb, np.int64)
            for i in range(kb):
                key[i] = vctx[i] * n_levels + vals_b[i]
            hist[1:] = bincount4(key, kb, n_ctx * n_levels).reshape(n_ctx, n_levels)
            present = 0
            rows = np.zeros(1 + n_ctx, np.int64)  # the histogram rows sent
            n_rows_v = 1
            for c in range(n_ctx):
                tot_c = 0
                for s in range(n_levels):
                    tot_c += hist[1 + c, s]
                if tot_c:
                    present |= 1 << c
                    rows[n_rows_v] = 1 + c
                    n_rows_v += 1
            head[h] = shift
            head[h + 1] = present & 255
            head[h + 2] = present >> 8
            h += 3
            sent = np.empty((n_rows_v, n_levels), np.int64)
            for r in range(n_rows_v):
                sent[r] = hist[rows[r]]
            h, cd = put_histograms(sent, n_rows_v, n_levels, head, h)
            freqs = np.zeros((n_rows_v, n_levels))
            for r in range(n_rows_v):
                for s in range(n_levels):
                    freqs[r, s] = table[cd[r, s]]
            starts[n_parts] = at
            model[n_parts] = 0
            sym[at : at + ka] = vals_a[:ka]
            at += ka
            n_parts += 1
            # phase B grouped by context, stably
            cstart = group_stable(vctx[:kb], vals_b[:kb], n_ctx, sym, at)
            r = 1
            for c in range(n_ctx):
                if present >> c & 1:
                    starts[n_parts] = at + cstart[c]
                    model[n_parts] = r
                    r += 1
                    n_parts += 1
            at += kb
    starts[n_parts] = at
    # the level models' tables, then the two rANS lanes
    cdf = np.full((freqs.shape[0], max(n_levels + 1, 17)), 1 << 24, np.uint32)
    rcp = np.zeros((freqs.shape[0], max(n_levels, 1)), np.uint64)
    rsh = np.zeros((freqs.shape[0], max(n_levels, 1)), np.uint64)
    if n_levels > 1:
        for r in range(freqs.shape[0]):
            quantized_cdf(freqs[r], cdf[r])
            reciprocals(cdf[r, : n_levels + 1], rcp[r], rsh[r])
    if h > head.size:
        return flags, -1, 0
    h, n = write_lanes(words, head, h, sym, starts, model, n_parts, quad, quad_rcp, quad_rsh,
                       cdf, rcp, rsh, n_levels)
    return flags | 16, h, n  # bit 4: two rANS lanes


@njit(cache=True, nogil=True)
def encode_dense(x, t_pos, t_neg, d_pos, d_neg, n_keep_pos, n_keep_neg, n_planes, channels,
                 phase_a, phase_b, nbr, base, rescale, quad, quad_rcp, quad_rsh, log2p, log2q,
                 table):  # pragma: no cover - compiled
    """Quantization (:func:`._slicer_quant_kernels.quantize_dense`, one-piece grids: float64
    thresholds and steps, rounded to float32 here as numpy's ``astype`` does) and
    :func:`encode` in one call: (flag bits, header bytes after the grids, words, cells and
    mean in-cell position of each sign); no bytes (``head`` empty) where a sign's grid needs
    more than ``MAX_LEVELS`` levels, the numpy path's case."""
    n = x.size
    mask = np.empty(n, np.uint8)
    dense = np.empty(n, np.int32)
    big = 2.0**126  # steps stay finite in float32 (_slicer_quant._MAX_STEP)
    cells_p, cells_n, mean_p, mean_n = quantize_dense(
        x, np.float32(t_pos), np.float32(t_neg), np.float32(min(d_pos, big)),
        np.float32(min(d_neg, big)), n_keep_pos, n_keep_neg, mask, dense)
    n_signs = (n_keep_pos > 0) + (n_keep_neg > 0)
    levels = np.empty(n_signs, np.int64)
    neg = np.zeros(n_signs, np.int64)
    if n_keep_pos:
        levels[0] = cells_p
    if n_keep_neg:
        levels[n_signs - 1] = cells_n
        neg[n_signs - 1] = 1
    n_levels = 0
    for g in range(n_signs):
        n_levels += levels[g]
    head = np.empty((channels + 3) // 4 + 48 + 10 * ((n_levels + 7) // 8)
                    + (60 * n_levels + 7) // 8, np.uint8)
    words = np.empty(((n // 4 + n + 64) * 24) // 32 + 8, np.uint32)
    if (n_keep_pos and cells_p == 0) or (n_keep_neg and cells_n == 0):
        return 0, head[:0], words[:0], cells_p, cells_n, mean_p, mean_n
    size = n // n_planes
    flags, n_head, n_words = encode(mask.reshape(n_planes, size), dense.reshape(n_planes, size),
                                    levels, neg, channels, phase_a, phase_b, nbr, base, rescale,
                                    quad, quad_rcp, quad_rsh, log2p, log2q, table, head, words)
    if n_head < 0:
        return -1, head[:0], words[:0], cells_p, cells_n, mean_p, mean_n
    return flags, head[:n_head], words[:n_words], cells_p, cells_n, mean_p, mean_n

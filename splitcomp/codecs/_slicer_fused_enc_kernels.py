"""The kernels of :mod:`._slicer_fused_enc`: SLICER's encoder after quantization in one
compiled pass (imported there, after numba's cache folder is set; top-level functions so
numba's on-disk cache finds them in every process, see :mod:`.entropy._ans_kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._slicer_mask import N_CLASSES, N_NEIGHBOUR
from ._slicer_values import N_CONTEXTS
from .entropy._ans_kernels import finish, quantized_cdf, write

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
    pad = np.uint8(1 if code > 128 else 0)
    for q in range((n + 3) // 4):
        v = 0
        for b in range(4):
            i = 4 * q + b
            v |= (bits[i] if i < n else pad) << b
        nib[at + q] = v
    return at + (n + 3) // 4


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


@njit(cache=True, nogil=True)
def encode(planes, values, levels, neg, channels, phase_a, phase_b, nbr, base, rescale,
           quad, log2p, log2q, table, head, words):  # pragma: no cover - compiled
    """(flag bits, bytes in ``head``, words in ``words``); -1 bytes: a buffer too small."""
    n_planes, size = planes.shape
    n_a, n_b = phase_a.size, phase_b.size
    n_levels = 0
    for g in range(levels.size):
        n_levels += levels[g]
    mask_a = np.empty((n_planes, n_a), np.uint8)
    mask_b = np.empty((n_planes, n_b), np.uint8)
    for p in range(n_planes):
        for j in range(n_a):
            mask_a[p, j] = planes[p, phase_a[j]]
        for j in range(n_b):
            mask_b[p, j] = planes[p, phase_b[j]]
    # neighbour contexts of phase B, channel classes
    ctx = np.empty((n_planes, n_b), np.int64)
    ext = np.zeros(n_a + 1, np.int64)
    for p in range(n_planes):
        for j in range(n_a):
            ext[j] = mask_a[p, j]
        for j in range(n_b):
            ctx[p, j] = rescale[base[j] + ext[nbr[0, j]] + ext[nbr[1, j]] + ext[nbr[2, j]]
                                + ext[nbr[3, j]]]
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
    for p in range(n_planes):
        c = cls[p]
        k = 0
        for j in range(n_a):
            k += mask_a[p, j]
        ones[c] += k
        tot[c] += n_a
        for j in range(n_b):
            r = n_cls4 + c * n_nbr + ctx[p, j]
            tot[r] += 1
            ones[r] += mask_b[p, j]
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
    n_sym_max = (n_planes * size + 3) // 4 + 2 * (code_a.size + code_b.size) + 2 * values.size
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
        count = np.zeros(code_b.size + 1, np.int64)
        for p in range(n_planes):
            for j in range(n_b):
                count[ctx[p, j] + n_nbr * cls[p] + 1] += 1
        for c in range(code_b.size):
            count[c + 1] += count[c]
        fill = count[:-1].copy()
        for p in range(n_planes):
            for j in range(n_b):
                kk = ctx[p, j] + n_nbr * cls[p]
                buf[fill[kk]] = mask_b[p, j]
                fill[kk] += 1
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
        # branch-free loops (the mask bits are unpredictable): every position reads a
        # (clamped) value and writes it to a spare-slotted output, kept ones advance
        sym_a = np.empty((n_planes, n_a), np.int64)  # n_levels: dropped
        vals_a = np.empty(values.size + 1, np.int32)
        vals_b = np.empty(values.size + 1, np.int32)
        local = np.empty(size, np.int64)
        last = values.size - 1
        k = 0
        ka = 0
        kb = 0
        for p in range(n_planes):
            for j in range(size):
                local[j] = min(k, last)
                k += planes[p, j]
            for j in range(n_a):
                m = np.int64(mask_a[p, j])
                v = values[local[phase_a[j]]]
                sym_a[p, j] = v * m + n_levels * (1 - m)
                vals_a[ka] = v
                ka += m
            for j in range(n_b):
                vals_b[kb] = values[local[phase_b[j]]]
                kb += mask_b[p, j]
        counts = np.zeros(n_levels, np.int64)
        for i in range(ka):
            counts[vals_a[i]] += 1
        for i in range(kb):
            counts[vals_b[i]] += 1
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
            for i in range(ka):
                hist[0, vals_a[i]] += 1
            k = 0
            ext[:] = 0
            vctx = np.empty(kb + 1, np.int64)
            lb = max(kb - 1, 0)
            for p in range(n_planes):
                for j in range(n_a):
                    ext[j] = signed[sym_a[p, j]]
                for j in range(n_b):
                    m = np.int64(mask_b[p, j])
                    v = ext[nbr[0, j]] + ext[nbr[1, j]] + ext[nbr[2, j]] + ext[nbr[3, j]]
                    vctx[k] = min(max((v >> shift) + 4, 0), n_ctx - 1)
                    hist[1 + vctx[k], vals_b[min(k, lb)]] += m
                    k += m
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
            cstart = np.zeros(n_ctx + 1, np.int64)
            for i in range(kb):
                cstart[vctx[i] + 1] += 1
            for c in range(n_ctx):
                cstart[c + 1] += cstart[c]
            fill_c = cstart[:-1].copy()
            for i in range(kb):
                sym[at + fill_c[vctx[i]]] = vals_b[i]
                fill_c[vctx[i]] += 1
            r = 1
            for c in range(n_ctx):
                if present >> c & 1:
                    starts[n_parts] = at + cstart[c]
                    model[n_parts] = r
                    r += 1
                    n_parts += 1
            at += kb
    starts[n_parts] = at
    # the rANS stack: the last stream first
    cdf = np.full((freqs.shape[0], max(n_levels + 1, 17)), 1 << 24, np.uint32)
    if n_levels > 1:
        for r in range(freqs.shape[0]):
            quantized_cdf(freqs[r], cdf[r])
    st = np.zeros(2, np.uint64)
    for i in range(n_parts - 1, -1, -1):
        m = model[i]
        if m < 0:
            ok = write(words, st, quad[-1 - m], sym, starts[i], starts[i + 1])
        else:
            ok = write(words, st, cdf[m, : n_levels + 1], sym, starts[i], starts[i + 1])
        if not ok:
            return flags, -1, 0
    n = finish(words, st)
    if n < 0 or h > head.size:
        return flags, -1, 0
    return flags, h, n

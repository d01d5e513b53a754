"""The kernels of :mod:`._slicer_jit` (imported there, after numba's cache folder is set).

Top-level functions, not closures, so numba's on-disk cache finds them in every process
(:mod:`.entropy._ans_kernels` says why)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def neighbour_context(mask_a, nbr, base, rescale):  # pragma: no cover - compiled
    planes, n_a = mask_a.shape
    n_b = nbr.shape[1]
    out = np.empty((planes, n_b), np.uint8)
    for p in range(planes):
        for j in range(n_b):
            cnt = base[j]
            for i in range(4):
                r = nbr[i, j]
                if r < n_a and mask_a[p, r]:
                    cnt += 1
            out[p, j] = rescale[cnt]
    return out


@njit(cache=True, nogil=True)
def pack_runs(bits, order, counts, likely):  # pragma: no cover - compiled
    """Bits (uint8 0/1, taken in ``order`` when it is not empty) cut into runs of
    ``counts``, each padded to four with its ``likely`` bit, packed into 4-bit symbols."""
    total = 0
    for c in counts:
        total += (c + 3) // 4
    buf = np.empty(4 * total, np.uint8)
    src = 0
    dst = 0
    for g in range(counts.size):
        c = counts[g]
        if order.size > 0:
            for k in range(c):
                buf[dst + k] = bits[order[src + k]]
        else:
            for k in range(c):
                buf[dst + k] = bits[src + k]
        pad = 1 if likely[g] else 0
        for k in range(c, (c + 3) // 4 * 4):
            buf[dst + k] = pad
        src += c
        dst += (c + 3) // 4 * 4
    out = np.empty(total, np.int32)
    for q in range(total):
        i = 4 * q
        out[q] = buf[i] | (buf[i + 1] << 1) | (buf[i + 2] << 2) | (buf[i + 3] << 3)
    return out


@njit(cache=True, nogil=True)
def kept_value_contexts(sym_a, signed, nbr, shift, mask_b):  # pragma: no cover - compiled
    """Value context of every kept phase-B position (C order), from phase A's symbols."""
    planes, n_a = sym_a.shape
    n_b = nbr.shape[1]
    n = 0
    for p in range(planes):
        for j in range(n_b):
            if mask_b[p, j]:
                n += 1
    out = np.empty(n, np.int32)
    k = 0
    for p in range(planes):
        for j in range(n_b):
            if mask_b[p, j]:
                s = np.int32(0)
                for i in range(4):
                    r = nbr[i, j]
                    if r < n_a:
                        s += signed[sym_a[p, r]]
                s = (s >> shift) + 4
                out[k] = min(max(s, 0), 8)
                k += 1
    return out


@njit(cache=True, nogil=True)
def stable_order(key, n):  # pragma: no cover - compiled
    """``np.argsort(key, kind="stable")`` (a counting sort) and the count of each key."""
    counts = np.zeros(n, np.int64)
    for c in key:
        counts[c] += 1
    pos = np.zeros(n, np.int64)
    for c in range(1, n):
        pos[c] = pos[c - 1] + counts[c - 1]
    order = np.empty(key.size, np.int64)
    for i in range(key.size):
        order[pos[key[i]]] = i
        pos[key[i]] += 1
    return order, counts


@njit(cache=True, nogil=True)
def mask_counts(mask_a, mask_b, ctx, cls, n_cls, n_nbr):  # pragma: no cover - compiled
    """Kept and total bits of phase A per class and of phase B per (class, context)."""
    ones = np.zeros(n_cls + n_cls * n_nbr)
    tot = np.zeros(n_cls + n_cls * n_nbr)
    planes, n_a = mask_a.shape
    n_b = mask_b.shape[1]
    for p in range(planes):
        c = cls[p]
        kept = 0
        for j in range(n_a):
            if mask_a[p, j]:
                kept += 1
        ones[c] += kept
        tot[c] += n_a
        for j in range(n_b):
            r = n_cls + c * n_nbr + ctx[p, j]
            tot[r] += 1
            if mask_b[p, j]:
                ones[r] += 1
    return ones, tot


@njit(cache=True, nogil=True)
def group_by_context(ctx, values, n_ctx):  # pragma: no cover - compiled
    """``values`` stably sorted by ``ctx`` (a counting sort), and the size of each context."""
    order, sizes = stable_order(ctx, n_ctx)
    out = np.empty(values.size, np.int32)
    for i in range(order.size):
        out[i] = values[order[i]]
    return out, sizes


@njit(cache=True, nogil=True)
def phase_values(kept, values, phase_a, phase_b, fill):  # pragma: no cover - compiled
    """Phase A's symbol planes (``fill``: dropped) and the kept symbols of each phase in
    phase order, from the kept mask (planes, plane) and the levels of the kept elements
    in C order."""
    planes, size = kept.shape
    n = values.size
    sym_a = np.empty((planes, phase_a.size), np.int32)
    kept_a = np.empty(n + 1, np.int32)  # branch-free: one spare slot for unkept writes
    kept_b = np.empty(n + 1, np.int32)
    if n == 0:
        sym_a[:] = fill
        return sym_a, kept_a[:0], kept_b[:0]
    local = np.empty(size, np.int64)  # index into values of each element of a plane
    k = 0
    ia = 0
    ib = 0
    for p in range(planes):
        for j in range(size):
            local[j] = min(k, n - 1)
            k += kept[p, j]
        for j in range(phase_a.size):
            q = phase_a[j]
            v = values[local[q]]
            on = kept[p, q]
            sym_a[p, j] = v if on else fill
            kept_a[ia] = v
            ia += on
        for j in range(phase_b.size):
            q = phase_b[j]
            kept_b[ib] = values[local[q]]
            ib += kept[p, q]
    kept_a = kept_a[:ia]
    kept_b = kept_b[:ib]
    return sym_a, kept_a, kept_b

"""SLICER's per-element loops compiled with numba: one pass where numpy needs several calls.

Each kernel computes exactly what its numpy reference in :mod:`._slicer_mask` or
:mod:`._slicer_values` computes (same dtypes, same bytes on the wire); the numpy path stays the
reference and is what runs when numba is not installed (the torch-free edge install) or when
``SPLITCOMP_SLICER_JIT=0`` is set. Tests flip :data:`ENABLED` to compare the two.

numba is imported and the kernels compiled (or loaded from numba's on-disk cache) on first
use, not when :mod:`splitcomp.codecs` is imported.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import numpy as np

from .errors import require

#: value contexts of phase B (``_slicer_values.N_CONTEXTS``, which imports this module)
N_CONTEXTS = 9
#: whether the compiled path is used: numba importable and not switched off by the env var
ENABLED = (
    os.environ.get("SPLITCOMP_SLICER_JIT", "1") != "0"
    and importlib.util.find_spec("numba") is not None
)
_KERNELS: SimpleNamespace | None = None


def active() -> bool:
    """True when the compiled kernels are to be used (see :data:`ENABLED`); a numba that is
    present but does not import switches the compiled path off for good."""
    global ENABLED
    if ENABLED and _KERNELS is None:
        try:
            kernels()
        except ImportError:
            ENABLED = False
    return ENABLED


def kernels() -> SimpleNamespace:
    """The compiled kernels (built on the first call)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build()
    return _KERNELS


def warm_up() -> None:
    """Compile (or load) the kernels now, e.g. before timing: a round trip of a few small
    tensors through the slicer takes every kernel and the usual argument types."""
    from .slicer import SlicerCodec  # here, not at import: slicer imports this module

    kernels()
    rng = np.random.default_rng(0)
    for shape, axis in (((1, 8, 6, 6), 1), ((1, 5, 48), -1), ((2, 3), 7)):
        x = rng.standard_normal(shape).astype(np.float32)
        for q in (0.3, 1.0):
            codec = SlicerCodec(quality=q, axis=axis)
            for sample in (x, np.maximum(x, 0)):
                payload = codec.encode_array(sample)
                codec.decode_array(memoryview(payload), shape, _limits())


def _limits():
    from .errors import DecodeLimits

    return DecodeLimits()


def finish_decode(coder, decode_part, mask_a, mask_b, lut, geo, freqs, ctx) -> np.ndarray:
    """SLICER's level symbols and output planes by the kernels: the same result as the numpy
    tail of ``SlicerCodec.decode_array`` (the reference). ``ctx``: (signed levels, whether
    phase B has value contexts, their shift, the contexts used); ``decode_part(coder, freqs,
    n)`` reads one rANS part."""
    signed, use_ctx, shift, used = ctx
    k = kernels()
    n_levels = lut.size - 1
    kept_a, kept_b = int(np.count_nonzero(mask_a)), int(np.count_nonzero(mask_b))
    if n_levels == 1:
        vals_a, vals_b = np.zeros(kept_a, np.int32), np.zeros(kept_b, np.int32)
    elif not use_ctx:
        both = decode_part(coder, freqs[0], kept_a + kept_b)
        vals_a, vals_b = both[:kept_a], both[kept_a:]
    else:
        vals_a = np.ascontiguousarray(decode_part(coder, freqs[0], kept_a), np.int32)
        vctx = k.decoded_value_contexts(mask_a, vals_a, signed, geo.neighbours, shift, mask_b)
        sizes = np.bincount(vctx, minlength=N_CONTEXTS)
        require(
            np.array_equal(np.flatnonzero(sizes), used),
            "slicer: value contexts do not match the mask",
        )
        parts = [decode_part(coder, freqs[1 + i], int(sizes[c])) for i, c in enumerate(used)]
        grouped = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        vals_b = k.ungroup_by_context(vctx, grouped.astype(np.int32, copy=False), sizes)
    require(coder.is_empty(), "slicer: trailing rANS data")
    vals_a = np.ascontiguousarray(vals_a, np.int32)
    vals_b = np.ascontiguousarray(vals_b, np.int32)
    return k.assemble(
        mask_a, mask_b, vals_a, vals_b, lut, geo.phase_a, geo.phase_b, geo.plane_size
    )


def _numba_cache() -> None:
    """numba's on-disk cache goes where splitcomp's caches go (``$SPLITCOMP_CACHE`` or the
    XDG cache folder), not beside an installed package; ``NUMBA_CACHE_DIR`` wins. (The
    rule is ``splitcomp.data.paths``'; ``codecs`` may not import ``data``.)"""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    root = os.environ.get("SPLITCOMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "splitcomp")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(root, "numba")


def _build() -> SimpleNamespace:
    _numba_cache()
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
    def value_contexts(signed_a, nbr, shift):  # pragma: no cover - compiled
        planes, n_a = signed_a.shape
        n_b = nbr.shape[1]
        out = np.empty((planes, n_b), np.int32)
        for p in range(planes):
            for j in range(n_b):
                s = np.int32(0)
                for i in range(4):
                    r = nbr[i, j]
                    if r < n_a:
                        s += signed_a[p, r]
                s = (s >> shift) + 4
                out[p, j] = min(max(s, 0), 8)
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
    def unpack_runs(nib, counts, order):  # pragma: no cover - compiled
        """Inverse of ``pack_runs``: the bits, scattered back through ``order`` if given."""
        total = 0
        for c in counts:
            total += c
        out = np.empty(total, np.bool_)
        src = 0
        dst = 0
        for g in range(counts.size):
            c = counts[g]
            if order.size > 0:
                for k in range(c):
                    out[order[dst + k]] = (nib[src + (k >> 2)] >> (k & 3)) & 1
            else:
                for k in range(c):
                    out[dst + k] = (nib[src + (k >> 2)] >> (k & 3)) & 1
            dst += c
            src += (c + 3) // 4
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
    def decoded_value_contexts(mask_a, vals_a, signed, nbr, shift, mask_b):  # pragma: no cover
        """``kept_value_contexts`` from phase A's mask and its kept symbols in C order."""
        planes, n_a = mask_a.shape
        signed_a = np.zeros((planes, n_a + 1), np.int32)  # last column: no neighbour
        last = max(vals_a.size - 1, 0)
        va = vals_a if vals_a.size else np.zeros(1, np.int32)
        k = 0
        for p in range(planes):
            for j in range(n_a):
                on = mask_a[p, j]
                x = signed[va[min(k, last)]]
                signed_a[p, j] = x if on else 0
                k += on
        n_b = nbr.shape[1]
        n = 0
        for p in range(planes):
            for j in range(n_b):
                if mask_b[p, j]:
                    n += 1
        out = np.empty(n + 1, np.int32)  # a spare slot: every position writes
        k = 0
        for p in range(planes):
            for j in range(n_b):
                s = (signed_a[p, nbr[0, j]] + signed_a[p, nbr[1, j]]
                     + signed_a[p, nbr[2, j]] + signed_a[p, nbr[3, j]])
                s = (s >> shift) + 4
                out[k] = min(max(s, 0), 8)
                k += mask_b[p, j]
        return out[:n]

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
    def ungroup_by_context(ctx, grouped, sizes):  # pragma: no cover - compiled
        """Inverse of ``group_by_context``."""
        pos = np.zeros(sizes.size, np.int64)
        for c in range(1, sizes.size):
            pos[c] = pos[c - 1] + sizes[c - 1]
        out = np.empty(ctx.size, np.int32)
        for i in range(ctx.size):
            out[i] = grouped[pos[ctx[i]]]
            pos[ctx[i]] += 1
        return out

    @njit(cache=True, nogil=True)
    def assemble(mask_a, mask_b, vals_a, vals_b, lut, phase_a, phase_b, plane_size):
        """The decoded planes: kept positions take ``lut`` of their next value, in C order
        within each phase; the others ``lut[-1]`` (dropped)."""  # pragma: no cover
        planes = mask_a.shape[0]
        out = np.empty((planes, plane_size), np.float32)
        drop = lut[lut.size - 1]
        # branch-free: read a (clamped) value for every position, keep it where kept
        last_a = max(vals_a.size - 1, 0)
        last_b = max(vals_b.size - 1, 0)
        va = vals_a if vals_a.size else np.zeros(1, np.int32)
        vb = vals_b if vals_b.size else np.zeros(1, np.int32)
        ka = 0
        kb = 0
        for p in range(planes):
            for j in range(phase_a.size):
                on = mask_a[p, j]
                x = lut[va[min(ka, last_a)]]
                out[p, phase_a[j]] = x if on else drop
                ka += on
            for j in range(phase_b.size):
                on = mask_b[p, j]
                x = lut[vb[min(kb, last_b)]]
                out[p, phase_b[j]] = x if on else drop
                kb += on
        return out

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

    return SimpleNamespace(
        phase_values=phase_values,
        kept_value_contexts=kept_value_contexts,
        stable_order=stable_order,
        mask_counts=mask_counts,
        decoded_value_contexts=decoded_value_contexts,
        group_by_context=group_by_context,
        ungroup_by_context=ungroup_by_context,
        assemble=assemble,
        neighbour_context=neighbour_context,
        value_contexts=value_contexts,
        pack_runs=pack_runs,
        unpack_runs=unpack_runs,
    )

"""SLICER's encoder as compiled passes: float32 tensor in, payload bytes out.

``SlicerCodec.encode_array`` quantizes (thresholds, grids: :mod:`._slicer_quant`), then
codes the keep mask and the level symbols. In numpy that is ~100 calls and ~30 rANS streams
(~0.6 ms for a ResNet-20 ``layer2`` sample). :func:`encode_fast` does it in two kernel calls
and a few scalar lines between them, and writes the same bytes (the numpy path is the
reference, ``tests/codecs/test_slicer_jit.py``): the thresholds and kept counts
(:func:`._slicer_quant_kernels.thresholds`), the one-piece grids (:func:`._slicer_quant.allocate`'s
arithmetic), then quantization into dense symbols and the tail: mask classes and the model
choice (:func:`._slicer_mask.fit_model`, its float sums in numpy's pairwise order and its
logarithms from a table numpy made), both mask phases as padded 4-bit runs, the value
histograms (:func:`._slicer_values.histogram_bytes`) and contexts, and the two rANS lanes
(:func:`._slicer_lanes_kernels.write_lanes`, divisions by reciprocals). Grids of several
pieces (magnitude blocks) are quantized by numpy and coded by :func:`encode_tail`.
"""

from __future__ import annotations

import functools
import math
import struct
from types import SimpleNamespace

import numpy as np

from . import _slicer_fused as fused
from . import _slicer_mask as mk
from ._slicer_quant import _MAX_STEP, allocate, level_cap
from .bytes_io import put_varint


@functools.cache
def kernels() -> SimpleNamespace:
    """The compiled encoder kernels and their tables (built on the first call)."""
    return _build()


def encode_fast(xf: np.ndarray, keep_pos: float, keep_neg: float, distortion: float,
                n_blocks: int, geo: mk.Geometry) -> bytes | None:
    """The whole payload of a flat float32 tensor, or None where a sign needs magnitude
    blocks or more than ``MAX_LEVELS`` levels (the numpy quantizer's cases)."""
    k = kernels()
    hi, lo, finite, t_pos, t_neg, c_pos, c_neg = k.thresholds(xf, keep_pos, keep_neg)
    if not finite:
        raise ValueError("slicer: input contains NaN or inf")
    ref = min(t_pos, t_neg)
    if ref == math.inf:
        return bytes([0])
    base = distortion * max(ref, max(hi, -lo) * 2.0**-24)  # float32 resolution
    steps = [1.0, 1.0]  # a dropped sign's, unused
    for i, t, count, top in ((0, t_pos, c_pos, hi), (1, t_neg, c_neg, -lo)):
        if t == math.inf:
            continue
        if n_blocks > 1 and (top - t) / base > level_cap(count / n_blocks):
            return None
        steps[i] = min(base, _MAX_STEP)  # allocate() with one block, rounded to float32 later
        if max(max(top, t) - t, 0.0) / base > max(64.0, 2.0 * count):  # a coarser step
            steps[i] = float(allocate(t, count, base, None, top).steps[0])
    flags, head, words, cells_p, cells_n, mean_p, mean_n = k.encode_dense(
        xf, t_pos, t_neg, steps[0], steps[1], c_pos, c_neg, geo.planes, geo.channels,
        geo.phase_a, geo.phase_b, geo.neighbours, geo.context_base, mk.RESCALE, k.quad,
        k.quad_rcp, k.quad_rsh, k.log2p, k.log2q, k.freqs)
    if flags < 0:
        raise AssertionError("slicer: encoder buffers too small")  # a bug, never input
    if head.size == 0:
        return None
    out = bytearray()
    for bit, t, step, cells, mean in ((1, t_pos, steps[0], cells_p, mean_p),
                                      (2, t_neg, steps[1], cells_n, mean_n)):
        if t != math.inf:  # the grid: threshold, offset, one piece (its step, cells)
            flags |= bit
            out += struct.pack("<fBBf", t, min(max(round(256 * mean), 1), 255), 1, step)
            put_varint(out, cells)
    return bytes([flags]) + out + head.tobytes() + words.astype("<u4", copy=False).tobytes()


def encode_tail(planes: np.ndarray, values: np.ndarray, signs: list[tuple[int, int]],
                geo) -> tuple[int, bytes]:
    """(flag bits, bytes after the grids) of a kept mask (planes, plane size) and the levels
    of the kept elements in C order; ``signs``: (sign, levels) of each kept sign in order."""
    k = kernels()
    levels = np.array([n for _, n in signs], np.int64)
    neg = np.array([1 if s < 0 else 0 for s, _ in signs], np.int64)
    n_levels = int(levels.sum())
    dense = np.full(planes.size, n_levels, np.int32)
    dense[np.flatnonzero(planes)] = values
    # bounds the kernel relies on (it does not check indices): the header (class map, codes,
    # up to ten histograms of 6-bit codes) and the words (at most 24 bits a symbol)
    head = np.empty((geo.channels + 3) // 4 + 48 + 10 * ((n_levels + 7) // 8)
                    + (60 * n_levels + 7) // 8, np.uint8)
    n_sym = planes.size // 4 + int(values.size) + 64
    words = np.empty(n_sym * 24 // 32 + 8, np.uint32)
    res = k.encode(np.ascontiguousarray(planes, np.uint8), dense.reshape(planes.shape),
                   levels, neg, geo.channels, geo.phase_a, geo.phase_b, geo.neighbours,
                   geo.context_base, mk.RESCALE, k.quad, k.quad_rcp, k.quad_rsh, k.log2p,
                   k.log2q, k.freqs, head, words)
    flags, n_head, n_words = res
    if n_head < 0:
        raise AssertionError("slicer: encoder buffers too small")  # a bug, never input
    return int(flags), head[:n_head].tobytes() + words[:n_words].astype("<u4").tobytes()


def _build() -> SimpleNamespace:
    from .entropy import _ans_jit

    ans = _ans_jit.kernels()  # numba's cache folder, before the kernels import numba
    from . import _slicer_fused_enc_kernels as m
    from . import _slicer_quant_kernels as q

    dec = fused.kernels()
    codes = np.arange(256) / 256.0
    with np.errstate(divide="ignore"):
        log2p, log2q = np.log2(codes), np.log2(1 - codes)  # numpy's values, not libm's
    quad_rcp = np.zeros((256, 16), np.uint64)  # the mask models' reciprocals, made once
    quad_rsh = np.zeros((256, 16), np.uint64)
    for code in range(1, 256):
        ans.reciprocals(dec.quad[code], quad_rcp[code], quad_rsh[code])
    return SimpleNamespace(encode=m.encode, encode_dense=m.encode_dense,
                           thresholds=q.thresholds, log2p=log2p, log2q=log2q, quad=dec.quad,
                           quad_rcp=quad_rcp, quad_rsh=quad_rsh, freqs=dec.freqs)

"""SLICER's encoder after quantization, as one compiled pass: keep mask and levels in, bytes out.

``SlicerCodec.encode_array`` quantizes (thresholds, grids: :mod:`._slicer_quant`), then
codes the keep mask and the level symbols. In numpy that second half is ~60 calls and ~30 rANS
streams (~0.5 ms for a ResNet-20 ``layer2`` sample); this kernel does it in one pass
and writes the same bytes (the numpy path is the reference, ``tests/codecs/test_slicer_jit.py``):
mask classes and the model choice (:func:`._slicer_mask.fit_model`, its float sums in numpy's
pairwise order and its logarithms from a table numpy made), both mask phases as padded 4-bit
runs, the value histograms (:func:`._slicer_values.histogram_bytes`) and contexts, and the rANS
stack (:mod:`.entropy._ans_jit`).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from . import _slicer_fused as fused
from . import _slicer_mask as mk


@functools.cache
def kernels() -> SimpleNamespace:
    """The compiled encoder kernels (built on the first call)."""
    return _build()


def encode_tail(planes: np.ndarray, values: np.ndarray, signs: list[tuple[int, int]],
                geo) -> tuple[int, bytes]:
    """(flag bits, bytes after the grids) of a kept mask (planes, plane size) and the levels
    of the kept elements in C order; ``signs``: (sign, levels) of each kept sign in order."""
    k, dec = kernels(), fused.kernels()
    levels = np.array([n for _, n in signs], np.int64)
    neg = np.array([1 if s < 0 else 0 for s, _ in signs], np.int64)
    n_levels = int(levels.sum())
    # bounds the kernel relies on (it does not check indices): the header (class map, codes,
    # up to ten histograms of 6-bit codes) and the words (at most 24 bits a symbol)
    head = np.empty((geo.channels + 3) // 4 + 48 + 10 * ((n_levels + 7) // 8)
                    + (60 * n_levels + 7) // 8, np.uint8)
    n_sym = planes.size // 4 + int(values.size) + 64
    words = np.empty(n_sym * 24 // 32 + 8, np.uint32)
    res = k.encode(np.ascontiguousarray(planes, np.bool_), np.ascontiguousarray(values, np.int32),
                   levels, neg, geo.channels, geo.phase_a, geo.phase_b, geo.neighbours,
                   geo.context_base, mk.RESCALE, dec.quad, k.log2p, k.log2q, dec.freqs, head,
                   words)
    flags, n_head, n_words = res
    if n_head < 0:
        raise AssertionError("slicer: encoder buffers too small")  # a bug, never input
    return int(flags), head[:n_head].tobytes() + words[:n_words].astype("<u4").tobytes()


def _build() -> SimpleNamespace:
    from .entropy import _ans_jit

    _ans_jit.kernels()  # numba's cache folder, before the kernels import numba
    from . import _slicer_fused_enc_kernels as m

    codes = np.arange(256) / 256.0
    with np.errstate(divide="ignore"):
        log2p, log2q = np.log2(codes), np.log2(1 - codes)  # numpy's values, not libm's
    return SimpleNamespace(encode=m.encode, log2p=log2p, log2q=log2q)


"""SLICER's decoder as one compiled pass: payload bytes in, float32 planes out.

The numpy decoder (``SlicerCodec.decode_array`` with :data:`._slicer_jit.ENABLED` off) is the
reference: ~30 rANS calls into constriction and ~100 numpy calls per tensor, ~400 us for a
ResNet-20 ``layer2`` sample whatever its size. This kernel reads the same layout
(``docs/bitstream.md``, section "slicer") and gives the same floats, or an error where the
reference raises :class:`~.errors.BitstreamError`: header, grids and their reconstruction
table, mask model and histograms, the rANS stacks (:mod:`.entropy._ans_jit`, constriction's
coder compiled; one, or two lanes read in turn: :mod:`._slicer_lanes_kernels`), both mask
phases, the level symbols with their value contexts, and the
scatter into planes. Every read is bounds-checked by hand (numba does not check indices), and
nothing is allocated from stream contents beyond what the payload's own size bounds. It
releases the GIL, so a server can decode a batch in threads. Symbols are read by slot tables
(:func:`.entropy._ans_kernels.slot_entries`: one load gives a symbol, its start and its
probability), the mask models' built here once; the level models' per stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from .errors import BitstreamError

#: error code -> message (the kernel returns a code; 0: decoded)
ERRORS = (
    "",
    "slicer: truncated payload",
    "slicer: reserved flag bits set",
    "slicer: bad grid (threshold, offset, pieces, cells, steps or starts)",
    "slicer: bad all-dropped payload",
    "slicer: zero mask probability",
    "slicer: value context without use",
    "slicer: bad context shift or context set",
    "slicer: bad histogram (width, bitmap, padding or code)",
    "slicer: corrupt rANS data (not whole words, or a zero last word)",
    "slicer: value contexts do not match the mask",
    "slicer: trailing rANS data",
    "slicer: varint too long",
)


@functools.cache
def kernels() -> SimpleNamespace:
    """The compiled decoder and its model tables (built on the first call)."""
    return _build()


#: decoders (:func:`decoder`) by (shape, the codec's ``axis`` parameter), of small planes only
#: (a hostile shape's index arrays are not kept); bounded, cleared when full
DECODERS: dict[tuple, Callable[[memoryview], np.ndarray]] = {}
MAX_DECODERS = 64


def keep(key: tuple, run: Callable[[memoryview], np.ndarray]) -> None:
    if len(DECODERS) >= MAX_DECODERS:
        DECODERS.clear()
    DECODERS[key] = run


def decoder(geo, shape: tuple[int, ...], rescale: np.ndarray):
    """The decoder of payloads of ``shape`` (planes ``geo``): payload in, float32 array of
    ``shape`` out, :class:`BitstreamError` on a bad payload; the kernel's arguments bound
    once (a server decodes one shape over and over)."""
    k = kernels()
    kernel, dims = k.decode, (geo.planes, geo.plane_size)
    args = (geo.planes, geo.channels, geo.phase_a, geo.phase_b, geo.neighbours,
            geo.context_base, rescale, k.quad, k.quad_lut, k.freqs)
    frombuffer, empty, u8, f32 = np.frombuffer, np.empty, np.uint8, np.float32

    def run(payload: memoryview) -> np.ndarray:
        out = empty(dims, f32)
        err = kernel(frombuffer(payload, u8), *args, out)
        if err:
            raise BitstreamError(ERRORS[err])
        return out.reshape(shape)

    return run


def _quad_table(quantized_cdf) -> np.ndarray:
    """cdf (256, 17) of the 16-ary model of four bits each kept with probability ``c / 256``
    (row 0 unused), as ``_slicer_mask.quad_model`` builds it."""
    s = np.arange(16)
    ones = ((s[:, None] >> np.arange(4)) & 1).sum(axis=1)
    table = np.zeros((256, 17), np.uint32)
    for code in range(1, 256):
        freqs = (np.int64(code) ** ones * np.int64(256 - code) ** (4 - ones)).astype(np.float64)
        if not quantized_cdf(freqs, table[code]):
            raise AssertionError("mask model refused")
    return table


def _build() -> SimpleNamespace:
    from . import _slicer_values as vl
    from .entropy import _ans_jit

    _ans_jit.kernels()  # numba's cache folder, before the kernels import numba
    from . import _slicer_fused_kernels as m
    from ._slicer_lanes_kernels import quad_bits

    quad = _quad_table(m.quantized_cdf)
    quad_lut = np.zeros((quad.shape[0], 1 << quad_bits), np.int64)  # row 0 unused
    for code in range(1, quad.shape[0]):
        m.slot_entries(quad[code], 16, quad_bits, quad_lut[code])
    return SimpleNamespace(decode=m.decode, quad=quad, quad_lut=quad_lut, freqs=vl.FREQS)

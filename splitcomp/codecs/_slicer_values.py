"""SLICER's level symbols: histograms on the wire, and the phase-B value context.

Level symbols of both signs share one alphabet of ``L = L_pos + L_neg`` symbols (positive
level ``l`` is ``l``, negative level ``l`` is ``L_pos + l``). A histogram travels as a bitmap
of the symbols used and a few bits per used symbol, ``round(2 log2 count) + 1``; the decoder
turns codes into integer frequencies with integer arithmetic only, so both sides hand the rANS
coder the same model on any platform. Half-octave counts cost a little coding efficiency and
save a few bits a code over a byte (figures: ``docs/results/codecs.md``, section "slicer").

Phase-B values (see :mod:`._slicer_mask`) are coded knowing their four phase-A neighbours:
the context is the sum of the neighbours' signed levels (``+-(l + 1)``, 0 when dropped),
shifted right by ``k`` and clipped to 9 buckets. Features are spatially correlated, so the
neighbours predict both magnitude and sign.

Layout of the histograms: ``docs/bitstream.md``, section "slicer".
"""

from __future__ import annotations

import math

import numpy as np

from .bytes_io import Reader
from .errors import require

N_CONTEXTS = 9
_CENTER = 4
#: round(2 ** (r / 2) * 2**20), r = 0, 1: count codes are half-octaves
_MANTISSA = np.array([1048576, 1482910], np.int64)
_MAX_CODE = 2 * 28 + 1  # counts up to 2**28 elements


def _freq_table() -> np.ndarray:
    j = np.arange(_MAX_CODE, dtype=np.int64)  # code - 1
    f = ((_MANTISSA[j % 2] << (j // 2)) + (1 << 19)) >> 20
    return np.concatenate([[0.0], f.astype(np.float64)])


#: model frequency of each histogram code: 0 -> 0, c -> round(2 ** ((c - 1) / 2)), computed by
#: integer arithmetic only, so every platform hands the coder the same model
FREQS = _freq_table()


def histogram_bytes(counts: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Wire form of the rows of a (rows, symbols) count matrix, and the model frequencies."""
    present = counts > 0
    codes = np.rint(2 * np.log2(np.maximum(counts, 1))).astype(np.uint8) + present
    used = codes[present]
    width = max(1, int(used.max()).bit_length())
    bits = (used[:, None] >> np.arange(width - 1, -1, -1, dtype=np.uint8)) & 1
    data = (
        bytes([width])
        + np.packbits(present, axis=1, bitorder="little").tobytes()
        + np.packbits(bits.reshape(-1)).tobytes()
    )
    return data, np.take(FREQS, codes)


def read_histograms(r: Reader, rows: int, size: int) -> np.ndarray:
    """(rows, size) model frequencies of :func:`histogram_bytes` read from ``r``."""
    width = r.u8()
    require(1 <= width <= 6, f"slicer: histogram code width {width}")
    span = (size + 7) // 8
    bits = np.unpackbits(
        np.frombuffer(r.take(rows * span), np.uint8).reshape(rows, span),
        axis=1,
        bitorder="little",
    )
    require(not bits[:, size:].any(), "slicer: histogram bitmap padding")
    present = bits[:, :size].view(bool)
    require(bool(present.any(axis=1).all()), "slicer: empty histogram")
    m = int(np.count_nonzero(present))
    raw = np.unpackbits(np.frombuffer(r.take((m * width + 7) // 8), np.uint8))
    require(not raw[m * width :].any(), "slicer: histogram code padding")
    codes = raw[: m * width].reshape(m, width) @ (1 << np.arange(width - 1, -1, -1))
    require(bool(codes.min() >= 1 and codes.max() <= _MAX_CODE), "slicer: bad histogram code")
    freqs = np.zeros((rows, size))
    freqs[present] = np.take(FREQS, codes)
    return freqs


def signed_levels(signs: list[tuple[float, int]]) -> np.ndarray:
    """Signed level ``+-(l + 1)`` of every symbol of the shared alphabet, from the
    (sign, levels) of each kept sign in alphabet order, then 0 for "dropped"."""
    parts = [np.arange(1, n + 1) * int(s) for s, n in signs]
    return np.concatenate([*parts, [0]]).astype(np.int32)


def context_shift(mean_abs_level: float) -> int:
    """Shift ``k`` of the neighbour sum: buckets about as wide as half a typical level."""
    if mean_abs_level <= 0:
        return 0
    return min(max(round(math.log2(2 * mean_abs_level)), 0), 15)


def value_contexts(signed_a: np.ndarray, neighbours: np.ndarray, shift: int) -> np.ndarray:
    """(planes, phase-B) context 0..8 from the signed levels of phase A (0 = dropped)."""
    ext = np.zeros((signed_a.shape[0], signed_a.shape[1] + 1), np.int32)
    ext[:, :-1] = signed_a
    s = np.take(ext, neighbours[0], axis=1)
    for i in (1, 2, 3):
        s += np.take(ext, neighbours[i], axis=1)
    del ext
    s >>= shift  # in place: no int32 temporaries the size of phase B
    s += _CENTER
    return np.clip(s, 0, N_CONTEXTS - 1, out=s)

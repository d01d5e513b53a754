"""SLICER's position side: the keep mask coded in two checkerboard phases with context.

The tensor is seen as planes ``(rows * channels, H, W)``: ``rows`` is the product of the axes
before the channel axis, ``H`` the axis after it, ``W`` the product of the rest (``H = W = 1``
when the channel axis is last, ``C = 1`` when there is none). Phase A holds the positions with
``(y + x)`` even, phase B the others; every neighbour (up, down, left, right) of a phase-B
position is in phase A. So:

* phase A is coded with the probability of its channel's *class* (channels grouped into 4
  classes by keep rate: per-channel zero rates differ a lot in CNN features);
* phase B is coded knowing all of phase A: its probability depends on the class and on how
  many of its neighbours are kept (0-4, rescaled where the border leaves fewer than 4).

Both phases are vectorised, with no per-element loop: the bits of a phase are grouped by
context (planes sorted by class for phase A; a stable sort of the context keys for phase B),
and each context's run is coded with one fixed model in one rANS call. Four bits of a run go
into one 16-ary symbol whose frequencies are exact integer products of the bit probabilities
(the encoder and the decoder hand the coder identical tables on any platform, and the coder
sees 4x fewer symbols); a run is padded to a multiple of four with its more likely bit.

Probabilities are ``p / 256`` with ``p`` in 1..255 (a byte each on the wire).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .entropy.coder import AnsReader, Model, categorical

N_CLASSES = 4
N_NEIGHBOUR = 5  # neighbour-count contexts 0..4
_ONE = 256


@dataclass(frozen=True)
class Geometry:
    """How a flat tensor maps to planes, and the two checkerboard phases of a plane."""

    planes: int
    channels: int
    height: int
    width: int
    phase_a: np.ndarray  # flat indices within a plane
    phase_b: np.ndarray
    neighbours: np.ndarray  # (4, len(phase_b)): rank in phase_a of each neighbour, or sentinel
    context_base: np.ndarray  # 5 * (in-plane neighbours) of each phase-B position

    @property
    def plane_size(self) -> int:
        return self.height * self.width


#: context of (in-plane neighbours b, kept k) at index 5 b + k: k rescaled to 4 neighbours
RESCALE = np.array(
    [min((4 * k + b // 2) // b, 4) if b else 0 for b in range(5) for k in range(5)], np.uint8
)


#: planes of at most this many positions keep their phases cached (64 of them at most): a
#: stream claiming a large plane must not leave its index arrays behind
_CACHED_PLANE = 1 << 16


@lru_cache(maxsize=64)
def _cached_phases(height: int, width: int) -> tuple[np.ndarray, ...]:
    return _build_phases(height, width)


def _plane_phases(height: int, width: int) -> tuple[np.ndarray, ...]:
    if height * width <= _CACHED_PLANE:
        return _cached_phases(height, width)
    return _build_phases(height, width)


def _build_phases(height: int, width: int) -> tuple[np.ndarray, ...]:
    """Phase A and B indices, neighbour ranks and context bases of a plane (int32 indices
    below 2**31 positions, temporaries freed early: ~25 bytes a position at the peak)."""
    size = height * width
    it = np.int64 if size >= (1 << 31) - 1 else np.int32
    yy, xx = np.divmod(np.arange(size, dtype=it), it(max(width, 1)))
    is_a = ((yy + xx) & 1) == 0
    idx_a, idx_b = np.flatnonzero(is_a).astype(it), np.flatnonzero(~is_a).astype(it)
    del is_a
    rank = np.full(size + 1, idx_a.size, it)  # sentinel: the zero column after phase A
    rank[idx_a] = np.arange(idx_a.size, dtype=it)
    yb, xb = yy[idx_b], xx[idx_b]
    del yy, xx
    nbr = np.empty((4, idx_b.size), it)
    for row, (ok, step) in enumerate(((yb > 0, -width), (yb < height - 1, width),
                                      (xb > 0, -1), (xb < width - 1, 1))):
        nbr[row] = np.take(rank, np.where(ok, idx_b + step, size))
    del rank
    base = 5 * ((yb > 0).astype(np.uint8) + (yb < height - 1) + (xb > 0) + (xb < width - 1))
    out = (idx_a, idx_b, nbr, base.astype(np.uint8))
    for arr in out:
        arr.setflags(write=False)
    return out


def geometry(shape: tuple[int, ...], axis: int | None) -> Geometry:
    """Planes of ``shape`` around channel axis ``axis`` (``None``: no channels); those of
    small planes are kept (a server decodes the same shapes over and over)."""
    if math.prod(shape[axis + 1 :] if axis is not None else shape) <= _CACHED_PLANE:
        return _cached_geometry(tuple(shape), axis)
    return _geometry(shape, axis)


@lru_cache(maxsize=64)
def _cached_geometry(shape: tuple[int, ...], axis: int | None) -> Geometry:
    return _geometry(shape, axis)


def _geometry(shape: tuple[int, ...], axis: int | None) -> Geometry:
    n = math.prod(shape)
    if axis is None or not shape:
        rows, channels, rest = 1, 1, shape
    else:
        rows, channels, rest = math.prod(shape[:axis]), shape[axis], shape[axis + 1 :]
    height = rest[0] if rest else 1
    width = math.prod(rest[1:]) if rest else 1
    if n == 0:
        height = width = 0
    return Geometry(rows * channels, channels, height, width, *_plane_phases(height, width))


def neighbour_context(mask_a: np.ndarray, geo: Geometry) -> np.ndarray:
    """(planes, len(phase_b)) context 0..4 of every phase-B position from the phase-A bits:
    kept neighbours, rescaled to 4 where the border leaves fewer."""
    ext = np.zeros((geo.planes, geo.phase_a.size + 1), np.uint8)
    ext[:, :-1] = mask_a
    nbr = geo.neighbours
    cnt = np.take(ext, nbr[0], axis=1)
    for i in (1, 2, 3):
        cnt += np.take(ext, nbr[i], axis=1)
    cnt += geo.context_base
    return np.take(RESCALE, cnt)


def channel_classes(rate: np.ndarray) -> np.ndarray:
    """Class 0..3 of each channel from its keep rate (quarters of [0, 1])."""
    return np.minimum((rate * N_CLASSES).astype(np.int64), N_CLASSES - 1)


def prob_code(ones: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Byte code 1..255 of P(kept) = ones / total (128 where there is no data)."""
    p = np.rint(_ONE * ones / np.maximum(total, 1))
    p[total == 0] = _ONE // 2
    return np.clip(p, 1, _ONE - 1).astype(np.uint8)


def fit_model(
    mask_a: np.ndarray, mask_b: np.ndarray, ctx: np.ndarray, cls: np.ndarray, channels: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Probability codes of phase A (per class) and phase B (per class and context), and
    whether four classes pay for their class map and tables (else one class)."""
    n_ctx = N_CLASSES * N_NEIGHBOUR
    # rows: [4 classes of A | 20 (class, context) of B | 1 class of A | 5 contexts of B]
    ones = np.zeros(N_CLASSES + n_ctx + 1 + N_NEIGHBOUR)
    tot = np.zeros_like(ones)
    ones[:N_CLASSES] = np.bincount(cls, np.count_nonzero(mask_a, axis=1), N_CLASSES)
    tot[:N_CLASSES] = np.bincount(cls, minlength=N_CLASSES) * mask_a.shape[1]
    if mask_b.size:
        key = (ctx + (cls * N_NEIGHBOUR).astype(np.uint8)[:, None]).reshape(-1)
        tot[N_CLASSES : N_CLASSES + n_ctx] = np.bincount(key, minlength=n_ctx)
        ones[N_CLASSES : N_CLASSES + n_ctx] = np.bincount(
            np.compress(mask_b.reshape(-1), key), minlength=n_ctx
        )
    four = slice(0, N_CLASSES + n_ctx)
    ones[N_CLASSES + n_ctx] = ones[:N_CLASSES].sum()
    tot[N_CLASSES + n_ctx] = tot[:N_CLASSES].sum()
    ones[-N_NEIGHBOUR:] = ones[N_CLASSES : four.stop].reshape(N_CLASSES, N_NEIGHBOUR).sum(0)
    tot[-N_NEIGHBOUR:] = tot[N_CLASSES : four.stop].reshape(N_CLASSES, N_NEIGHBOUR).sum(0)
    code = prob_code(ones, tot)
    p = code / _ONE
    bits = -(ones * np.log2(p) + (tot - ones) * np.log2(1 - p))
    extra = 8 * ((channels + 3) // 4 + (N_CLASSES - 1) * (1 + N_NEIGHBOUR * (mask_b.size > 0)))
    if bits[four].sum() + extra < bits[four.stop :].sum():
        return code[:N_CLASSES], code[N_CLASSES : four.stop], True
    return code[four.stop : four.stop + 1], code[four.stop + 1 :], False


def nibble_symbols(bits: np.ndarray) -> np.ndarray:
    """Pack a flat 0/1 array into 4-bit symbols ``b0 + 2 b1 + 4 b2 + 8 b3`` (zero-padded)."""
    b = bits.reshape(-1)
    packed = np.packbits(b, bitorder="little")
    out = np.empty(2 * packed.size, np.int32)
    out[0::2] = packed & 15
    out[1::2] = packed >> 4
    return out[: (b.size + 3) // 4]


def nibble_bits(symbols: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`nibble_symbols`: the first ``n`` bits, as bool."""
    s = symbols.astype(np.uint8)
    if s.size % 2:
        s = np.append(s, np.uint8(0))
    packed = s[0::2] | (s[1::2] << 4)
    return np.unpackbits(packed, count=n, bitorder="little").view(bool)


@lru_cache(maxsize=256)
def quad_model(code: int) -> Model:
    """rANS model of four independent bits, each 1 with probability ``code / 256``.

    Frequencies are exact integer products (``<= 2**32``, exact in float64), so every
    platform hands the coder the same table.
    """
    s = np.arange(16)
    ones = ((s[:, None] >> np.arange(4)) & 1).sum(axis=1)
    freqs = (np.int64(code) ** ones * np.int64(_ONE - code) ** (4 - ones)).astype(np.float64)
    return categorical(freqs)


@dataclass(frozen=True)
class Groups:
    """Bits grouped by context: ``order`` sorts them (stably) so each context is one run."""

    order: np.ndarray | None  # None: already in context order
    counts: np.ndarray  # bits per context
    codes: np.ndarray  # probability code per context

    def _padding(self) -> tuple[np.ndarray, np.ndarray | None]:
        padded = (self.counts + 3) // 4 * 4
        if np.array_equal(padded, self.counts):
            return padded, None
        shift = np.repeat(
            np.cumsum(padded) - padded - (np.cumsum(self.counts) - self.counts), self.counts
        )
        return padded, np.arange(int(self.counts.sum())) + shift

    def encode(self, bits: np.ndarray) -> list[tuple[np.ndarray, Model]]:
        """(nibbles, model) parts in decoding order. Padding bits take each context's more
        likely value, so a run's padding costs under 3 bits."""
        b = bits.reshape(-1)
        if self.order is not None:
            b = np.take(b, self.order)
        padded, dest = self._padding()
        if dest is not None:
            likely = np.repeat(self.codes > _ONE // 2, padded)
            likely[dest] = b
            b = likely
        nib = nibble_symbols(b)
        ends = np.cumsum(padded) // 4
        return [
            (nib[e - p // 4 : e], quad_model(int(c)))
            for c, p, e in zip(self.codes, padded, ends, strict=True)
            if p
        ]

    def decode(self, reader: AnsReader) -> np.ndarray:
        """The bits (in original order) from ``reader``, consuming what :meth:`encode` made.

        Each context's run is unpacked without its padding (no index arrays: about 2 bytes a
        bit at the peak, plus the order of a sorted grouping)."""
        b = np.empty(int(self.counts.sum()), bool)
        start = 0
        for c, count in zip(self.codes.tolist(), self.counts.tolist(), strict=True):
            if count:
                nib = reader.read_model((count + 3) // 4, quad_model(int(c)))
                b[start : start + count] = nibble_bits(nib, count)
                start += count
        if self.order is None:
            return b
        out = np.empty(b.size, bool)
        out[self.order] = b
        return out


def phase_a_groups(
    cls: np.ndarray, codes: np.ndarray, n_a: int
) -> tuple[Groups, np.ndarray | None]:
    """Phase-A grouping: planes sorted by class (no per-bit sort). Returns the groups (over
    the class-sorted bits) and the plane order (None when the planes are already in it)."""
    counts = np.bincount(cls, minlength=codes.size)[: codes.size] * n_a
    in_order = cls.size == 0 or bool(np.all(cls[1:] >= cls[:-1]))
    plane_order = None if in_order else np.argsort(cls, kind="stable")
    return Groups(None, counts, codes), plane_order


def phase_b_groups(key: np.ndarray, codes: np.ndarray) -> Groups:
    """Phase-B grouping by context key (class * 5 + neighbour count), a stable sort."""
    k = key.reshape(-1)
    return Groups(np.argsort(k, kind="stable"), np.bincount(k, minlength=codes.size), codes)

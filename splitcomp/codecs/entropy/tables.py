"""Frequency tables: the model of a (blocked) symbol stream, sent in the payload.

A :class:`FreqTable` holds frequency rows (one per block of a blocked stream) over one shared
alphabet of *bins*: bin ``b`` covers symbols ``[b << shift, (b + 1) << shift)``, all with the
bin's frequency (``shift = 0``: one symbol a bin; wider bins make much smaller tables for short
streams over wide alphabets). Counts are stored as log-scale codes
``e = round(k * log2(count)) + 1`` (0 = absent) of ``w`` bits each. :meth:`FreqTable.fit` picks
``shift`` and ``k`` in {1, 2, 4, 8} by estimated table + coded bits. The decoder turns codes
into integer frequencies with integer arithmetic only, so both ends hand the rANS coder
(:mod:`.coder`) bit-identical models. :func:`estimate_table_bits` prices a table cheaply for
cost models; :func:`histogram` and :func:`ranks` count and index symbols without sorting;
:func:`encode_symbols` / :func:`decode_symbols` code an array in one call (table + rANS words).

Layout of the table bytes: ``docs/bitstream.md``, section "Frequency tables".

Every reader validates counts against bounds the caller derives from what it already trusts
(shape, remaining payload) before allocating, and raises
:class:`~splitcomp.codecs.errors.BitstreamError` for anything malformed.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType

import numpy as np

from .. import _slicer_jit
from ..bytes_io import Reader
from ..errors import require
from .bits import pack_bits, put_varints, read_varints, unpack_bits
from .coder import AnsReader, AnsWriter

__all__ = [
    "MAX_ALPHABET",
    "MAX_SYMBOL",
    "FreqTable",
    "decode_symbol_indices",
    "decode_symbols",
    "encode_symbols",
    "estimate_table_bits",
    "histogram",
    "ranks",
]

#: largest alphabet a table may hold (the rANS models have 24-bit precision)
MAX_ALPHABET = 1 << 20
#: largest symbol value a table may hold
MAX_SYMBOL = (1 << 40) - 1
_K_CHOICES = (1, 2, 4, 8)
_MAX_CODE_BITS = 8
_FRAC = 20
#: round(2 ** (r / k) * 2 ** 20) for r < k, written out so every platform builds the same model
_MANTISSA = {
    1: np.array([1048576], np.int64),
    2: np.array([1048576, 1482910], np.int64),
    4: np.array([1048576, 1246974, 1482910, 1763488], np.int64),
    8: np.array([1048576, 1143480, 1246974, 1359835, 1482910, 1617125, 1763488, 1923097], np.int64),
}
_MAX_CODE = {k: 40 * k + 1 for k in _K_CHOICES}  # frequencies stay below 2**41
_LUT_SPAN = 1 << 22  # symbol spans up to this use a lookup table, wider ones a binary search
#: the compiled kernels take counts up to this (their numpy log2 table, 8 bytes an entry)
_LG_CAP = 1 << 22
_LG = np.zeros(0, np.float64)
_KERNELS: dict[str, ModuleType] = {}


def _kernels(name: str) -> ModuleType | None:
    """The compiled kernel module ``name`` of this package, or None where the compiled path
    is off (``_slicer_jit.active()``); imported once numba's cache folder is set, then kept."""
    if not _slicer_jit.active():
        return None
    mod = _KERNELS.get(name)
    if mod is None:
        mod = _KERNELS[name] = importlib.import_module(f"{__package__}.{name}")
    return mod


def _compiled() -> ModuleType | None:
    """:mod:`._tables_kernels` (fit, serialise, parse a table), or None."""
    return _kernels("_tables_kernels")


def choose_kernels() -> ModuleType | None:
    """:mod:`._choose_kernels` (histogram, ranks, rans cost-model pieces), or None."""
    return _kernels("_choose_kernels")


def rows_kernels() -> ModuleType | None:
    """:mod:`._rows_kernels` (tables and rANS words of a whole stream in one call), or None."""
    return _kernels("_rows_kernels")


def _log2_table(need: int) -> np.ndarray | None:
    """numpy's ``log2(max(i, 1))`` for ``i`` below at least ``need`` (grown by powers of two,
    kept), so compiled cost models multiply numpy's very logs; None past :data:`_LG_CAP`."""
    global _LG
    if need > _LG.size:
        if need > _LG_CAP:
            return None
        t = np.arange(max(1 << 12, 1 << (need - 1).bit_length()), dtype=np.float64)
        _LG = np.log2(np.maximum(t, 1))
    return _LG


# -- histograms ----------------------------------------------------------------------------
def histogram(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a non-negative integer array and their counts, without sorting.

    ``np.bincount`` over the value span; when the span is much wider than the array (a few far
    outliers), the bulk is counted that way and only the rare wide values go through
    ``np.unique``.
    """
    u = np.asarray(u).reshape(-1)
    if u.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(u.max())
    limit = max(4 * u.size, 1 << 16)
    kern = choose_kernels() if top < limit and u.dtype.kind in "iu" else None
    if kern is not None:
        ok, alphabet, counts = kern.histogram(np.ascontiguousarray(u), top)
        if ok:
            return alphabet, counts
    if top < limit:
        counts = np.bincount(u, minlength=top + 1)
        alphabet = np.flatnonzero(counts)
        return alphabet.astype(np.int64), counts[alphabet].astype(np.int64)
    wide = u >= limit
    counts = np.bincount(u[~wide], minlength=1)
    alphabet = np.flatnonzero(counts)
    tail, tail_counts = np.unique(u[wide], return_counts=True)
    return (
        np.concatenate([alphabet, tail]).astype(np.int64),
        np.concatenate([counts[alphabet], tail_counts]).astype(np.int64),
    )


def ranks(u: np.ndarray, alphabet: np.ndarray) -> np.ndarray:
    """Index of each value of ``u`` in the sorted ``alphabet`` (every value must be in it)."""
    u = np.asarray(u).reshape(-1)
    if alphabet.size == 0:
        return np.zeros(u.size, np.int32)
    lo, hi = int(alphabet[0]), int(alphabet[-1])
    kern = choose_kernels() if hi - lo < _LUT_SPAN and u.dtype.kind in "iu" else None
    if kern is not None:
        ok, out = kern.ranks(np.ascontiguousarray(u), np.ascontiguousarray(alphabet, np.int64))
        if ok:
            return out
    if hi - lo < _LUT_SPAN:
        lut = np.zeros(hi - lo + 1, np.int32)
        lut[alphabet - lo] = np.arange(alphabet.size, dtype=np.int32)
        return lut[u - lo] if lo else lut[u]
    return np.searchsorted(alphabet, u).astype(np.int32)


# -- frequency tables --------------------------------------------------------------------
def _code_freqs(codes: np.ndarray, k: int) -> np.ndarray:
    """Integer model frequency of each count code (0 -> 0, e -> round(2 ** ((e - 1) / k)))."""
    j = np.maximum(codes.astype(np.int64) - 1, 0)
    f = ((_MANTISSA[k][j % k] << (j // k)) + (1 << (_FRAC - 1))) >> _FRAC
    return np.where(codes > 0, f, 0)


def _count_codes(counts: np.ndarray, k: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        e = np.rint(k * np.log2(counts)) + 1
    return np.where(counts > 0, e, 0).astype(np.int64)


def _bits_needed(v: int) -> int:
    return max(1, int(v).bit_length())


def _alphabet_bytes(alphabet: np.ndarray) -> bytes:
    """``m | first | last - first | layout u8 | body``; the body is whichever is smaller of a
    presence bitmap over [first, last] (layout 1) and interval lengths interleaved with the
    gaps between them, minus one each (layout 0: varint ``J`` then ``2J - 1`` varints);
    a contiguous alphabet has no body (layout 2)."""
    m = alphabet.size
    first, last = int(alphabet[0]), int(alphabet[-1])
    head = put_varints([m, first, last - first])
    span = last - first + 1
    if span == m:
        return head + b"\x02"
    brk = np.flatnonzero(np.diff(alphabet) != 1)
    if (span + 7) // 8 <= 2 * brk.size + 1:  # the interval list takes at least this much
        bitmap = np.zeros(span, np.uint8)
        bitmap[alphabet - first] = 1
        return head + b"\x01" + np.packbits(bitmap).tobytes()
    seq = np.empty(2 * brk.size + 1, np.int64)
    ends = np.append(brk, m - 1)
    starts = np.concatenate([[0], brk + 1])
    seq[0::2] = ends - starts
    seq[1::2] = alphabet[starts[1:]] - alphabet[ends[:-1]] - 2
    return head + b"\x00" + put_varints([brk.size + 1]) + put_varints(seq)


def _read_alphabet(r: Reader, max_symbol: int, max_alphabet: int, min_bits: int) -> np.ndarray:
    m = r.varint()
    first = r.varint(max_bits=62)
    width = r.varint(max_bits=62)
    layout = r.u8()
    require(1 <= m <= min(max_alphabet, MAX_ALPHABET), f"alphabet of {m} symbols")
    require(m * min_bits <= 8 * r.remaining(), "frequency table exceeds the payload")
    require(first + width <= max_symbol, "alphabet symbol out of range")
    require(m <= width + 1, "alphabet larger than its span")
    if layout == 2:
        require(m == width + 1, "contiguous alphabet of the wrong size")
        return np.arange(first, first + m, dtype=np.int64)
    if layout == 1:
        nbytes = (width + 1 + 7) // 8
        require(nbytes <= r.remaining(), "truncated alphabet bitmap")
        bits = np.unpackbits(np.frombuffer(r.take(nbytes), np.uint8))
        require(not bits[width + 1 :].any(), "alphabet bitmap: non-zero padding")
        present = np.flatnonzero(bits[: width + 1])
        require(present.size == m and present[0] == 0 and present[-1] == width, "bad bitmap")
        return present.astype(np.int64) + first
    require(layout == 0, f"unknown alphabet layout {layout}")
    n_iv = r.varint()
    require(1 <= n_iv <= m, f"{n_iv} alphabet intervals for {m} symbols")
    seq = read_varints(r, 2 * n_iv - 1)
    require(bool((seq <= np.uint64(width)).all()), "bad alphabet intervals")
    seq = seq.astype(np.int64)
    lengths = seq[0::2] + 1
    steps = lengths[:-1] + seq[1::2] + 1
    require(int(lengths.sum()) == m, "alphabet intervals do not add up")
    require(int(steps.sum()) + int(lengths[-1]) - 1 == width, "alphabet intervals overrun")
    starts = first + np.concatenate([[0], np.cumsum(steps)])
    offsets = np.arange(m) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def estimate_table_bits(counts: np.ndarray, alphabet: np.ndarray | None = None) -> float:
    """Cheap estimate of the bits a (blocked) stream costs: table side info + coded symbols.

    ``counts`` is a (rows, m) matrix: row ``b`` holds block ``b``'s count of each symbol of
    a shared alphabet of ``m`` symbols (absent columns allowed). Side info is the code bits
    (``rows * m * w`` at ``k=2``) plus the alphabet (a few bytes; more for a scattered
    ``alphabet`` when given); the symbols cost their empirical entropy per row
    (``sum c * log2(N_row / c)``). Rounding counts to codes (< 0.01 bits a symbol at ``k=2``)
    and wider bins (:meth:`FreqTable.fit` may pick them when they are cheaper) are ignored.
    """
    counts = np.asarray(counts)
    if counts.ndim == 1:
        counts = counts[None, :]
    if counts.size == 0:
        return 8.0
    if alphabet is None:
        alphabet = np.arange(counts.shape[1])
    alphabet = np.asarray(alphabet, np.int64)
    kern = _compiled()
    if kern is not None and counts.ndim == 2 and counts.dtype.kind in "iu" and alphabet.size:
        counts = np.ascontiguousarray(counts, np.int64)
        lg = _log2_table(int(counts.sum()) + 1) if int(counts.min()) >= 0 else None
        if lg is not None:
            return kern.table_cost(np.ascontiguousarray(alphabet), counts, 0, lg)
    return _table_cost(alphabet, counts, 0)


def _binned(alphabet: np.ndarray, counts: np.ndarray, shift: int):
    """Bins (alphabet >> shift, distinct) and the (rows, bins) count matrix."""
    if shift == 0:
        return alphabet, counts
    ids = alphabet >> shift
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return ids[starts], np.add.reduceat(counts, starts, axis=1)


def _table_cost(bins: np.ndarray, counts: np.ndarray, shift: int) -> float:
    """Estimated bits of a binned table and the symbols it codes (empirical bin model)."""
    rows, nb = counts.shape
    span = int(bins[-1] - bins[0]) + 1
    n_iv = 1 + int(np.count_nonzero(np.diff(bins) != 1)) if nb > 1 else 1
    alphabet_bits = 40 + (0 if span == nb else min(span, 16 * n_iv))
    top = int(counts.max())
    side = rows * nb * _bits_needed(round(2 * math.log2(max(top, 1))) + 1)
    c = counts.astype(np.float64)
    n_row = c.sum(axis=1)
    coded = float(
        (n_row * np.log2(np.maximum(n_row, 1))).sum() - (c * np.log2(np.maximum(c, 1))).sum()
    )
    return alphabet_bits + side + coded + float(n_row.sum()) * shift


@dataclass(frozen=True, eq=False)
class FreqTable:
    """Frequency rows over one shared alphabet of bins (see the module doc).

    Bin ``b`` covers the symbols ``[b << shift, (b + 1) << shift)``, all with the bin's
    frequency; ``codes[row, i]`` is the count code of ``bins[i]`` in that row (0: absent).
    Wide bins trade a little coding loss for much smaller tables on short streams.
    Build with :meth:`fit`, serialise with :meth:`to_bytes`, parse with :meth:`read`.
    """

    bins: np.ndarray
    codes: np.ndarray
    k: int
    shift: int = 0

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @cached_property
    def symbols(self) -> np.ndarray:
        """Every symbol the table can code, sorted (the alphabet that ranks index)."""
        if self.shift == 0:
            return self.bins
        width = 1 << self.shift
        return ((self.bins << self.shift)[:, None] + np.arange(width)).reshape(-1)

    @cached_property
    def _freq_matrix(self) -> np.ndarray:
        f = _code_freqs(self.codes, self.k).astype(np.float64)
        return np.repeat(f, 1 << self.shift, axis=1) if self.shift else f

    def freqs(self, row: int) -> np.ndarray:
        """Integer model frequency of each of :attr:`symbols` in ``row``, as float64."""
        return self._freq_matrix[row]

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """Index of each value of ``u`` (all inside the table's bins) in :attr:`symbols`."""
        return ranks(u, self.symbols)

    @classmethod
    def fit(
        cls, alphabet: np.ndarray, counts: np.ndarray, max_alphabet: int = MAX_ALPHABET
    ) -> FreqTable:
        """Table for a (rows, m) count matrix over a sorted ``alphabet`` of distinct symbols.

        Picks the bin width (``shift``, growing while the estimated table + coded bits
        fall, as long as bins * 2**shift <= ``max_alphabet``; pass the reader the same bound)
        and then the code precision ``k``. Every symbol with a non-zero count gets a non-zero
        frequency, so it can be encoded.
        """
        alphabet = np.asarray(alphabet, np.int64)
        counts = np.asarray(counts, np.int64)
        if counts.ndim == 1:
            counts = counts[None, :]
        limit = min(max_alphabet, MAX_ALPHABET)
        kern = _compiled()
        if kern is not None and alphabet.ndim == 1 and counts.ndim == 2 and counts.shape[0]:
            table = cls._fit_compiled(kern, alphabet, counts, limit)
            if table is not None:
                return table
        if not 0 < alphabet.size <= limit or counts.shape[1] != alphabet.size:
            raise ValueError(f"alphabet of {alphabet.size} symbols (1 to {limit} allowed)")
        if alphabet[0] < 0 or alphabet[-1] > MAX_SYMBOL or (np.diff(alphabet) <= 0).any():
            raise ValueError("alphabet must be sorted, distinct, in [0, MAX_SYMBOL]")
        shift, bins, binc = 0, alphabet, counts
        best = _table_cost(bins, binc, 0) if alphabet.size > 2 else 0.0
        # binning can save at most the codes' bits: not worth a search below 1 % of the total
        if alphabet.size > 2 and counts.size * 8 > max(256, 0.01 * best):
            for s in range(1, 8):
                b, c = _binned(alphabet, counts, s)
                if b.size << s > limit:
                    break
                cost = _table_cost(b, c, s)
                if cost >= best:
                    break
                best, shift, bins, binc = cost, s, b, c
        # Rounding log2(count) to 1/k leaves each frequency off by a factor 2**(+-1/2k):
        # about N * ln(2) / (24 k**2) bits of coding loss, against w(k) bits per code.
        top = int(binc.max())
        n_sym = float(binc.sum())
        best_cost, best_k = math.inf, _K_CHOICES[0]
        for k in _K_CHOICES:
            w = _bits_needed(int(round(k * math.log2(max(top, 1)))) + 1)
            cost = binc.size * w + n_sym * math.log(2) / (24 * k * k)
            if w <= _MAX_CODE_BITS and cost < best_cost:
                best_cost, best_k = cost, k
        return cls(bins, _count_codes(binc, best_k).astype(np.uint8), best_k, shift)

    @classmethod
    def _fit_compiled(cls, kern, alphabet: np.ndarray, counts: np.ndarray, limit: int):
        """:meth:`fit` by the kernel (same table), or None to leave the case to numpy (counts
        past the log2 table, negative counts)."""
        alphabet = np.ascontiguousarray(alphabet)
        counts = np.ascontiguousarray(counts)
        lg = _log2_table(4096)
        status, shift, k, bins, codes = kern.fit(alphabet, counts, limit, lg)
        if status == kern.NEED_TABLE:
            lg = _log2_table(shift + 1)
            if lg is None:
                return None
            status, shift, k, bins, codes = kern.fit(alphabet, counts, limit, lg)
        if status == 1:
            raise ValueError(f"alphabet of {alphabet.size} symbols (1 to {limit} allowed)")
        if status == 2:
            raise ValueError("alphabet must be sorted, distinct, in [0, MAX_SYMBOL]")
        if status != 0:
            return None
        return cls(bins, codes, k, shift)

    def to_bytes(self) -> bytes:
        """``u8 spec (k index << 6 | shift << 3 | w - 1) | bins | rows * bins codes of w bits``.

        The number of rows is not stored: the reader knows it (the caller's blocking).
        """
        kern = _compiled()
        if kern is not None and self.bins.size and self.codes.shape[1:] == self.bins.shape:
            codes = np.ascontiguousarray(self.codes, np.uint8)
            bins = np.ascontiguousarray(self.bins, np.int64)
            return kern.to_bytes(bins, codes, _K_CHOICES.index(self.k), self.shift).tobytes()
        w = _bits_needed(int(self.codes.max())) if self.codes.size else 1
        spec = _K_CHOICES.index(self.k) << 6 | self.shift << 3 | (w - 1)
        return bytes([spec]) + _alphabet_bytes(self.bins) + pack_bits(self.codes, w)

    @classmethod
    def read(
        cls, r: Reader, rows: int, max_symbol: int = MAX_SYMBOL, max_alphabet: int = MAX_ALPHABET
    ) -> FreqTable:
        """Parse a table written by :meth:`to_bytes`; every bound is checked before allocating.

        ``max_symbol`` bounds the first symbol of every bin; ``max_alphabet`` the symbols a
        row can code (bins times bin width): the decoder's models take ``rows`` times that.
        """
        kern = _compiled()
        if kern is not None:
            buf = np.frombuffer(r.buf, np.uint8)
            status, pos, k_index, shift, bins, codes = kern.read(
                buf, r.pos, r.end, rows, max_symbol, max_alphabet)
            if status == 0:
                r.pos = pos
                return cls(bins, codes, _K_CHOICES[k_index], shift)
            # malformed: the parser below raises the reference's error and message
        require(1 <= rows <= 8 * r.remaining(), f"table of {rows} rows exceeds the payload")
        spec = r.u8()
        k, shift, w = _K_CHOICES[spec >> 6], (spec >> 3) & 7, (spec & 7) + 1
        limit = min(max_alphabet, MAX_ALPHABET) >> shift
        bins = _read_alphabet(r, max_symbol >> shift, limit, min_bits=rows * w)
        nbytes = (rows * bins.size * w + 7) // 8
        require(nbytes <= r.remaining(), "truncated frequency table")
        codes = unpack_bits(r.take(nbytes), rows * bins.size, w).reshape(rows, bins.size)
        require(int(codes.max()) <= _MAX_CODE[k], "count code out of range")
        return cls(bins, codes.astype(np.uint8), k, shift)


# -- one-call form -----------------------------------------------------------------------
def _symbols_cap(n: int) -> int:
    """Model size allowed for a stream of ``n`` symbols: keeps decoding linear in ``n``."""
    return min(MAX_ALPHABET, 4 * n + (1 << 16))


def encode_symbols(u: np.ndarray) -> bytes:
    """Self-contained code of a non-negative integer array: frequency table + rANS words.

    The decoder needs the length ``n`` and a bound on the symbols from elsewhere.
    """
    u = np.asarray(u).reshape(-1)
    if u.size == 0:
        return b""
    if u.dtype.kind not in "iu":
        raise ValueError("encode_symbols takes non-negative integers")
    kern = rows_kernels()
    lg = _log2_table(u.size + 1) if kern is not None else None
    if lg is not None:  # the same bytes in one compiled pass (histogram, table, words)
        status, data = kern.encode_symbols(np.ascontiguousarray(u), _symbols_cap(u.size), lg)
        if status == 0:
            return data.tobytes()
    if int(u.min()) < 0:  # after the kernel, which refuses them itself (status 1)
        raise ValueError("encode_symbols takes non-negative integers")
    alphabet, counts = histogram(u)
    table = FreqTable.fit(alphabet, counts, _symbols_cap(u.size))
    w = AnsWriter()
    w.add(table.ranks(u), table.freqs(0))
    return table.to_bytes() + w.finish()


def decode_symbols(data: bytes | memoryview, n: int, max_symbol: int = MAX_SYMBOL) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: ``n`` int64 symbols, each <= ``max_symbol``."""
    alphabet, idx = decode_symbol_indices(data, n, max_symbol)
    return alphabet[idx]


def decode_symbol_indices(
    data: bytes | memoryview, n: int, max_symbol: int = MAX_SYMBOL
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_symbols` as (alphabet, indices): the table's symbols (int64, at most
    ``4 n + 2**16``) and ``n`` int32 indices into them. A caller mapping the symbols to values
    maps the alphabet and gathers once (4 bytes an element, not the 8 of int64 symbols)."""
    data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    require(n >= 0, "negative count")
    if n == 0:
        require(len(data) == 0, "data for an empty array")
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    kern = rows_kernels()
    if kern is not None:
        status, symbols, idx = kern.decode_symbols(
            np.frombuffer(data, np.uint8), 0, len(data), n, max_symbol, _symbols_cap(n))
        if status == 0:
            return symbols, idx
        # corrupt: the reference below raises its own error and message
    r = Reader(data)
    table = FreqTable.read(r, 1, max_symbol, _symbols_cap(n))
    reader = AnsReader(r.take(r.remaining()))
    return table.symbols, reader.read(n, table.freqs(0))

"""The native entropy coders, constriction's rANS and pcodec: the one module that imports them.

Codecs build their models and streams here and never see the native types or their errors;
every call takes or returns a whole stream, so nothing adds Python work per symbol.

* rANS (``constriction.stream.stack.AnsCoder``): several symbol streams share one stack and
  one flush. :class:`AnsWriter` collects them in decoding order and codes them in reverse;
  :class:`AnsReader` decodes them in that order. A stream's model is one of

  - an integer frequency row (:meth:`AnsWriter.add` / :meth:`AnsReader.read`): a row with a
    single symbol costs 0 bits and is not coded at all;
  - a prebuilt :func:`categorical` model (:meth:`AnsWriter.add_model` /
    :meth:`AnsReader.read_model`), always coded: for models a caller caches or shares;
  - one probability row per symbol (:meth:`AnsWriter.add_rows` / :meth:`AnsReader.read_rows`).

  Models are ``Categorical(perfect=False)``: the coder quantizes the given frequencies to its
  24-bit precision deterministically, so integer frequencies (exact in float64) give both ends
  the same model on every platform. Decoding searches the model's cumulative table, so it
  slows with the alphabet size; encoding does not.
* pcodec (:func:`pco_encode` / :func:`pco_decode`): one standalone stream of integers with its
  model inside.

What the native code raises on corrupt input (``ValueError``, a pyo3 panic) becomes
:class:`~splitcomp.codecs.errors.BitstreamError`.
"""

from __future__ import annotations

import constriction
import numpy as np
import pcodec

from .. import _slicer_jit
from ..bytes_io import Reader, put_varint
from ..errors import BitstreamError, native_error, require
from . import _ans_jit

__all__ = ["AnsReader", "AnsWriter", "LaneReader", "LaneWriter", "Model", "categorical",
           "pco_decode", "pco_encode"]

_ANS = constriction.stream.stack.AnsCoder
_CATEGORICAL = constriction.stream.model.Categorical
#: the model family behind :meth:`AnsWriter.add_rows`: parameterised per symbol
_FAMILY = _CATEGORICAL(perfect=False)
#: alphabets above this size are decoded through a slot table (the compiled coder), when
#: the stream is long enough to pay for building it (4,097 entries); else a binary search
_SLOTS_ABOVE, _SLOT_BITS, _SLOTS_FROM = 64, 12, 2048


def _compiled():
    """The compiled coder's kernels (:mod:`._ans_jit`), or None: numba absent or switched
    off (``SPLITCOMP_SLICER_JIT=0``; the switch is ``_slicer_jit.ENABLED``)."""
    if not _slicer_jit.active():
        return None
    return _ans_jit.kernels()


class Model:
    """An rANS model: a frequency row (float64), quantized as constriction's
    ``Categorical(perfect=False)`` quantizes it; each backend builds its table once."""

    __slots__ = ("_cdf", "_native", "_slots", "freqs")

    def __init__(self, freqs: np.ndarray) -> None:
        self.freqs = np.ascontiguousarray(freqs, np.float64)
        self._native = self._cdf = self._slots = None

    def native(self):
        """constriction's model."""
        if self._native is None:
            try:
                self._native = _CATEGORICAL(self.freqs, perfect=False)
            except BaseException as e:  # constriction raises ValueError or a pyo3 panic
                raise native_error(e, f"bad rANS model ({e})") from None
        return self._native

    def cdf(self, k) -> np.ndarray:
        """The compiled coder's table (padded to 17 entries for its fixed-width search)."""
        if self._cdf is None:
            cdf = np.full(max(self.freqs.size + 1, 17), 1 << 24, np.uint32)
            if self.freqs.ndim != 1 or not k.quantized_cdf(self.freqs, cdf):
                raise BitstreamError("bad rANS model")
            self._cdf = cdf
        return self._cdf

    def slots(self, k) -> np.ndarray:
        if self._slots is None:
            self._slots = k.slot_table(self.cdf(k), self.freqs.size, _SLOT_BITS)
        return self._slots


def categorical(freqs: np.ndarray) -> Model:
    """The rANS model of a frequency row (float64, non-negative, some non-zero); a symbol of
    frequency 0 gets the smallest probability the coder has, so it can still be decoded."""
    model = Model(freqs)
    k = _compiled()
    if k is None:
        model.native()
    else:
        model.cdf(k)
    return model


class AnsWriter:
    """Collects symbol streams, each with its model, and codes them in one rANS stack."""

    def __init__(self) -> None:
        self._parts: list[tuple] = []  # (symbols, model) or (symbols, None, probability rows)

    def add(self, symbols: np.ndarray, freqs: np.ndarray) -> None:
        """Queue ``symbols`` (indices into ``freqs``, each with a non-zero frequency); nothing
        is coded when there are none or ``freqs`` has a single non-zero entry."""
        if symbols.size and np.count_nonzero(freqs) > 1:
            self._parts.append((np.ascontiguousarray(symbols, np.int32), categorical(freqs)))

    def add_model(self, symbols: np.ndarray, model: Model) -> None:
        """Queue int32 ``symbols`` under ``model`` (from :func:`categorical`)."""
        self._parts.append((symbols, model))

    def add_rows(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """Queue int32 ``symbols``, symbol ``i`` under the probability row ``probs[i]``."""
        self._parts.append((symbols, None, probs))

    def finish(self) -> bytes:
        """The rANS words (uint32 little-endian); a reader decodes the streams in order."""
        k = _compiled()
        if k is None:
            coder = _ANS()
            for symbols, model, *rows in reversed(self._parts):
                if model is None:
                    coder.encode_reverse(symbols, _FAMILY, rows[0])
                else:
                    coder.encode_reverse(symbols, model.native())
            return coder.get_compressed().astype("<u4").tobytes()
        # a symbol costs at most 24 bits: the words this stack can take
        total = sum(len(part[0]) for part in self._parts)
        buf = np.empty(total * 24 // 32 + 3, np.uint32)
        state = np.zeros(2, np.uint64)
        run: list[tuple] = []  # model parts in a row: coded in one call
        for part in reversed(self._parts):
            if part[1] is not None:
                run.append(part)
                continue
            self._write_run(k, buf, state, run)
            run = []
            sym = np.ascontiguousarray(part[0], np.int32)
            if not k.write_rows(buf, state, np.ascontiguousarray(part[2], np.float64), sym):
                raise ValueError("rANS: a symbol outside its model")
        self._write_run(k, buf, state, run)
        n = k.finish(buf, state)
        return buf[:n].astype("<u4").tobytes()

    @staticmethod
    def _write_run(k, buf: np.ndarray, state: np.ndarray, run: list[tuple]) -> None:
        """Code ``run`` (model parts, last-decoded first) in one kernel call."""
        if not run:
            return
        cdfs = [model.cdf(k) for _, model in run]
        table = np.full((len(run), max(c.size for c in cdfs)), 1 << 24, np.uint32)
        for i, c in enumerate(cdfs):
            table[i, : c.size] = c
        sizes = np.array([m.freqs.size for _, m in run], np.int64)
        bounds = np.zeros(len(run) + 1, np.int64)
        np.cumsum([len(sym) for sym, _ in run], out=bounds[1:])
        symbols = np.concatenate([np.asarray(sym, np.int32).reshape(-1) for sym, _ in run])
        if not k.write_parts(buf, state, table, sizes, bounds, symbols):
            raise ValueError("rANS: a symbol outside its model")


class AnsReader:
    """Decodes the streams of an :class:`AnsWriter`, in the order they were added, with the
    same models. ``name`` prefixes error messages (the codec's name)."""

    __slots__ = ("_coder", "_k", "_name", "_state", "_words")

    def __init__(self, data: bytes | memoryview, name: str = "") -> None:
        self._name = name
        if len(data) % 4:
            raise BitstreamError(f"{self._prefix()}{len(data)} bytes of rANS data: not whole words")
        words = np.frombuffer(data, "<u4").astype(np.uint32)
        self._k = _compiled()
        if self._k is not None:
            self._words, self._state = words, np.zeros(2, np.uint64)
            if not self._k.reader_init(words, self._state):
                raise BitstreamError(f"{self._prefix()}corrupt rANS data (a zero last word)")
            return
        try:
            self._coder = _ANS(words)
        except BaseException as e:  # constriction raises ValueError or a pyo3 panic
            raise self._error(e) from None

    def _prefix(self) -> str:
        return f"{self._name}: " if self._name else ""

    def _error(self, e: BaseException) -> BitstreamError:
        return native_error(e, f"{self._prefix()}corrupt rANS data ({e})")

    def read(self, n: int, freqs: np.ndarray) -> np.ndarray:
        """``n`` indices into ``freqs`` (int32) queued by :meth:`AnsWriter.add`."""
        nz = np.flatnonzero(freqs)
        if n and not nz.size:
            raise BitstreamError(f"{self._prefix()}empty frequency row")
        if n == 0:
            return np.zeros(0, np.int32)
        if nz.size == 1:
            return np.full(n, nz[0], np.int32)
        # a corrupt stream may decode a symbol of frequency 0: still a valid index
        return np.asarray(self.read_model(n, categorical(freqs)), np.int32)

    def read_model(self, n: int, model: Model) -> np.ndarray:
        """``n`` symbols (int32) queued by :meth:`AnsWriter.add_model`."""
        k = self._k
        if k is None:
            try:
                return self._coder.decode(model.native(), n)
            except BaseException as e:
                raise self._error(e) from None
        out = np.empty(n, np.int32)
        n_sym = model.freqs.size
        if n_sym > _SLOTS_ABOVE and n >= _SLOTS_FROM:
            k.read_slots(self._words, self._state, model.cdf(k), model.slots(k), _SLOT_BITS,
                         n, out, 0)
        else:
            k.read(self._words, self._state, model.cdf(k), n_sym, n, out, 0)
        return out

    def read_rows(self, probs: np.ndarray) -> np.ndarray:
        """``len(probs)`` symbols (int32) queued by :meth:`AnsWriter.add_rows`."""
        k = self._k
        if k is None:
            try:
                return self._coder.decode(_FAMILY, probs)
            except BaseException as e:
                raise self._error(e) from None
        out = np.empty(len(probs), np.int32)
        if not k.read_rows(self._words, self._state, np.ascontiguousarray(probs, np.float64),
                           out):
            raise BitstreamError(f"{self._prefix()}bad rANS model row")
        return out

    def read_rows_trellis(self, probs0: np.ndarray, probs1: np.ndarray, kt: int) -> np.ndarray:
        """``len(probs0)`` symbols (int32) of a trellis row (:mod:`.._tokenwise_trellis`):
        symbol ``i`` under ``probs0[i]`` in states 0 and 1, ``probs1[i]`` in 2 and 3, from
        state 0, the state moved by the symbol's parity (that of ``s - kt`` for ``s <= 2 kt``,
        0 for ``2 kt + 1``, 1 above)."""
        k = self._k
        out = np.empty(len(probs0), np.int32)
        if k is not None:
            if not k.read_rows_trellis(self._words, self._state,
                                       np.ascontiguousarray(probs0, np.float64),
                                       np.ascontiguousarray(probs1, np.float64), kt, out):
                raise BitstreamError(f"{self._prefix()}bad rANS model row")
            return out
        state = 0
        for i in range(len(probs0)):
            row = (probs0 if state < 2 else probs1)[i]
            try:
                out[i] = s = int(self._coder.decode(_FAMILY, row[None])[0])
            except BaseException as e:
                raise self._error(e) from None
            par = ((s - kt) if s <= 2 * kt else s - 2 * kt - 1) & 1
            state = (((state & 1) ^ par) << 1) | (state >> 1)
        return out

    def is_empty(self) -> bool:
        """True when every word has been consumed (a well-formed stream ends exactly so)."""
        if self._k is not None:
            return bool(self._state[0] == 0)
        return self._coder.is_empty()


class LaneWriter:
    """Two :class:`AnsWriter` lanes: each stream's even positions on lane 0, odd ones on lane
    1; :meth:`finish` gives the varint count of lane 0's words, its words, then lane 1's."""

    def __init__(self) -> None:
        self._lanes = (AnsWriter(), AnsWriter())

    def add_model(self, symbols: np.ndarray, model: Model) -> None:
        """Queue int32 ``symbols`` under ``model`` (from :func:`categorical`)."""
        for lane, w in enumerate(self._lanes):
            w.add_model(np.ascontiguousarray(symbols[lane::2]), model)

    def finish(self) -> bytes:
        first, second = (w.finish() for w in self._lanes)
        head = bytearray()
        put_varint(head, len(first) // 4)
        return bytes(head) + first + second


class LaneReader:
    """Decodes a :class:`LaneWriter`'s streams, in order, with the same models."""

    __slots__ = ("_lanes",)

    def __init__(self, data: bytes | memoryview, name: str = "") -> None:
        r = Reader(data)
        n0 = r.varint()
        require(4 * n0 <= r.remaining(), f"{name}: truncated rANS lanes")
        self._lanes = (AnsReader(r.take(4 * n0), name), AnsReader(r.take(r.remaining()), name))

    def read_model(self, n: int, model: Model) -> np.ndarray:
        """``n`` symbols (int32) queued by :meth:`LaneWriter.add_model`."""
        out = np.empty(n, np.int32)
        out[0::2] = self._lanes[0].read_model((n + 1) // 2, model)
        out[1::2] = self._lanes[1].read_model(n // 2, model)
        return out

    def is_empty(self) -> bool:
        return self._lanes[0].is_empty() and self._lanes[1].is_empty()


# -- pcodec ------------------------------------------------------------------------------
_PCO_CONFIG = pcodec.ChunkConfig(compression_level=8)


def pco_encode(u: np.ndarray) -> bytes:
    """A pcodec standalone stream of non-negative integers < 2**32 (empty for no values).

    pcodec bins values and tANS-codes the bins, with its own model inside the stream (no
    table needed); its per-stream overhead makes it a poor fit for streams of a few hundred
    symbols.
    """
    u = np.asarray(u).reshape(-1)
    if u.size == 0:
        return b""
    if int(u.min()) < 0 or int(u.max()) >= 1 << 32:
        raise ValueError("pco_encode takes integers in [0, 2**32)")
    return pcodec.standalone.simple_compress(np.ascontiguousarray(u, np.uint32), _PCO_CONFIG)


def pco_decode(data: bytes | memoryview, n: int, max_symbol: int = (1 << 32) - 1) -> np.ndarray:
    """Inverse of :func:`pco_encode`: exactly ``n`` uint32 values, each <= ``max_symbol``."""
    require(n >= 0, "negative count")
    if n == 0:
        require(len(data) == 0, "pco data for an empty array")
        return np.zeros(0, np.uint32)
    out = np.empty(n, np.uint32)
    try:
        progress = pcodec.standalone.simple_decompress_into(bytes(data), out)
    except BaseException as e:  # pcodec raises RuntimeError, or a pyo3 panic
        raise native_error(e, f"pco: {e}") from None
    require(progress.n_processed == n and progress.finished, "pco: wrong number of values")
    require(int(out.max()) <= max_symbol, "pco: value out of range")
    return out

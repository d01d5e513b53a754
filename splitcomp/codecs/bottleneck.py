"""Entropy coding of a learned bottleneck's latent, with the tables its training produced.

A trained encoder on the edge turns the input into a float tensor ``y`` (B, C, ...); the
codec quantizes and codes it, and a trained decoder on the server consumes ``y_hat``. The
entropy model is learned with the encoder (a factorized prior per channel,
``splitcomp.train.entropy_model.EntropyBottleneck``); its integer frequency rows, medians and
offsets are the codec's *session context* (:class:`BottleneckTables`, in
:mod:`._bottleneck_tables`): sent once, held at both ends and named by each stream with a
20-bit id (the ``tables`` parameter), so a stream carries its coded symbols and nothing else.

Tables mode (``tables`` = an id): channel axis 1, channel count that of the tables. Per
channel ``c``, ``symbol = round(y - m_c)`` (float32, as the model's ``quantize``); its index
``symbol - o_c`` in the channel's row, or the escape (index ``len(row_c)``, frequency 1) when
that falls outside the row. All channels' symbols go into one rANS stack (channel 0 first,
each channel's elements in (B, ...) order), each channel under its row's model; the escaped
symbols follow as zigzag varints, so nothing is clipped. Decoded: ``symbol + m_c`` (float32).
The error is at most 1/2 (plus float32 rounding of huge values).

Self-contained mode (``tables=0``, the default; any tensor): ``rint(x)`` (step 1), zigzagged,
coded by :func:`.entropy.encode_symbols` with a frequency table in the stream.

Payload and tables layout: ``docs/bitstream.md``, section "bottleneck".
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ._bottleneck_tables import (
    Q_MAX,
    TABLES,
    BottleneckTables,
    find_tables,
    get_tables,
    load_tables_file,
    local_tables,
    register_tables,
    registered_tables,
    save_tables,
    tables_filename,
    tables_id,
)
from .base import Param, SessionContextCodec
from .bytes_io import Reader, put_varint
from .entropy import (
    AnsReader,
    AnsWriter,
    decode_symbol_indices,
    encode_symbols,
    estimate_table_bits,
    histogram,
    put_varints,
    read_varints,
)
from .errors import DecodeLimits, require
from .registry import register_codec

__all__ = [
    "TABLES",
    "BottleneckCodec",
    "BottleneckTables",
    "find_tables",
    "get_tables",
    "load_tables_file",
    "local_tables",
    "register_tables",
    "registered_tables",
    "save_tables",
    "tables_filename",
    "tables_id",
]


def _zigzag(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.int64)
    return ((q << 1) ^ (q >> 63)).astype(np.uint64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    u = u.astype(np.int64)
    return (u >> 1) ^ -(u & 1)


def _rounded(x: np.ndarray) -> np.ndarray:
    """The self-contained mode's symbols: ``rint(x)`` zigzagged, flat."""
    q = np.rint(x)
    if not np.all(np.abs(q) <= Q_MAX):
        raise ValueError("bottleneck: values too large to code")
    return _zigzag(q).reshape(-1)


@register_codec("bottleneck", codec_id=10)
class BottleneckCodec(SessionContextCodec):
    """A learned bottleneck's latent under its trained per-channel tables (a session
    context); without tables, integer rounding with a table in the stream."""

    params_spec = (
        Param("tables", int, 0, low=0, high=(1 << 20) - 1,
              doc="id of the trained tables (0: self-contained, a table in every stream)"),
    )
    context_param = "tables"
    context_registry = TABLES

    context: BottleneckTables | None  # None: self-contained mode

    @classmethod
    def with_tables(cls, tables: BottleneckTables | bytes) -> BottleneckCodec:
        """Register ``tables`` here and build the codec that names them."""
        return cls.with_context(tables)

    # -- tables mode -------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> bool:
        t = self.context
        assert t is not None
        return len(shape) >= 2 and shape[1] == t.channels

    def _channels(self, x: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per channel of ``x`` (B, C, ...): its symbols (int32, (b, then raster) order: row
        indices or the escape) and its escaped values (int64)."""
        t = self.context
        assert t is not None
        x3 = x.reshape(x.shape[0], t.channels, -1)
        for j in range(t.channels):
            d = np.rint(x3[:, j] - t.medians[j])  # float32, as the model's quantize
            if not np.all(np.abs(d) <= Q_MAX):
                raise ValueError("bottleneck: values too large (or not finite) to code")
            q = d.astype(np.int64).reshape(-1)
            idx = q - t.offsets[j]
            esc = (idx < 0) | (idx >= t.lengths[j])
            yield np.where(esc, t.lengths[j], idx).astype(np.int32), q[esc]

    def _encode_tables(self, x: np.ndarray) -> bytes:
        t = self.context
        assert t is not None
        writer = AnsWriter()
        escaped = []
        for model, (sym, esc) in zip(t.models, self._channels(x), strict=True):
            writer.add_model(sym, model)
            escaped.append(esc)
        tail = put_varints(_zigzag(np.concatenate(escaped)))
        out = bytearray()
        put_varint(out, len(tail))
        return bytes(out) + writer.finish() + tail

    def _decode_tables(self, payload: memoryview, shape: tuple[int, ...], n: int) -> np.ndarray:
        t = self.context
        assert t is not None
        c, b = t.channels, shape[0]
        r = Reader(payload)
        n_tail = r.varint()
        require(n_tail <= r.remaining(), "bottleneck: escape bytes exceed the payload")
        end = len(payload) - n_tail
        coder = AnsReader(payload[r.pos : end], "bottleneck")
        out = np.empty((b, c, n // (b * c)), np.float32)
        escaped = []  # (channel, flat positions in it)
        for j, model in enumerate(t.models):
            sym = coder.read_model(n // c, model)
            at = np.flatnonzero(sym == t.lengths[j])
            if at.size:
                escaped.append((j, at))
            q = sym.astype(np.int64) + t.offsets[j]
            out[:, j] = (q.astype(np.float32) + t.medians[j]).reshape(b, -1)
        require(coder.is_empty(), "bottleneck: trailing rANS data")
        n_esc = sum(at.size for _, at in escaped)
        require((n_esc == 0) == (n_tail == 0), "bottleneck: escape bytes mismatch")
        if n_esc:
            rd = Reader(payload, end)
            values = _unzigzag(read_varints(rd, n_esc))
            rd.expect_end()
            i = 0
            for j, at in escaped:
                v = values[i : i + at.size]
                i += at.size
                lo, hi = t.offsets[j], t.offsets[j] + t.lengths[j]
                require(bool(np.all((np.abs(v) <= Q_MAX) & ((v < lo) | (v >= hi)))),
                        "bottleneck: bad escaped value")
                out[at // out.shape[2], j, at % out.shape[2]] = (
                    v.astype(np.float32) + t.medians[j])
        return out.reshape(shape)

    # -- Codec -------------------------------------------------------------------------------
    def encode_array(self, x: np.ndarray) -> bytes:
        if not np.all(np.isfinite(x)):
            raise ValueError("bottleneck: input contains NaN or inf")
        if self.context is not None:
            if not self._check_shape(x.shape):
                raise ValueError(f"bottleneck: shape {x.shape}: axis 1 must hold the "
                                 f"{self.context.channels} channels of the tables")
            return self._encode_tables(x) if x.size else b""
        return encode_symbols(_rounded(x)) if x.size else b""

    def decode_array(self, payload, shape, limits: DecodeLimits) -> np.ndarray:
        if self.context is not None:
            require(self._check_shape(shape), f"bottleneck: shape {shape}, the tables have "
                                              f"{self.context.channels} channels")
        n = math.prod(shape)
        if n == 0:
            require(len(payload) == 0, "bottleneck: payload for an empty tensor")
            return np.zeros(shape, np.float32)
        if self.context is not None:
            return self._decode_tables(payload, shape, n)
        alphabet, idx = decode_symbol_indices(payload, n, max_symbol=2 * Q_MAX)
        return _unzigzag(alphabet).astype(np.float32)[idx].reshape(shape)

    def error_bound(self, x: np.ndarray) -> float:
        if x.size == 0:
            return 0.0
        if self.context is None:
            return 0.5
        top = float(np.abs(x).max()) + float(np.abs(self.context.medians).max()) + 1.0
        return 0.5 + top * 2.0**-22

    def estimate_bits(self, x: np.ndarray) -> float:
        """Ideal size in bits of ``x``'s payload: ``sum -log2(freq / total)`` of its symbols
        (escapes included) under the tables, plus the escaped values' varints (self-contained
        mode: :func:`.entropy.estimate_table_bits`, table included)."""
        x = np.asarray(x, np.float32)
        if x.size == 0:
            return 0.0
        if self.context is None:
            if not np.all(np.isfinite(x)):
                raise ValueError("bottleneck: input contains NaN or inf")
            alphabet, counts = histogram(_rounded(x))
            return estimate_table_bits(counts, alphabet)
        if not self._check_shape(x.shape):
            raise ValueError(f"bottleneck: shape {x.shape} does not fit the tables")
        bits, escaped = 0.0, []
        for cost, (sym, esc) in zip(self.context.costs, self._channels(x), strict=True):
            bits += float(cost[sym].sum())
            escaped.append(esc)
        return bits + 8.0 * len(put_varints(_zigzag(np.concatenate(escaped))))

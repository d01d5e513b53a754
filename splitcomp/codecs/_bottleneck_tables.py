"""Tables of the ``bottleneck`` codec: a trained entropy model's frequency rows, sent once.

A factorized entropy model of a learned bottleneck (``EntropyBottleneck.frequency_tables()``
in ``splitcomp.train.entropy_model``) gives, per latent channel ``c``, a median ``m_c`` (the
quantization offset), the smallest symbol ``o_c`` its table covers and an integer frequency
row ``f_c`` over the symbols ``o_c .. o_c + len(f_c) - 1`` (each frequency >= 1, the row
summing to below ``2**16``). The codec gives every row one more symbol, the escape, of
frequency 1 (:attr:`BottleneckTables.models`).

:class:`BottleneckTables` is the codec's session context and its own self-describing,
CRC-protected bitstream (:meth:`BottleneckTables.to_bytes`; layout: ``docs/bitstream.md``,
section "bottleneck", "Tables"); streams name it by a 20-bit id, the first 20 bits of the
SHA-256 of those bytes. A stream decodes with the tables in scope under its id
(:func:`splitcomp.codecs.contexts.context_scope`: a server's per-session contexts), else those
registered in this process (:func:`register_tables`, :func:`load_tables_file`); a stream
naming neither is refused with :class:`~splitcomp.codecs.errors.BitstreamError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .bytes_io import put_varint, unzigzag, zigzag
from .contexts import ContextRegistry, seal, unseal
from .entropy import Model, categorical, put_varints, read_varints
from .errors import BitstreamError, require

MAGIC = b"SBNT"
VERSION = 1
#: largest magnitude of a symbol, an offset or a median the codec writes or accepts
Q_MAX = 1 << 38
#: most channels a table set may have
MAX_CHANNELS = 1 << 16
#: largest sum of a row's frequencies (the escape's frequency 1 brings it to 2**16)
MAX_ROW_TOTAL = (1 << 16) - 1


def _check(medians: np.ndarray, offsets: np.ndarray, rows: tuple[np.ndarray, ...]) -> None:
    c = medians.size
    if medians.ndim != 1 or not 1 <= c <= MAX_CHANNELS:
        raise ValueError(f"bottleneck tables: medians must be (C,), 1 <= C <= {MAX_CHANNELS}")
    if offsets.shape != (c,) or len(rows) != c:
        raise ValueError(f"bottleneck tables: {c} medians, {offsets.size} offsets, "
                         f"{len(rows)} rows")
    if not np.all(np.isfinite(medians)) or not np.all(np.abs(medians) <= Q_MAX):
        raise ValueError("bottleneck tables: medians must be finite and at most 2**38")
    for j, row in enumerate(rows):
        if row.ndim != 1 or not 1 <= row.size <= MAX_ROW_TOTAL or row.dtype.kind not in "iu":
            raise ValueError(f"bottleneck tables: row {j} must be 1-D integers, 1 .. 65535 long")
        if int(row.min()) < 1 or int(row.max()) > MAX_ROW_TOTAL or int(row.sum()) > MAX_ROW_TOTAL:
            raise ValueError(f"bottleneck tables: row {j}: frequencies >= 1 summing to < 2**16")
        if not -Q_MAX <= int(offsets[j]) <= Q_MAX - row.size + 1:
            raise ValueError(f"bottleneck tables: offset {int(offsets[j])} of row {j} too large")


@dataclass(frozen=True, eq=False)
class BottleneckTables:
    """Per-channel medians (C,) float32, offsets (C,) int64 and frequency rows (C int64
    arrays); see the module docstring. Build with :meth:`from_model_tables` or
    :meth:`from_bytes`; anything out of bounds raises ValueError."""

    medians: np.ndarray
    offsets: np.ndarray
    rows: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        medians = np.asarray(self.medians, np.float32).copy()
        offsets = np.asarray(self.offsets)
        if offsets.dtype.kind not in "iu":
            raise ValueError("bottleneck tables: offsets must be integers")
        rows = tuple(np.asarray(r) for r in self.rows)
        _check(medians, offsets, rows)
        object.__setattr__(self, "medians", medians)
        object.__setattr__(self, "offsets", offsets.astype(np.int64))
        object.__setattr__(self, "rows", tuple(r.astype(np.int64) for r in rows))

    @classmethod
    def from_model_tables(cls, medians: np.ndarray, offsets: np.ndarray,
                          rows: Sequence[np.ndarray]) -> BottleneckTables:
        """Tables from what ``EntropyBottleneck.frequency_tables()`` returns."""
        return cls(medians, offsets, tuple(rows))

    @property
    def channels(self) -> int:
        return int(self.medians.size)

    @cached_property
    def lengths(self) -> np.ndarray:
        """(C,) int64: each row's length, which is also its escape symbol."""
        return np.array([r.size for r in self.rows], np.int64)

    @cached_property
    def models(self) -> list[Model]:
        """Each channel's rANS model: its row, then the escape (frequency 1)."""
        return [categorical(np.append(r, 1).astype(np.float64)) for r in self.rows]

    @cached_property
    def costs(self) -> list[np.ndarray]:
        """Each channel's ideal code length in bits of each symbol (escape last)."""
        out = []
        for r in self.rows:
            f = np.append(r, 1).astype(np.float64)
            out.append(np.log2(f.sum()) - np.log2(f))
        return out

    # -- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:
        out = bytearray(MAGIC)
        out.append(VERSION)
        put_varint(out, self.channels)
        for off, row in zip(self.offsets.tolist(), self.rows, strict=True):
            put_varint(out, zigzag(off))
            put_varint(out, row.size)
            out += put_varints(row)
        out += self.medians.astype("<f4").tobytes()
        return seal(out)

    @cached_property
    def table_id(self) -> int:
        """20-bit id (never 0) of these tables: what a stream's ``tables`` parameter says."""
        return tables_id(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> BottleneckTables:
        """Parse and validate table bytes (a peer's: untrusted); anything malformed, out of
        bounds or not written as :meth:`to_bytes` writes it raises BitstreamError."""
        view, r = unseal(data, MAGIC, VERSION, len(MAGIC) + 13, "bottleneck tables")
        c = r.varint()
        # each channel takes at least 3 bytes of row (offset, length, a frequency) + a median
        require(1 <= c <= MAX_CHANNELS and 7 * c <= r.remaining(),
                "bottleneck tables: bad channel count")
        offsets = np.zeros(c, np.int64)
        rows = []
        for j in range(c):
            off = unzigzag(r.varint())
            n = r.varint()
            require(abs(off) <= Q_MAX and 1 <= n <= MAX_ROW_TOTAL and off + n - 1 <= Q_MAX,
                    f"bottleneck tables: bad row {j}")
            row = read_varints(r, n)
            require(int(row.min()) >= 1 and int(row.max()) <= MAX_ROW_TOTAL
                    and int(row.sum()) <= MAX_ROW_TOTAL,
                    f"bottleneck tables: bad frequencies in row {j}")
            offsets[j] = off
            rows.append(row.astype(np.int64))
        medians = np.frombuffer(r.take(4 * c), "<f4").astype(np.float32)
        r.expect_end()
        require(bool(np.all(np.isfinite(medians) & (np.abs(medians) <= Q_MAX))),
                "bottleneck tables: bad medians")
        try:
            tables = cls(medians, offsets, tuple(rows))
        except ValueError as e:  # every bound is checked above: a safety net
            raise BitstreamError(str(e)) from None
        require(tables.to_bytes() == bytes(view), "bottleneck tables: non-canonical encoding")
        return tables


#: the tables this process holds (64 at most, least recently used forgotten first: a server
#: must not grow without limit; files up to 64 MiB), under 20-bit ids: the first 20 bits of
#: their SHA-256
TABLES: ContextRegistry[BottleneckTables] = ContextRegistry(
    "bottleneck tables", BottleneckTables, id_bits=20, max_items=64, file_ext="sbnt")

# the functions of old are the registry's methods (see ContextRegistry)
tables_id, tables_filename, save_tables = TABLES.id_of, TABLES.filename, TABLES.save
register_tables, load_tables_file = TABLES.register, TABLES.load_file
registered_tables, local_tables = TABLES.get, TABLES.by_digest
find_tables, get_tables = TABLES.find, TABLES.require

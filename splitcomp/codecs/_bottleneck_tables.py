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

import hashlib
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ._tokenwise_context import context_id as tables_id
from .bytes_io import Reader, put_varint, unzigzag, zigzag
from .contexts import scoped_context
from .entropy import Model, categorical, put_varints, read_varints
from .errors import BitstreamError, require

__all__ = [
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
        out += struct.pack("<I", zlib.crc32(out))
        return bytes(out)

    @cached_property
    def table_id(self) -> int:
        """20-bit id (never 0) of these tables: what a stream's ``tables`` parameter says."""
        return tables_id(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> BottleneckTables:
        """Parse and validate table bytes (a peer's: untrusted); anything malformed, out of
        bounds or not written as :meth:`to_bytes` writes it raises BitstreamError."""
        view = memoryview(data).cast("B")
        require(len(view) >= len(MAGIC) + 13, "bottleneck tables: truncated")
        require(bytes(view[:4]) == MAGIC, "bottleneck tables: bad magic")
        (crc,) = struct.unpack("<I", view[-4:])
        require(zlib.crc32(view[:-4]) == crc, "bottleneck tables: CRC mismatch")
        r = Reader(view, 4, len(view) - 4)
        require(r.u8() == VERSION, "bottleneck tables: unsupported version")
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


#: registered tables, least recently used first (at most :data:`MAX_TABLES`)
_STORE: OrderedDict[int, BottleneckTables] = OrderedDict()
_LOCK = threading.Lock()
#: table sets the process-wide registry keeps; registering one more forgets the least
#: recently used (a server must not grow without limit)
MAX_TABLES = 64
#: largest tables file :func:`load_tables_file` reads
MAX_TABLES_FILE = 1 << 26


def tables_filename(tid: int) -> str:
    return f"bottleneck-{tid:05x}.sbnt"


def save_tables(tables: BottleneckTables, directory: str | Path) -> Path:
    """Write ``tables`` as ``bottleneck-<id hex>.sbnt`` in ``directory``."""
    data = tables.to_bytes()
    path = Path(directory) / tables_filename(tables_id(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def register_tables(tables: BottleneckTables | bytes | bytearray | memoryview) -> int:
    """Make tables known to this process (both ends of a session do it); returns their id.

    Raises BitstreamError for malformed bytes, ValueError if other tables have the id."""
    if not isinstance(tables, BottleneckTables):
        tables = BottleneckTables.from_bytes(tables)
    data = tables.to_bytes()
    tid = tables_id(data)
    with _LOCK:
        old = _STORE.get(tid)
        if old is not None and old.to_bytes() != data:
            raise ValueError(f"bottleneck tables id {tid} already holds other tables")
        _STORE[tid] = old or tables
        _STORE.move_to_end(tid)
        while len(_STORE) > max(MAX_TABLES, 1):
            _STORE.popitem(last=False)
    return tid


def load_tables_file(path: str | Path) -> int:
    """Read a tables file (as :func:`save_tables` writes it; any name), register it and
    return its id. OSError if unreadable, BitstreamError if not valid tables (or over
    :data:`MAX_TABLES_FILE` bytes), ValueError if other tables are registered under its id."""
    with open(path, "rb") as f:
        data = f.read(MAX_TABLES_FILE + 1)
    require(len(data) <= MAX_TABLES_FILE, f"bottleneck tables file {path}: too large")
    return register_tables(data)


def registered_tables(tid: int) -> BottleneckTables | None:
    """The tables registered here under ``tid`` (their LRU place refreshed), else None."""
    with _LOCK:
        hit = _STORE.get(tid)
        if hit is not None:
            _STORE.move_to_end(tid)
        return hit


def local_tables(digest: bytes) -> BottleneckTables | None:
    """The registered tables whose bytes have the SHA-256 ``digest``, else None."""
    hit = registered_tables((int.from_bytes(digest[:3], "little") & 0xFFFFF) or 1)
    if hit is None or hashlib.sha256(hit.to_bytes()).digest() != bytes(digest):
        return None  # other tables under that 20-bit id: not the ones asked for
    return hit


def find_tables(tid: int) -> BottleneckTables | None:
    """The tables ``tid`` in scope, else those registered here, else None."""
    hit = scoped_context(tid)
    if isinstance(hit, BottleneckTables):
        return hit
    return registered_tables(tid)


def get_tables(tid: int) -> BottleneckTables:
    """The tables ``tid`` in scope or registered; BitstreamError if there are none."""
    hit = find_tables(tid)
    if hit is None:
        raise BitstreamError(f"bottleneck tables {tid} are not registered here")
    return hit

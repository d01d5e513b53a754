"""Bit and varint packing of integer arrays, vectorised (no per-element Python).

* :func:`put_varints` / :func:`read_varints`: unsigned LEB128, concatenated;
* :func:`pack_bits` / :func:`unpack_bits`: fixed-width fields, MSB first, zero-padded to a byte
  (the reader refuses non-zero padding);
* :func:`runs` / :func:`mask_from_runs`: the run-length form of a boolean mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..bytes_io import Reader, put_varint
from ..errors import require

__all__ = ["mask_from_runs", "pack_bits", "put_varints", "read_varints", "runs", "unpack_bits"]

_VARINT_LIMITS = np.array([1 << (7 * j) for j in range(1, 10)], np.uint64)


def put_varints(values: np.ndarray | Sequence[int]) -> bytes:
    """LEB128 varints of non-negative integers < 2**63, concatenated (vectorised)."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size <= 16:  # numpy's per-call cost dominates short lists
        out = bytearray()
        for value in v.tolist():
            put_varint(out, value)
        return bytes(out)
    nbytes = np.searchsorted(_VARINT_LIMITS, v, side="right") + 1
    width = int(nbytes.max())
    if width == 1:
        return v.astype(np.uint8).tobytes()
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    col = np.arange(width)
    groups[col < (nbytes - 1)[:, None]] |= 0x80
    return groups[col < nbytes[:, None]].tobytes()


def read_varints(r: Reader, count: int) -> np.ndarray:
    """Read ``count`` LEB128 varints (each at most 9 bytes) from ``r`` as uint64 (vectorised)."""
    require(0 <= count <= r.remaining(), f"truncated: {count} varints in {r.remaining()} bytes")
    if count == 0:
        return np.zeros(0, np.uint64)
    window = np.frombuffer(r.buf[r.pos : r.end], np.uint8)[: 9 * count]
    ends = np.flatnonzero(window < 0x80)[:count]
    require(ends.size == count, "truncated varints")
    total = int(ends[-1]) + 1
    starts = np.empty(count, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    require(bool(lengths.max() <= 9), "varint too long")
    offsets = np.arange(total) - np.repeat(starts, lengths)
    parts = (window[:total] & 0x7F).astype(np.uint64) << (offsets.astype(np.uint64) * np.uint64(7))
    r.pos += total
    return np.add.reduceat(parts, starts)


_SHIFTS8 = {w: (np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(w)) for w in range(1, 9)}


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers < 2**width into ``ceil(len * width / 8)`` bytes, MSB first."""
    v = np.asarray(values).reshape(-1)
    if width == 0 or v.size == 0:
        return b""
    if width == 8:
        return v.astype(np.uint8).tobytes()
    nbytes = (v.size * width + 7) // 8
    if width < 8:  # 8 values -> `width` bytes through one big-endian uint64 per group
        pad = (-v.size) % 8
        groups = np.concatenate([v.astype(np.uint64), np.zeros(pad, np.uint64)]).reshape(-1, 8)
        word = np.bitwise_or.reduce(groups << _SHIFTS8[width], axis=1)
        raw = word.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - width :]
        return raw.tobytes()[:nbytes]
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = ((v.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack_bits(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` integers as int64 (``data`` must fit exactly)."""
    nbytes = (count * width + 7) // 8
    require(len(data) == nbytes, f"packed bits: {len(data)} bytes, want {nbytes}")
    if count == 0 or width == 0:
        return np.zeros(count, np.int64)
    raw = np.frombuffer(data, np.uint8)
    if width == 8:
        return raw.astype(np.int64)
    if width < 8:
        groups = -(-count // 8)
        buf = np.zeros((groups, 8), np.uint8)
        flat = np.zeros(groups * width, np.uint8)
        flat[:nbytes] = raw
        buf[:, 8 - width :] = flat.reshape(groups, width)
        word = buf.view(">u8").reshape(groups, 1).astype(np.uint64)
        out = ((word >> _SHIFTS8[width]) & np.uint64((1 << width) - 1)).reshape(-1)
        require(
            not out[count:].any() and _tail_bits_clear(raw, count * width),
            "packed bits: non-zero padding",
        )
        return out[:count].astype(np.int64)
    bits = np.unpackbits(raw)
    require(not bits[count * width :].any(), "packed bits: non-zero padding")
    weights = np.left_shift(1, np.arange(width - 1, -1, -1, dtype=np.int64))
    return bits[: count * width].reshape(count, width).astype(np.int64) @ weights


def _tail_bits_clear(raw: np.ndarray, used_bits: int) -> bool:
    """True when the bits of the last byte past ``used_bits`` are zero."""
    spare = (-used_bits) % 8
    return spare == 0 or not int(raw[-1]) & ((1 << spare) - 1)


def runs(mask: np.ndarray) -> tuple[bool, np.ndarray]:
    """Run-length form of a flat bool array: (value of the first run, lengths of all runs)."""
    m = np.asarray(mask, bool).reshape(-1)
    if m.size == 0:
        return False, np.zeros(0, np.int64)
    change = np.flatnonzero(m[1:] != m[:-1]) + 1
    bounds = np.concatenate([[0], change, [m.size]])
    return bool(m[0]), np.diff(bounds)


def mask_from_runs(first: bool, lengths: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`runs`; lengths must be >= 1 and sum to ``n``."""
    lengths = np.asarray(lengths, np.int64)
    require(lengths.size == 0 or bool(lengths.min() >= 1), "run of length 0")
    require(int(lengths.sum()) == n, f"runs cover {int(lengths.sum())} elements, want {n}")
    kinds = np.zeros(lengths.size, bool)
    kinds[(0 if first else 1) :: 2] = True
    return np.repeat(kinds, lengths)

"""Byte-level helpers for every payload parser: LEB128 varints, zigzag, a bounds-checked reader."""

from __future__ import annotations

import struct

from .errors import BitstreamError


def put_varint(out: bytearray, value: int) -> None:
    """Append an unsigned LEB128 varint."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def zigzag(value: int) -> int:
    return (value << 1) if value >= 0 else ((-value << 1) - 1)


def unzigzag(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


class Reader:
    """Sequential reader over a buffer; every read is bounds-checked."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None):
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.end - self.pos:
            raise BitstreamError(f"truncated: need {n} bytes at offset {self.pos}")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        if self.pos >= self.end:
            raise BitstreamError(f"truncated at offset {self.pos}")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def varint(self, max_bits: int = 63) -> int:
        shift = 0
        result = 0
        while True:
            byte = self.u8()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > max_bits:
                raise BitstreamError("varint too long")

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise BitstreamError(f"{self.end - self.pos} trailing bytes")

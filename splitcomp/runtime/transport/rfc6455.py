"""The server side of RFC 6455, without I/O: the HTTP upgrade request, frames from clients
(masked, possibly fragmented, with a size limit) and frames to them.

Everything a hostile peer can send ends in a typed error: :class:`HttpError` (an HTTP
status before the upgrade) or :class:`ProtocolError` (a close code after it).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

import numpy as np

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: largest HTTP request head (request line and headers) and header count, as websockets
MAX_HEAD_BYTES = 8192 + 4
MAX_HEADERS = 128
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: close codes a peer may send (RFC 6455 7.4, IANA registry); 3000-4999 are free to use
_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


class HttpError(Exception):
    """A handshake that is not a valid HTTP/1.1 upgrade request: answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    """A frame breaking RFC 6455 or our limits: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unmask_numpy(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    n = len(data)
    key = np.frombuffer(mask * (n // 4 + 1), np.uint8)[:n]
    return (np.frombuffer(data, np.uint8) ^ key).tobytes()


try:  # websockets (a core dependency) ships this XOR in C; the numpy one is the fallback
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - wheels include it
    unmask = _unmask_numpy  # type: ignore[assignment]


# -- handshake -----------------------------------------------------------------------
def parse_request(head: bytes) -> tuple[str, str, dict[str, str]]:
    """``method, path, headers`` (lower-case names; repeated headers joined by ``, ``) of an
    HTTP request head (without its closing blank line)."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed request line") from None
    if version != "HTTP/1.1":
        raise HttpError(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 only")
    if not target.startswith("/"):
        raise HttpError(400, "bad request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise HttpError(400, "malformed header line")
        try:
            key = name.decode("ascii").lower()
        except UnicodeDecodeError:
            raise HttpError(400, "non-ASCII header name") from None
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return method, target, headers


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and token in (t.strip().lower() for t in value.split(","))


def accept_key(headers: dict[str, str]) -> str:
    """``Sec-WebSocket-Accept`` for a valid upgrade request (HttpError otherwise)."""
    if not _has_token(headers.get("upgrade"), "websocket"):
        raise HttpError(426, "expected Upgrade: websocket")
    if not _has_token(headers.get("connection"), "upgrade"):
        raise HttpError(426, "expected Connection: Upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HttpError(426, "Sec-WebSocket-Version 13 only")
    key = headers.get("sec-websocket-key", "")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "bad Sec-WebSocket-Key")
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def http_response(status: int, phrase: str, headers: list[tuple[str, str]],
                  body: bytes = b"") -> bytes:
    """An HTTP/1.1 response head (and body) as bytes."""
    lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- frames to the client ------------------------------------------------------------
_H2, _H4, _H10 = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return _H2.pack(0x80 | opcode, n) + payload
    if n < 65536:
        return _H4.pack(0x80 | opcode, 126, n) + payload
    return _H10.pack(0x80 | opcode, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code (None when absent) and reason of a client's close frame."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code not in _CLOSE_CODES and not 3000 <= code <= 4999:
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not UTF-8") from None


# -- frames from the client ----------------------------------------------------------
class Reader:
    """Frames from a client, reassembled into messages.

    :meth:`feed` bytes in, then call :meth:`next` until it returns None: each item is
    ``(opcode, payload)``: a whole data message (``OP_BINARY``, ``OP_TEXT``; fragments joined)
    or a control frame. A data message over ``max_size`` bytes raises ProtocolError(1009) as
    soon as its length is known, before its payload is buffered."""

    __slots__ = ("buf", "pos", "max_size", "frag_op", "frags", "frag_len")

    def __init__(self, max_size: int) -> None:
        self.buf: bytes | bytearray = b""
        self.pos = 0
        self.max_size = max_size
        self.frag_op: int | None = None  #: opcode of the message being reassembled
        self.frags: list[bytes] = []
        self.frag_len = 0

    def feed(self, data: bytes) -> None:
        if self.pos >= len(self.buf):  # nothing pending (the usual case): no copy
            self.buf, self.pos = data, 0
            return
        if self.pos or not isinstance(self.buf, bytearray):
            self.buf, self.pos = bytearray(memoryview(self.buf)[self.pos:]), 0
        self.buf += data

    def next(self, _unmask: Callable[[bytes, bytes], bytes] = unmask  # noqa: B008
             ) -> tuple[int, bytes] | None:
        while True:
            buf, p = self.buf, self.pos
            avail = len(buf) - p
            if avail < 2:
                return None
            b0, b1 = buf[p], buf[p + 1]
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set (no extension was negotiated)")
            if not b1 & 0x80:
                raise ProtocolError(1002, "unmasked frame from a client")
            head = 6
            if length == 126:
                if avail < 4:
                    return None
                length, head = int.from_bytes(buf[p + 2:p + 4], "big"), 8
            elif length == 127:
                if avail < 10:
                    return None
                length, head = int.from_bytes(buf[p + 2:p + 10], "big"), 14
                if length >> 63:
                    raise ProtocolError(1002, "payload length with its top bit set")
            if opcode >= 8:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
                if not fin or length > 125:
                    raise ProtocolError(1002, "fragmented or long control frame")
            elif opcode > OP_BINARY:
                raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
            elif (opcode == OP_CONT) != (self.frag_op is not None):
                raise ProtocolError(1002, "continuation frame outside a fragmented message"
                                    if opcode == OP_CONT else "new message inside a fragmented one")
            elif self.frag_len + (length or 1) > self.max_size:
                raise ProtocolError(1009, f"message over {self.max_size} bytes")
            end = p + head + length
            if len(buf) < end:
                return None
            payload = _unmask(memoryview(buf)[p + head:end], bytes(buf[p + head - 4:p + head]))
            self.pos = end
            if opcode >= 8 or (fin and opcode != OP_CONT):
                return opcode, payload
            if opcode != OP_CONT:
                self.frag_op = opcode
            self.frags.append(payload)
            self.frag_len += length or 1  # empty fragments count: the list stays bounded
            if fin:
                op, data = self.frag_op, b"".join(self.frags)
                self.frag_op, self.frags, self.frag_len = None, [], 0
                assert op is not None
                return op, data

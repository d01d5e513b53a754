"""Frames common to every request kind, and the vision request/result/error frames.

Layout (all integers little-endian; see ``docs/protocol.md``)::

    request  = "SP" | version u8 | type u8 (0x01) | request id u64 | name length u8 | name
               | codec bitstream (the rest of the frame)
    result   = "SP" | version u8 | type u8 (0x81) | request id u64 | batch size u16
               | queue us u32 | decode us u32 | tail us u32 | result bitstream (the rest)
    error    = "SP" | version u8 | type u8 (0x82) | request id u64 | code u8
               | message length u16 | message (UTF-8)

LLM sessions add request types 0x02 and 0x83 (:mod:`.llm_frames`); the frames above are
unchanged by them.

Nothing here does I/O or looks inside a codec bitstream; the server and client own the sockets.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .llm_frames import LLMResult


MAGIC = b"SP"
VERSION = 1

TYPE_REQUEST = 0x01
TYPE_RESULT = 0x81
TYPE_ERROR = 0x82

MAX_NAME_BYTES = 64
MAX_MESSAGE_BYTES = 1024
#: request id used in an error answering a frame whose own id could not be read
NO_REQUEST_ID = 0

_PREFIX = struct.Struct("<2sBBQ")  # magic, version, type, request id
PREFIX_BYTES = _PREFIX.size  # 12
_RESULT_META = struct.Struct("<HIII")  # batch size, queue us, decode us, tail us
_ERROR_META = struct.Struct("<BH")  # code, message length
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF

#: what a deployment name may contain (checked when a deployment is created, not per frame)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")

#: WebSocket close codes the server uses
CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect and retry
CLOSE_PROTOCOL_ERROR = 1002  # a frame that could not be parsed at all
CLOSE_UNSUPPORTED_DATA = 1003  # a text frame
CLOSE_TOO_BIG = 1009  # a frame above the server's max_frame_bytes (closed by websockets)

#: handshake headers
HEADER_SESSION = "X-Splitcomp-Session"
HEADER_MAX_FRAME = "X-Splitcomp-Max-Frame"
HEADER_PROTOCOL = "X-Splitcomp-Protocol"


class ErrorCode(enum.IntEnum):
    """Typed error of one request (the ``code`` byte of an error frame)."""

    BAD_FRAME = 1  #: the frame does not follow this protocol
    BAD_BITSTREAM = 2  #: the codec bitstream is truncated, corrupt or over the decode limits
    UNKNOWN_DEPLOYMENT = 3  #: no deployment of that name on this server
    UNAUTHORIZED = 4  #: this client may not use that deployment
    TOO_LARGE = 5  #: the frame or the request's batch exceeds a server limit
    OVERLOADED = 6  #: too many requests in flight for this client or queued for the deployment
    INTERNAL = 7  #: the server failed running the tail (a bug or a tail that rejects the input)
    TIMEOUT = 8  #: the request waited in the queue longer than the server's request timeout
    CODEC_NOT_ALLOWED = 9  #: the deployment does not accept bitstreams of that codec
    BAD_INPUT = 10  #: decoded tensors do not match what the tail takes (count, dtype, shape)
    UNAVAILABLE = 11  #: the server is shutting down; retry (the client does so by itself)
    SESSION_NOT_FOUND = 12  #: no such LLM session for this client (never opened, closed, expired)
    KV_CACHE_FULL = 13  #: the server's KV-cache memory cap leaves no room for this session/step
    SESSION_BUSY = 14  #: the LLM session already has a step in flight (steps are sequential)
    CONTEXT_UNKNOWN = 15  #: OPEN named a codec context the server lacks: open again with it


#: codes a client may retry with the same request id without changing the request
RETRYABLE = frozenset({ErrorCode.UNAVAILABLE})


class FrameError(ValueError):
    """A frame that does not follow the protocol. ``request_id`` is None when even the
    fixed prefix could not be read (the server then answers id 0 and closes the connection)."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """One parsed request; ``bitstream`` is a view into the received frame (no copy)."""

    request_id: int
    deployment: str
    bitstream: memoryview


@dataclass(frozen=True)
class Timing:
    """Server-side figures returned with each result (microseconds, saturating at u32)."""

    batch_size: int  #: samples in the tail call that computed this result
    queue_us: int  #: arrival to the start of its batch
    decode_us: int  #: this request's header check and decode
    tail_us: int  #: the whole tail call this request was part of


@dataclass(frozen=True)
class Response:
    """One parsed response: a result (``bitstream`` set) or an error (``code`` set)."""

    request_id: int
    bitstream: memoryview | None = None
    timing: Timing | None = None
    code: ErrorCode | None = None
    message: str = ""
    llm: LLMResult | None = None  #: set for LLM results (frame type 0x83)

    @property
    def ok(self) -> bool:
        return self.code is None


def ws_frame_bytes(payload: int, masked: bool = True) -> int:
    """Bytes of one WebSocket binary message of ``payload`` bytes on the wire (RFC 6455 header:
    2 bytes, +2 or +8 for the length, +4 for the mask of client frames)."""
    ext = 0 if payload < 126 else 2 if payload < 1 << 16 else 8
    return 2 + ext + (4 if masked else 0) + payload


def check_name(name: str) -> bytes:
    """The wire bytes of a deployment name; raises ValueError for names the protocol forbids."""
    raw = name.encode("ascii", errors="replace")
    if not 0 < len(raw) <= MAX_NAME_BYTES or not set(name) <= NAME_CHARS:
        raise ValueError(
            f"deployment name {name!r}: 1-{MAX_NAME_BYTES} characters from [A-Za-z0-9._@-]"
        )
    return raw


def encode_request(request_id: int, deployment: str | bytes, bitstream: bytes) -> bytes:
    """A request frame. ``deployment`` may be pre-encoded with :func:`check_name`."""
    name = deployment if isinstance(deployment, bytes) else check_name(deployment)
    if not 0 < request_id < 1 << 64:
        raise ValueError(f"request id {request_id} outside 1..2**64-1")
    return b"".join((
        _PREFIX.pack(MAGIC, VERSION, TYPE_REQUEST, request_id), bytes((len(name),)), name,
        bitstream,
    ))


def _prefix(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
    if len(frame) < PREFIX_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes is shorter than the {PREFIX_BYTES}-byte "
                         "prefix")
    magic, version, ftype, request_id = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise FrameError("bad magic: not a splitcomp frame")
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    return ftype, request_id


def _request_prefix(frame: bytes | bytearray | memoryview, want: int, kind: str) -> int:
    """The request id of a request frame of type ``want`` (``kind`` names it in errors)."""
    ftype, request_id = _prefix(frame)
    if request_id == NO_REQUEST_ID:
        raise FrameError("request id 0 is reserved")
    if ftype != want:
        raise FrameError(f"frame type 0x{ftype:02x} is not {kind}", request_id)
    return request_id


def parse_request(frame: bytes | bytearray | memoryview) -> Request:
    """Parse a request frame; raises :class:`FrameError` (with the id when it was readable)."""
    request_id = _request_prefix(frame, TYPE_REQUEST, "a request")
    view = memoryview(frame)
    if len(view) <= PREFIX_BYTES:
        raise FrameError("missing deployment name", request_id)
    n = view[PREFIX_BYTES]
    start = PREFIX_BYTES + 1
    if not 0 < n <= MAX_NAME_BYTES:
        raise FrameError(f"deployment name length {n} outside 1..{MAX_NAME_BYTES}", request_id)
    if len(view) <= start + n:
        raise FrameError("truncated: no bitstream after the deployment name", request_id)
    try:
        name = bytes(view[start : start + n]).decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("deployment name is not ASCII", request_id) from None
    return Request(request_id, name, view[start + n :])


def _us(seconds: float) -> int:
    return min(max(int(seconds * 1e6), 0), _U32_MAX)


def encode_result(request_id: int, bitstream: bytes, batch_size: int = 1, queue_s: float = 0.0,
                  decode_s: float = 0.0, tail_s: float = 0.0) -> bytes:
    """A result frame carrying the result bitstream and the server's timing figures."""
    return b"".join((
        _PREFIX.pack(MAGIC, VERSION, TYPE_RESULT, request_id),
        _RESULT_META.pack(min(batch_size, _U16_MAX), _us(queue_s), _us(decode_s), _us(tail_s)),
        bitstream,
    ))


def encode_error(request_id: int, code: ErrorCode | int, message: str = "") -> bytes:
    """An error frame; the message is cut to :data:`MAX_MESSAGE_BYTES` of UTF-8."""
    raw = message.encode("utf-8")[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return b"".join((
        _PREFIX.pack(MAGIC, VERSION, TYPE_ERROR, request_id),
        _ERROR_META.pack(int(code), len(raw)), raw,
    ))


def frame_type(frame: bytes | bytearray | memoryview) -> int | None:
    """The type byte of a frame (None when too short to have one); nothing is checked."""
    return frame[3] if len(frame) >= 4 else None



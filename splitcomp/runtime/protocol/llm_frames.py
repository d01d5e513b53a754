"""The LLM session frames (types 0x02 / 0x83, LLM message versions 1 and 2): pure functions.

Layouts: ``docs/protocol.md``, "Split LLM sessions" (summarised below). Errors use the error
frame of :mod:`.frames`.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from ...llm.sampling import MAX_TOP_K_LOGPROBS as MAX_TOP_K_LOGPROBS  # the wire limit
from ...llm.sampling import Sampling
from .frames import (
    _PREFIX,
    _U16_MAX,
    _U32_MAX,
    MAGIC,
    MAX_NAME_BYTES,
    PREFIX_BYTES,
    VERSION,
    FrameError,
    Timing,
    _prefix,
    _request_prefix,
    _us,
    check_name,
)

# -- LLM sessions (frame types 0x02 / 0x83, LLM message versions 1 and 2) -------------------
#
#   llm request = "SP" | 1 | 0x02 | request id u64 | llm version u8 | op u8 | body
#     OPEN  body = name length u8 | name | temperature f32 | top_k u32 | seed u64 | logprobs u8
#                  [| codec id u8 | SHA-256 of the context (32 bytes) | length u32 | context]
#                  (the bracketed codec context only in LLM version 2, an OPEN's only change;
#                  length 0: "use yours", answered CONTEXT_UNKNOWN if the server lacks it)
#     STEP  body = session id (16 bytes) | tokens u16 | n u16 | n x length u32 | n bitstreams
#                  (n <= tokens, every bitstream carrying at least one token, is the
#                  server's rule: BAD_FRAME at admission, before any bitstream is read)
#     CLOSE body = session id (16 bytes)
#   llm result  = "SP" | 1 | 0x83 | request id u64 | llm version u8 | op u8 | body
#     OPEN  body = session id | split u16 | hidden size u32 | vocabulary u32 | KV bytes/token u32
#     STEP  body = batch size u16 | queue us u32 | decode us u32 | tail us u32 | position u32
#                  | token u32 | logprob f32 | k u8 | k x (token u32, logprob f32)
#     CLOSE body = tokens the session held u32
#
# Errors use the error frame (0x82) above. The vision frames are unchanged: a server without
# LLM support answers these types BAD_FRAME.

TYPE_LLM_REQUEST = 0x02
TYPE_LLM_RESULT = 0x83
LLM_VERSION = 1
#: LLM message version of an OPEN that carries a codec context (every other frame: 1)
LLM_VERSION_CONTEXT = 2
CONTEXT_DIGEST_BYTES = 32
SESSION_ID_BYTES = 16
_GREEDY = Sampling()


class LLMOp(enum.IntEnum):
    """What an LLM request asks for (the ``op`` byte)."""

    OPEN = 1  #: open a session on a deployment (sampling parameters fixed for its life)
    STEP = 2  #: hidden states of T new tokens (T > 1: a prefill) -> the next token
    CLOSE = 3  #: free a session and its KV cache


_LLM_HEAD = struct.Struct("<BB")  # llm version, op
_SAMPLING = struct.Struct("<fIQB")  # temperature, top_k, seed, logprobs
_STEP_HEAD = struct.Struct("<HH")  # tokens, bitstream count
_OPENED = struct.Struct("<HIII")  # split, hidden size, vocabulary, KV bytes per token
_TOKEN = struct.Struct("<HIIIIIfB")  # batch, queue, decode, tail, position, token, logprob, k
_TOP = struct.Struct("<If")
_CLOSED = struct.Struct("<I")
_U32 = struct.Struct("<I")
_CONTEXT_HEAD = struct.Struct("<B32sI")  # codec id, SHA-256 of the context bytes, length


@dataclass(frozen=True)
class CodecContext:
    """A codec's session context named by an OPEN (LLM version 2): the codec's id, the
    SHA-256 of the context bytes and the bytes themselves, or none (``data`` empty: the client
    asks the server to use its own copy, refused with ``CONTEXT_UNKNOWN`` when it has none)."""

    codec_id: int
    digest: bytes
    data: bytes | memoryview = b""

    def __post_init__(self) -> None:
        if not 0 < self.codec_id < 256 or len(self.digest) != CONTEXT_DIGEST_BYTES:
            raise ValueError("a codec context needs a codec id 1..255 and a 32-byte SHA-256")
        if len(self.data) > _U32_MAX:
            raise ValueError("codec context over 4 GiB")

    @classmethod
    def of(cls, codec_id: int, data: bytes, send: bool = True) -> CodecContext:
        """The context ``data`` of codec ``codec_id``, its bytes included or (``send``
        False) named by digest only."""
        return cls(codec_id, hashlib.sha256(data).digest(), data if send else b"")

    @property
    def id_only(self) -> bool:
        return len(self.data) == 0


@dataclass(frozen=True)
class LLMRequest:
    """One parsed LLM request. ``deployment``, ``sampling`` and (optional) ``context`` are
    set for OPEN, ``session`` for STEP and CLOSE, ``tokens`` and ``bitstreams`` (views, no
    copy) for STEP."""

    request_id: int
    op: LLMOp
    deployment: str = ""
    sampling: Sampling | None = None
    session: bytes = b""
    tokens: int = 0
    bitstreams: tuple[memoryview, ...] = ()
    context: CodecContext | None = None


@dataclass(frozen=True)
class LLMOpened:
    """Answer to OPEN: the session id and what the server half expects."""

    session: bytes
    split: int
    hidden_size: int
    vocab_size: int
    kv_bytes_per_token: int


@dataclass(frozen=True)
class LLMToken:
    """Answer to STEP: the next token, its log-probability, the top-k ones, the server's
    figures and the session's length after the step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    position: int
    timing: Timing


@dataclass(frozen=True)
class LLMClosed:
    """Answer to CLOSE: how many tokens the session held."""

    tokens: int


LLMResult = LLMOpened | LLMToken | LLMClosed


def _llm_prefix(request_id: int, ftype: int, op: LLMOp, version: int = LLM_VERSION) -> bytes:
    if not 0 < request_id < 1 << 64:
        raise ValueError(f"request id {request_id} outside 1..2**64-1")
    return _PREFIX.pack(MAGIC, VERSION, ftype, request_id) + _LLM_HEAD.pack(version, op)


def _check_session(session: bytes) -> bytes:
    if len(session) != SESSION_ID_BYTES:
        raise ValueError(f"session id of {len(session)} bytes, not {SESSION_ID_BYTES}")
    return bytes(session)


def encode_llm_open(request_id: int, deployment: str | bytes, sampling: Sampling = _GREEDY,
                    context: CodecContext | None = None) -> bytes:
    """An OPEN request for a session on ``deployment``; with a codec ``context`` it is an
    LLM version 2 message (without, byte for byte the version 1 one)."""
    name = deployment if isinstance(deployment, bytes) else check_name(deployment)
    s = sampling
    version = LLM_VERSION if context is None else LLM_VERSION_CONTEXT
    parts = [_llm_prefix(request_id, TYPE_LLM_REQUEST, LLMOp.OPEN, version),
             bytes((len(name),)), name,
             _SAMPLING.pack(s.temperature, s.top_k, s.seed, s.logprobs)]
    if context is not None:
        parts += [_CONTEXT_HEAD.pack(context.codec_id, context.digest, len(context.data)),
                  context.data]
    return b"".join(parts)


def encode_llm_step(request_id: int, session: bytes, tokens: int,
                    bitstreams: list[bytes] | tuple[bytes, ...]) -> bytes:
    """A STEP request: the bitstreams of the hidden states of ``tokens`` new tokens (a
    server takes at most one bitstream per token)."""
    if not 0 < tokens <= _U16_MAX or not 0 < len(bitstreams) <= _U16_MAX:
        raise ValueError(f"{tokens} tokens in {len(bitstreams)} bitstreams: 1..65535 each")
    return b"".join((_llm_prefix(request_id, TYPE_LLM_REQUEST, LLMOp.STEP),
                     _check_session(session), _STEP_HEAD.pack(tokens, len(bitstreams)),
                     b"".join(_U32.pack(len(b)) for b in bitstreams), *bitstreams))


def encode_llm_close(request_id: int, session: bytes) -> bytes:
    """A CLOSE request."""
    return _llm_prefix(request_id, TYPE_LLM_REQUEST, LLMOp.CLOSE) + _check_session(session)


def _llm_head(view: memoryview, request_id: int,
              versions: tuple[int, ...] = (LLM_VERSION,)) -> tuple[LLMOp, int, int]:
    end = PREFIX_BYTES + _LLM_HEAD.size
    if len(view) < end:
        raise FrameError("truncated: no LLM version and op", request_id)
    version, op = _LLM_HEAD.unpack_from(view, PREFIX_BYTES)
    if version not in versions:
        raise FrameError(f"unsupported LLM message version {version} (this side speaks "
                         f"{', '.join(map(str, versions))})", request_id)
    try:
        op = LLMOp(op)
    except ValueError:
        raise FrameError(f"unknown LLM op {op}", request_id) from None
    if version == LLM_VERSION_CONTEXT and op is not LLMOp.OPEN:
        raise FrameError(f"LLM message version {version} is only for OPEN", request_id)
    return op, end, version


def parse_llm_request(frame: bytes | bytearray | memoryview) -> LLMRequest:
    """Parse an LLM request frame; raises :class:`FrameError` (with the id when readable)."""
    rid = _request_prefix(frame, TYPE_LLM_REQUEST, "an LLM request")
    view = memoryview(frame)
    op, pos, version = _llm_head(view, rid, (LLM_VERSION, LLM_VERSION_CONTEXT))
    if op is LLMOp.OPEN:
        if len(view) <= pos:
            raise FrameError("missing deployment name", rid)
        n = view[pos]
        if not 0 < n <= MAX_NAME_BYTES:
            raise FrameError(f"deployment name length {n} outside 1..{MAX_NAME_BYTES}", rid)
        end = pos + 1 + n + _SAMPLING.size
        context = None
        if version == LLM_VERSION_CONTEXT:
            if len(view) < end + _CONTEXT_HEAD.size:
                raise FrameError("truncated codec context header", rid)
            codec_id, digest, size = _CONTEXT_HEAD.unpack_from(view, end)
            if codec_id == 0 or len(view) != end + _CONTEXT_HEAD.size + size:
                raise FrameError("codec context length does not match the frame", rid)
            context = CodecContext(codec_id, digest, view[end + _CONTEXT_HEAD.size :])
        elif len(view) != end:
            raise FrameError("OPEN frame length does not match its name length", rid)
        try:
            name = bytes(view[pos + 1 : pos + 1 + n]).decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("deployment name is not ASCII", rid) from None
        try:
            sampling = Sampling(*_SAMPLING.unpack_from(view, pos + 1 + n))
        except ValueError as e:
            raise FrameError(f"sampling parameters: {e}", rid) from None
        return LLMRequest(rid, op, deployment=name, sampling=sampling, context=context)
    end = pos + SESSION_ID_BYTES
    if len(view) < end:
        raise FrameError("truncated session id", rid)
    session = bytes(view[pos:end])
    if op is LLMOp.CLOSE:
        if len(view) != end:
            raise FrameError("CLOSE frame longer than a session id", rid)
        return LLMRequest(rid, op, session=session)
    if len(view) < end + _STEP_HEAD.size:
        raise FrameError("truncated STEP header", rid)
    tokens, n = _STEP_HEAD.unpack_from(view, end)
    pos = end + _STEP_HEAD.size
    if tokens == 0 or n == 0:
        raise FrameError("a STEP carries at least one token and one bitstream", rid)
    if len(view) < pos + 4 * n:
        raise FrameError("truncated bitstream lengths", rid)
    lengths = struct.unpack_from(f"<{n}I", view, pos)
    pos += 4 * n
    if len(view) != pos + sum(lengths) or 0 in lengths:
        raise FrameError("bitstream lengths do not match the frame", rid)
    blobs = []
    for length in lengths:
        blobs.append(view[pos : pos + length])
        pos += length
    return LLMRequest(rid, op, session=session, tokens=tokens, bitstreams=tuple(blobs))


def encode_llm_opened(request_id: int, r: LLMOpened) -> bytes:
    return b"".join((_llm_prefix(request_id, TYPE_LLM_RESULT, LLMOp.OPEN),
                     _check_session(r.session),
                     _OPENED.pack(r.split, r.hidden_size, r.vocab_size, r.kv_bytes_per_token)))


def encode_llm_token(request_id: int, token: int, logprob: float, position: int,
                     top: tuple[tuple[int, float], ...] | list[tuple[int, float]] = (),
                     batch_size: int = 1, queue_s: float = 0.0, decode_s: float = 0.0,
                     tail_s: float = 0.0) -> bytes:
    """A STEP answer (times in seconds, saturating as in result frames)."""
    return b"".join((
        _llm_prefix(request_id, TYPE_LLM_RESULT, LLMOp.STEP),
        _TOKEN.pack(min(batch_size, _U16_MAX), _us(queue_s), _us(decode_s), _us(tail_s),
                    min(position, _U32_MAX), token, logprob, len(top)),
        b"".join(_TOP.pack(t, lp) for t, lp in top),
    ))


def encode_llm_closed(request_id: int, tokens: int) -> bytes:
    return (_llm_prefix(request_id, TYPE_LLM_RESULT, LLMOp.CLOSE)
            + _CLOSED.pack(min(tokens, _U32_MAX)))


def parse_llm_result(frame: bytes | bytearray | memoryview) -> tuple[int, LLMResult]:
    """Parse an LLM result frame into (request id, result); raises :class:`FrameError`."""
    ftype, rid = _prefix(frame)
    if ftype != TYPE_LLM_RESULT:
        raise FrameError(f"frame type 0x{ftype:02x} is not an LLM result", rid)
    view = memoryview(frame)
    op, pos, _ = _llm_head(view, rid)
    if op is LLMOp.OPEN:
        if len(view) != pos + SESSION_ID_BYTES + _OPENED.size:
            raise FrameError("OPEN answer of the wrong length", rid)
        return rid, LLMOpened(bytes(view[pos : pos + SESSION_ID_BYTES]),
                              *_OPENED.unpack_from(view, pos + SESSION_ID_BYTES))
    if op is LLMOp.CLOSE:
        if len(view) != pos + _CLOSED.size:
            raise FrameError("CLOSE answer of the wrong length", rid)
        return rid, LLMClosed(*_CLOSED.unpack_from(view, pos))
    if len(view) < pos + _TOKEN.size:
        raise FrameError("truncated STEP answer", rid)
    batch, queue, decode, tail, position, token, logprob, k = _TOKEN.unpack_from(view, pos)
    pos += _TOKEN.size
    if len(view) != pos + k * _TOP.size:
        raise FrameError("STEP answer length does not match its top-k count", rid)
    top = tuple(_TOP.unpack_from(view, pos + i * _TOP.size) for i in range(k))
    return rid, LLMToken(token, logprob, top, position, Timing(batch, queue, decode, tail))

"""The wire protocol (version 1): pure functions that build and parse WebSocket binary frames.

Layouts: ``docs/protocol.md``. :mod:`.frames` has what every frame shares and the vision
request, result and error frames; :mod:`.llm_frames` the LLM session frames. Nothing here does
I/O or looks inside a codec bitstream; the server and the clients own the sockets.
"""

from __future__ import annotations

from .frames import (
    _ERROR_META,
    _RESULT_META,
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    HEADER_MAX_FRAME,
    HEADER_PROTOCOL,
    HEADER_SESSION,
    MAGIC,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    NAME_CHARS,
    NO_REQUEST_ID,
    PREFIX_BYTES,
    RETRYABLE,
    TYPE_ERROR,
    TYPE_REQUEST,
    TYPE_RESULT,
    VERSION,
    ErrorCode,
    FrameError,
    Request,
    Response,
    Timing,
    _prefix,
    check_name,
    encode_error,
    encode_request,
    encode_result,
    frame_type,
    parse_request,
    ws_frame_bytes,
)

#: the LLM session frames' names, loaded on first use (:mod:`.llm_frames` needs
#: ``splitcomp.llm``, hence torch; a vision client such as :mod:`splitcomp.edge` does not)
_LLM_NAMES = frozenset({
    "CONTEXT_DIGEST_BYTES",
    "LLM_VERSION",
    "LLM_VERSION_CONTEXT",
    "MAX_TOP_K_LOGPROBS",
    "SESSION_ID_BYTES",
    "TYPE_LLM_REQUEST",
    "TYPE_LLM_RESULT",
    "CodecContext",
    "LLMClosed",
    "LLMOp",
    "LLMOpened",
    "LLMRequest",
    "LLMResult",
    "LLMToken",
    "Sampling",
    "encode_llm_close",
    "encode_llm_closed",
    "encode_llm_open",
    "encode_llm_opened",
    "encode_llm_step",
    "encode_llm_token",
    "parse_llm_request",
    "parse_llm_result",
})


def __getattr__(name: str) -> object:
    if name in _LLM_NAMES:
        from . import llm_frames

        return getattr(llm_frames, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_response(frame: bytes | bytearray | memoryview) -> Response:
    """Parse a result or error frame; raises :class:`FrameError`."""
    ftype, request_id = _prefix(frame)
    view = memoryview(frame)
    if ftype == TYPE_RESULT:
        end = PREFIX_BYTES + _RESULT_META.size
        if len(view) < end:
            raise FrameError("truncated result frame", request_id)
        timing = Timing(*_RESULT_META.unpack_from(view, PREFIX_BYTES))
        return Response(request_id, bitstream=view[end:], timing=timing)
    if ftype == TYPE_ERROR:
        end = PREFIX_BYTES + _ERROR_META.size
        if len(view) < end:
            raise FrameError("truncated error frame", request_id)
        code, n = _ERROR_META.unpack_from(view, PREFIX_BYTES)
        if len(view) != end + n:
            raise FrameError("error message length does not match the frame", request_id)
        try:
            code = ErrorCode(code)
        except ValueError:
            raise FrameError(f"unknown error code {code}", request_id) from None
        message = bytes(view[end:]).decode("utf-8", "replace")
        return Response(request_id, code=code, message=message)
    from . import llm_frames  # only for frames neither vision answer is

    if ftype == llm_frames.TYPE_LLM_RESULT:
        _, result = llm_frames.parse_llm_result(frame)
        timing = result.timing if isinstance(result, llm_frames.LLMToken) else None
        return Response(request_id, timing=timing, llm=result)
    raise FrameError(f"frame type 0x{ftype:02x} is not a response", request_id)


__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED_DATA",
    "ErrorCode",
    "FrameError",
    "HEADER_MAX_FRAME",
    "HEADER_PROTOCOL",
    "HEADER_SESSION",
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_BYTES",
    "NAME_CHARS",
    "NO_REQUEST_ID",
    "PREFIX_BYTES",
    "RETRYABLE",
    "Request",
    "Response",
    "TYPE_ERROR",
    "TYPE_REQUEST",
    "TYPE_RESULT",
    "Timing",
    "VERSION",
    "check_name",
    "encode_error",
    "encode_request",
    "encode_result",
    "frame_type",
    "parse_request",
    "parse_response",
    "ws_frame_bytes",
] + sorted(_LLM_NAMES)

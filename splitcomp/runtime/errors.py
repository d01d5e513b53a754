"""Typed errors of the runtime: why the server refuses one request (:class:`RequestError`, turned
into an error frame), and what a client raises to its caller, one class per way a request fails."""

from __future__ import annotations

from .protocol import ErrorCode


class RequestError(Exception):
    """Why the server refuses one request: an error code and a message for the client (the
server answers it as an error frame; nothing is raised to the client's caller)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class SplitRuntimeError(Exception):
    """Base of every error the split-computing runtime raises to its callers."""


class ServerError(SplitRuntimeError):
    """The server answered the request with an error; ``code`` says which
    (:class:`~splitcomp.runtime.protocol.ErrorCode`)."""

    def __init__(self, code: ErrorCode, message: str = "", request_id: int | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id
        rid = f" (request {request_id})" if request_id is not None else ""
        super().__init__(f"{self.code.name}{rid}: {message}" if message else self.code.name + rid)


class Unauthorized(ServerError):
    """The server refused the token at the handshake (HTTP 401/403)."""

    def __init__(self, message: str = "token refused") -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message)


class RuntimeTimeout(SplitRuntimeError, TimeoutError):
    """No answer within the client's timeout (retries and reconnections included)."""


class ConnectionLost(SplitRuntimeError, ConnectionError):
    """The connection kept failing: retries used up, or the server cannot be reached."""

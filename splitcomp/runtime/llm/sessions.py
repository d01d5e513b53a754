"""LLM sessions on a server: unguessable ids bound to the client's identity, an idle timeout,
and a cap on the KV-cache memory of all sessions together.

:class:`SessionManager` is plain state, used from one thread (the server's event loop): it
hands out and checks session ids, and accounts memory in tokens (a session's KV cache is
exactly ``tokens * kv_bytes_per_token`` bytes), reserving a step's tokens before the step
runs so the cap holds while steps are in flight. The tail forward itself runs elsewhere.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...llm.halves import ServerHalf, TailSession
from ...llm.sampling import Sampling, generator_for
from ..errors import RequestError
from ..protocol import SESSION_ID_BYTES, ErrorCode


class SessionError(RequestError):
    """Why a session operation was refused (an error code and a message for the client)."""


@dataclass(eq=False)
class ServerSession:
    """One client's session: its tail KV cache, sampling state and accounting."""

    id: bytes
    owner: str  #: client id of the token that opened it
    tail: TailSession
    sampling: Sampling
    generator: torch.Generator | None
    last_used: float
    reserved: int = 0  #: tokens counted against the cap (cached + the step in flight)
    busy: bool = False  #: a step is in flight
    closed: bool = False
    steps: int = 0  #: steps answered
    contexts: dict = field(default_factory=dict)  #: codec contexts (id -> context) it opened with

    @property
    def position(self) -> int:
        return self.tail.position


class SessionManager:
    """The sessions of one server half.

    ``max_kv_bytes``: cap on the KV caches of all sessions (None: no cap); a step that would
    pass it is refused with ``KV_CACHE_FULL`` and changes nothing. ``idle_timeout_s``: sessions
    unused that long are freed by :meth:`expire` (and are not found any more).
    ``max_sessions``: open sessions at most (``KV_CACHE_FULL`` beyond).
    """

    def __init__(self, server: ServerHalf, max_kv_bytes: int | None = None,
                 idle_timeout_s: float = 300.0, max_sessions: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_kv_bytes is not None and max_kv_bytes < 0:
            raise ValueError("max_kv_bytes must be >= 0")
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be > 0")
        self.server = server
        self.max_kv_bytes = max_kv_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.clock = clock
        self.bytes_per_token = server.kv_bytes_per_token
        self._sessions: dict[bytes, ServerSession] = {}
        self._reserved_tokens = 0
        self.opened = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_bytes(self) -> int:
        """KV bytes of all sessions, steps in flight included."""
        return self._reserved_tokens * self.bytes_per_token

    def kv_bytes(self) -> int:
        """KV bytes the sessions' caches hold now (read from the caches)."""
        return sum(s.tail.kv_bytes for s in self._sessions.values())

    def open(self, owner: str, sampling: Sampling | None = None,
             contexts: dict | None = None) -> ServerSession:
        """A new session for client ``owner`` with a 128-bit random id; its steps decode with
        the codec ``contexts`` (id -> context) first."""
        sampling = sampling or Sampling()
        if len(self._sessions) >= self.max_sessions:
            raise SessionError(ErrorCode.KV_CACHE_FULL,
                               f"{len(self._sessions)} sessions open (limit {self.max_sessions})")
        if not self._fits(1):
            raise SessionError(ErrorCode.KV_CACHE_FULL, self._full_message(1))
        sid = secrets.token_bytes(SESSION_ID_BYTES)
        while sid in self._sessions:  # pragma: no cover - 2**-128
            sid = secrets.token_bytes(SESSION_ID_BYTES)
        s = ServerSession(sid, owner, self.server.new_session(), sampling,
                          generator_for(sampling), self.clock(), contexts=dict(contexts or {}))
        self._sessions[sid] = s
        self.opened += 1
        return s

    def get(self, owner: str, sid: bytes) -> ServerSession:
        """The session ``sid`` of ``owner``. Another client's id, an unknown, closed or expired
        one all get the same ``SESSION_NOT_FOUND`` (a session's existence is not revealed)."""
        s = self._sessions.get(sid)
        if s is not None and s.owner == owner and not self._idle(s, self.clock()):
            return s
        if s is not None and s.owner == owner:
            self._drop(s)
            self.expired += 1
        raise SessionError(ErrorCode.SESSION_NOT_FOUND, "no such session for this client "
                           "(never opened, closed, or expired)")

    def reserve(self, session: ServerSession, tokens: int) -> None:
        """Count a step of ``tokens`` new tokens against the cap and mark the session busy."""
        if session.busy:
            raise SessionError(ErrorCode.SESSION_BUSY, "a step of this session is in flight")
        if not self._fits(tokens):
            raise SessionError(ErrorCode.KV_CACHE_FULL, self._full_message(tokens))
        session.busy = True
        session.reserved += tokens
        self._reserved_tokens += tokens
        session.last_used = self.clock()

    def finish(self, session: ServerSession, tokens: int, ok: bool) -> None:
        """The step reserved with ``tokens`` ended; a failed one gives its tokens back."""
        session.busy = False
        session.last_used = self.clock()
        if ok:
            session.steps += 1
        elif not session.closed:
            session.reserved -= tokens
            self._reserved_tokens -= tokens

    def close(self, owner: str, sid: bytes) -> int:
        """Free session ``sid`` of ``owner``; returns the tokens it held."""
        s = self.get(owner, sid)
        tokens = s.position
        self._drop(s)
        return tokens

    def expire(self) -> int:
        """Free the sessions idle longer than the timeout (not those with a step in flight);
        returns how many."""
        now = self.clock()
        idle = [s for s in self._sessions.values() if not s.busy and self._idle(s, now)]
        for s in idle:
            self._drop(s)
        self.expired += len(idle)
        return len(idle)

    def __contains__(self, sid: bytes) -> bool:
        return sid in self._sessions

    def close_all(self) -> None:
        for s in list(self._sessions.values()):
            self._drop(s)

    def _idle(self, s: ServerSession, now: float) -> bool:
        return not s.busy and now - s.last_used > self.idle_timeout_s

    def _drop(self, s: ServerSession) -> None:
        if self._sessions.pop(s.id, None) is None:
            return
        s.closed = True
        self._reserved_tokens -= s.reserved
        s.reserved = 0
        if not s.busy:  # an in-flight step still uses the cache; it is dropped with s
            s.tail.reset()

    def _fits(self, tokens: int) -> bool:
        cap = self.max_kv_bytes
        return cap is None or (self._reserved_tokens + tokens) * self.bytes_per_token <= cap

    def _full_message(self, tokens: int) -> str:
        return (f"KV cache full: {self.reserved_bytes} of {self.max_kv_bytes} bytes in use, "
                f"{tokens} more token(s) need {tokens * self.bytes_per_token}")

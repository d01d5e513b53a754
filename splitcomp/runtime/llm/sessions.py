"""LLM sessions on a server: unguessable ids bound to the client's identity, an idle timeout,
a cap on the KV-cache memory of all sessions together, and per-client quotas.

:class:`SessionManager` is plain state, used from one thread (the server's event loop): it
hands out and checks session ids, and accounts memory in tokens (a session's KV cache is
exactly ``tokens * kv_bytes_per_token`` bytes), reserving a step's tokens before the step
runs so the cap holds while steps are in flight. The tail forward itself runs elsewhere.

The global caps alone let one client take every session, every KV byte and every codec
context slot and lock the others out until its sessions expire; each client (its quota key:
the token's client id, or whatever the caller passes) therefore also has its own caps on
sessions, KV bytes and distinct codec contexts (:class:`ClientUsage`).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

import torch

from ...llm.halves import ServerHalf, TailSession
from ...llm.sampling import Sampling, generator_for
from ..errors import RequestError
from ..protocol import SESSION_ID_BYTES, ErrorCode

#: the client id of every client of a server without tokens (one id for all: no quota key)
ANONYMOUS = "anonymous"
#: the per-client caps default to this fraction of the global ones (1/4: no one client can
#: lock the others out, and a few busy clients together can still use the whole server)
CLIENT_SHARE = 4


def client_share(cap: int | None, share: int = CLIENT_SHARE) -> int | None:
    """The default per-client part of a global ``cap`` (None: no cap, so none per client)."""
    return None if cap is None else max(cap // share, 1)


class SessionError(RequestError):
    """Why a session operation was refused (an error code and a message for the client)."""


@dataclass
class ClientUsage:
    """What one client's sessions hold: their count, KV tokens (steps in flight included)
    and the codec contexts they opened with ((codec id, SHA-256) -> sessions using it)."""

    sessions: int = 0
    tokens: int = 0
    contexts: Counter = field(default_factory=Counter)


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
    #: what its streams decode with: the codec contexts it opened with (id -> context) and
    #: the compact-stream templates its full streams taught (``compact.scope_key`` -> bytes)
    contexts: dict = field(default_factory=dict)
    templates: int = 0  #: templates learned (at most ``service.SESSION_TEMPLATES``)
    client: Hashable | None = None  #: whose quotas it counts against (None: no quota)
    context_ids: tuple = ()  #: (codec id, SHA-256) of each codec context it opened with

    @property
    def position(self) -> int:
        return self.tail.position


class SessionManager:
    """The sessions of one server half.

    ``max_kv_bytes``: cap on the KV caches of all sessions (None: no cap); a step that would
    pass it is refused with ``KV_CACHE_FULL`` and changes nothing. ``idle_timeout_s``: sessions
    unused that long are freed by :meth:`expire` (and are not found any more).
    ``max_sessions``: open sessions at most (``KV_CACHE_FULL`` beyond).
    ``max_sessions_per_client``, ``max_kv_bytes_per_client``, ``max_contexts_per_client``:
    the same for each client's sessions (the last: distinct codec contexts they hold,
    ``OVERLOADED`` beyond); None: no per-client cap. A session opened without a ``client``
    key counts against the global caps only.
    """

    def __init__(self, server: ServerHalf, max_kv_bytes: int | None = None,
                 idle_timeout_s: float = 300.0, max_sessions: int = 4096,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_sessions_per_client: int | None = None,
                 max_kv_bytes_per_client: int | None = None,
                 max_contexts_per_client: int | None = None) -> None:
        for name, v in (("max_kv_bytes", max_kv_bytes),
                        ("max_kv_bytes_per_client", max_kv_bytes_per_client)):
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0")
        for name, v in (("max_sessions_per_client", max_sessions_per_client),
                        ("max_contexts_per_client", max_contexts_per_client)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1")
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be > 0")
        self.server = server
        self.max_kv_bytes = max_kv_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_kv_bytes_per_client = max_kv_bytes_per_client
        self.max_contexts_per_client = max_contexts_per_client
        self.clock = clock
        self.bytes_per_token = server.kv_bytes_per_token
        self._sessions: dict[bytes, ServerSession] = {}
        self._clients: dict[Hashable, ClientUsage] = {}
        self._reserved_tokens = 0
        self.opened = 0
        self.expired = 0
        self.refused_by_quota = 0  #: OPENs and STEPs refused by a per-client cap

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_bytes(self) -> int:
        """KV bytes of all sessions, steps in flight included."""
        return self._reserved_tokens * self.bytes_per_token

    def kv_bytes(self) -> int:
        """KV bytes the sessions' caches hold now (read from the caches)."""
        return sum(s.tail.kv_bytes for s in self._sessions.values())

    def usage(self, client: Hashable) -> ClientUsage:
        """What ``client``'s sessions hold now (a fresh, empty record for a client without
        sessions)."""
        return self._clients.get(client) or ClientUsage()

    def check_contexts(self, client: Hashable | None, context_ids: Iterable) -> None:
        """Refuse (``OVERLOADED``) a session of ``client`` opening with codec contexts
        ``context_ids`` ((codec id, SHA-256) pairs) that would make its sessions hold more
        distinct contexts than its quota; called before a context is uploaded or parsed."""
        cap = self.max_contexts_per_client
        if client is None or cap is None:
            return
        held = self.usage(client).contexts
        new = {c for c in context_ids if c not in held}
        if new and len(held) + len(new) > cap:
            self.refused_by_quota += 1
            raise SessionError(ErrorCode.OVERLOADED, f"this client's sessions hold {len(held)} "
                               f"codec contexts (limit {cap} per client)")

    def open(self, owner: str, sampling: Sampling | None = None,
             contexts: dict | None = None, *, client: Hashable | None = None,
             context_ids: Iterable = ()) -> ServerSession:
        """A new session for client ``owner`` with a 128-bit random id; its steps decode with
        the codec ``contexts`` (id -> context) first. ``client``: the quota key it counts
        against (None: global caps only); ``context_ids``: the (codec id, SHA-256) of its
        ``contexts``, for the per-client context quota."""
        sampling = sampling or Sampling()
        context_ids = tuple(dict.fromkeys(context_ids))
        if len(self._sessions) >= self.max_sessions:
            raise SessionError(ErrorCode.KV_CACHE_FULL,
                               f"{len(self._sessions)} sessions open (limit {self.max_sessions})")
        cap = self.max_sessions_per_client
        if client is not None and cap is not None and self.usage(client).sessions >= cap:
            self.refused_by_quota += 1
            raise SessionError(ErrorCode.KV_CACHE_FULL, f"this client has {cap} sessions open "
                               f"(limit {cap} per client)")
        self._check_fits(client, 1)
        self.check_contexts(client, context_ids)
        sid = secrets.token_bytes(SESSION_ID_BYTES)
        while sid in self._sessions:  # pragma: no cover - 2**-128
            sid = secrets.token_bytes(SESSION_ID_BYTES)
        s = ServerSession(sid, owner, self.server.new_session(), sampling,
                          generator_for(sampling), self.clock(), contexts=dict(contexts or {}),
                          client=client, context_ids=context_ids)
        self._sessions[sid] = s
        if client is not None:
            u = self._clients.setdefault(client, ClientUsage())
            u.sessions += 1
            u.contexts.update(context_ids)
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
        self._check_fits(session.client, tokens)
        session.busy = True
        self._add_tokens(session, tokens)
        session.last_used = self.clock()

    def finish(self, session: ServerSession, tokens: int, ok: bool) -> None:
        """The step reserved with ``tokens`` ended; a failed one gives its tokens back."""
        session.busy = False
        session.last_used = self.clock()
        if ok:
            session.steps += 1
        elif not session.closed:
            self._add_tokens(session, -tokens)

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
        self._add_tokens(s, -s.reserved)
        u = self._clients.get(s.client) if s.client is not None else None
        if u is not None:
            u.sessions -= 1
            u.contexts.subtract(s.context_ids)
            u.contexts = +u.contexts  # forget contexts no session of the client holds
            if u.sessions == 0:
                del self._clients[s.client]
        if not s.busy:  # an in-flight step still uses the cache; it is dropped with s
            s.tail.reset()

    def _add_tokens(self, s: ServerSession, tokens: int) -> None:
        s.reserved += tokens
        self._reserved_tokens += tokens
        if s.client is not None and s.client in self._clients:
            self._clients[s.client].tokens += tokens

    def _check_fits(self, client: Hashable | None, tokens: int) -> None:
        """Refuse (``KV_CACHE_FULL``) ``tokens`` more that would pass the global cap or
        ``client``'s own."""
        need = tokens * self.bytes_per_token
        cap = self.max_kv_bytes
        if cap is not None and self.reserved_bytes + need > cap:
            raise SessionError(ErrorCode.KV_CACHE_FULL, f"KV cache full: {self.reserved_bytes} "
                               f"of {cap} bytes in use, {tokens} more token(s) need {need}")
        cap = self.max_kv_bytes_per_client
        if client is not None and cap is not None:
            held = self.usage(client).tokens * self.bytes_per_token
            if held + need > cap:
                self.refused_by_quota += 1
                raise SessionError(ErrorCode.KV_CACHE_FULL, f"KV cache quota of this client "
                                   f"full: {held} of {cap} bytes in use, {tokens} more "
                                   f"token(s) need {need}")

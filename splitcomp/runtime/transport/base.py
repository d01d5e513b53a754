"""What every transport shares: the handshake's outcome, one connection's answer queue with
its backpressure, and the callback-driven links (picows, asyncio) with their keepalive.

A transport parses HTTP and WebSocket; the :class:`Gate` (the server) decides who may open a
connection and gets each binary message. :class:`Conn` is the connection admission sees
(``send``): answers queue in it and leave in order through its :class:`Link`; more than
``pause_bytes`` queued pauses reading, more than ``max_bytes`` drops them and closes (1008).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from .. import protocol as P

log = logging.getLogger("splitcomp.runtime")

#: bytes of the socket's write buffer above which writing waits
WRITE_LIMIT_BYTES = 32 << 10
#: close code (policy violation) for a connection that left too many answers unread
CLOSE_ANSWERS_UNREAD = 1008
#: close code of a peer that did not answer a ping in time (as websockets closes it)
CLOSE_PING_TIMEOUT = 1011
#: seconds a peer has to answer our close frame before the socket is dropped
CLOSE_TIMEOUT_S = 1.0


@dataclass
class Reply:
    """A plain HTTP answer instead of the upgrade (refusal, /metrics, /healthz)."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class Accept:
    """An accepted handshake: who connects, and the extra headers of the 101 answer."""

    client_id: str
    session: str | None
    headers: list[tuple[str, str]]


@dataclass
class Options:
    """Transport settings the server passes down."""

    max_frame_bytes: int
    ping_interval: float | None


class Gate(Protocol):
    """The server side of a transport."""

    def handshake(self, path: str, header: Callable[[str], str | None]) -> Reply | Accept: ...

    def connected(self, link: Link, accept: Accept, conn_id: Hashable) -> Conn: ...

    def disconnected(self, conn: Conn) -> None: ...


class Link(Protocol):
    """One WebSocket connection as :class:`Conn` drives it."""

    def flush(self) -> None: ...  #: send queued answers while the socket takes them

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self, code: int, reason: str) -> None: ...  #: close frame, then drop past 1 s


class Conn:
    """One client connection (admission's ``Peer``): its answer queue and backpressure.

    Answers queue in :attr:`out` and leave in order through the link. Once more than
    ``pause_bytes`` wait (the client does not read them) the link stops reading requests
    until half of that is left; past ``max_bytes`` the queue is dropped and ``on_overflow``
    closes the connection."""

    __slots__ = ("link", "client_id", "identity", "inflight_key", "pause_bytes", "max_bytes",
                 "on_frame", "on_overflow", "on_pause", "out", "out_bytes", "reading", "closed")

    def __init__(self, link: Link, client_id: str, identity: Hashable, inflight_key: Hashable,
                 on_frame: Callable[[Conn, bytes], str | None], pause_bytes: int = 1 << 20,
                 max_bytes: int = 32 << 20, on_overflow: Callable[[Conn], None] | None = None,
                 on_pause: Callable[[], None] | None = None) -> None:
        self.link = link
        self.client_id = client_id
        self.identity = identity  #: dedup namespace: client id + session (or this connection)
        self.inflight_key = inflight_key  #: whose in-flight limits and fair share it counts in
        self.pause_bytes = pause_bytes
        self.max_bytes = max_bytes
        self.on_frame = on_frame
        self.on_overflow = on_overflow
        self.on_pause = on_pause
        self.out: deque[bytes] = deque()
        self.out_bytes = 0  #: answer bytes queued, the one being written included
        self.reading = True
        self.closed = False

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes > self.max_bytes:  # drop it all and close
            self.closed = True
            self.out.clear()
            self.out_bytes = 0
            self.link.resume_reading()
            if self.on_overflow is not None:
                self.on_overflow(self)
            return
        if self.reading and self.out_bytes > self.pause_bytes:
            self.reading = False
            if self.on_pause is not None:
                self.on_pause()
            self.link.pause_reading()
        self.link.flush()

    def sent(self, nbytes: int) -> None:
        """``nbytes`` of answers left the queue (written to the socket)."""
        self.out_bytes -= nbytes
        if not self.reading and self.out_bytes <= self.pause_bytes // 2:
            self.reading = True
            self.link.resume_reading()

    def received(self, message: bytes) -> bytes | None:
        """A binary message from the client; returns the error frame to send before closing
        (1002) when it has not even a request id."""
        problem = self.on_frame(self, message)
        if problem is None:
            return None
        self.closed = True
        return P.encode_error(P.NO_REQUEST_ID, P.ErrorCode.BAD_FRAME, problem)

    def finish(self) -> None:
        """The connection is gone: drop what is queued."""
        self.closed = True
        self.out.clear()
        self.out_bytes = 0


class StreamLink:
    """A link over an asyncio transport driven by callbacks (picows, asyncio): answers are
    written synchronously while the transport's buffer is under its high-water mark, the rest
    wait in the :class:`Conn` queue until ``resume_writing``. Subclasses frame the bytes."""

    conn: Conn | None
    write_paused: bool
    closing: bool  #: our close frame is sent (or the peer's answered): no more answers
    awaiting_pong: bool
    _abort_timer: asyncio.TimerHandle | None

    def _init_link(self) -> None:
        self.conn = None
        self.write_paused = False
        self.closing = False
        self.awaiting_pong = False
        self._abort_timer = None

    # implemented by each transport
    def _write_binary(self, data: bytes) -> None: raise NotImplementedError  # noqa: E704
    def _write_close(self, code: int, reason: str) -> None: raise NotImplementedError  # noqa: E704
    def _write_ping(self) -> None: raise NotImplementedError  # noqa: E704
    def _raw(self) -> asyncio.BaseTransport: raise NotImplementedError  # noqa: E704

    def flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        out = conn.out
        while out and not self.write_paused and not self.closing:
            frame = out.popleft()
            self._write_binary(frame)
            conn.sent(len(frame))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    def pause_reading(self) -> None:
        raw = self._raw()
        if not raw.is_closing():
            raw.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        raw = self._raw()
        if not raw.is_closing():
            raw.resume_reading()  # type: ignore[attr-defined]

    def fail(self, error_frame: bytes, code: int, reason: str) -> None:
        """Send ``error_frame`` (ahead of queued answers), then close."""
        self._write_binary(error_frame)
        self.close(code, reason)

    def close(self, code: int, reason: str, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send a close frame; the socket closes when the peer answers it, or is dropped after
        ``timeout_s``."""
        if self.closing:
            return
        self.closing = True
        if self.conn is not None:
            self.conn.closed = True
        raw = self._raw()
        if raw.is_closing():
            return
        self.resume_reading()  # to read the peer's close frame
        self._write_close(code, reason)
        self._abort_timer = asyncio.get_running_loop().call_later(timeout_s, raw.abort)

    def closed_by_peer(self) -> None:
        """The peer's close frame came (an answer to ours, or its own, answered already)."""
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self._raw().close()

    def lost(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.closing = True

    def keepalive(self) -> None:
        """One keepalive round: close a peer that did not answer the last ping, ping it."""
        if self.closing:
            return
        if self.awaiting_pong:
            self.close(CLOSE_PING_TIMEOUT, "keepalive ping timeout")
            return
        self.awaiting_pong = True
        self._write_ping()


class StreamServer:
    """The listening side of the callback transports: the open links, their keepalive,
    graceful close and the listening socket (an ``asyncio.Server``)."""

    def __init__(self, gate: Gate, options: Options) -> None:
        self.gate = gate
        self.options = options
        self.links: set[StreamLink] = set()
        self.server: asyncio.AbstractServer | None = None
        self._keepalive: asyncio.Task | None = None
        self._empty = asyncio.Event()

    def started(self, server: asyncio.AbstractServer) -> int:
        self.server = server
        if self.options.ping_interval:
            self._keepalive = asyncio.get_running_loop().create_task(self._ping_loop())
        return server.sockets[0].getsockname()[1]

    def pending(self) -> int:
        return 0

    def link_opened(self, link: StreamLink) -> None:
        self.links.add(link)
        self._empty.clear()

    def link_closed(self, link: StreamLink) -> None:
        self.links.discard(link)
        if not self.links:
            self._empty.set()

    async def _ping_loop(self) -> None:
        assert self.options.ping_interval
        while True:
            await asyncio.sleep(self.options.ping_interval)
            for link in list(self.links):
                try:
                    link.keepalive()
                except Exception:  # pragma: no cover - never expected; keep pinging others
                    log.exception("keepalive failed")

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close_all(self, code: int, reason: str, timeout_s: float) -> None:
        for link in list(self.links):
            link.close(code, reason, timeout_s)
        if self.links:
            try:
                await asyncio.wait_for(self._empty.wait(), timeout_s + 0.5)
            except TimeoutError:
                log.warning("%d connection(s) still open after the grace period: dropped",
                            len(self.links))
                for link in list(self.links):
                    link._raw().abort()
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.server = None

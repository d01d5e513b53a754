"""The embedded server's transport: one process, asyncio, WebSocket binary frames
(``docs/protocol.md``).

:class:`Server` owns the sockets: the handshake (bearer token checked, nothing decoded
before), ``GET /metrics`` (Prometheus text) and ``GET /healthz`` on the same port, one read
loop and one writer task per connection with backpressure (a connection whose answers are not
read is not read either, and is closed past a bound), and the lifecycle (start, graceful stop,
serve until a signal). What happens to a received frame is not its job:
:class:`~.admission.Admission` admits it (routing, limits, dedup) to a
:class:`~.service.Service` (a vision
:class:`~.deployment.Deployment`, an :class:`~.llm.LLMDeployment`), whose batches the
:class:`~.scheduling.Scheduler` runs in one worker thread per service while the event loop
keeps serving; answers come back through each connection's writer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import protocol as P
from .admission import Admission
from .auth import Tokens
from .dedup import DedupCache
from .deployment import Deployment
from .llm.service import LLMDeployment
from .loop_thread import LoopThread
from .scheduling import Scheduler
from .service import Service, Work
from .stats import CONTENT_TYPE, ServerMetrics
from .tls import TlsLike, server_context

log = logging.getLogger("splitcomp.runtime")

_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Services = Service | Iterable[Service] | Mapping[str, Service]

#: received frames a connection may hold unread, in bytes: websockets' queue of incoming
#: frames is sized from it and the largest frame (2 to 64 frames)
INPUT_BUFFER_BYTES = 16 << 20
#: bytes of the socket's write buffer above which sending waits (websockets' write_limit)
WRITE_LIMIT_BYTES = 32 << 10
#: close code (policy violation) for a connection that left too many answers unread
CLOSE_ANSWERS_UNREAD = 1008


def input_queue_frames(max_frame_bytes: int) -> int:
    """How many received frames a connection buffers before it stops reading the socket."""
    return max(2, min(64, INPUT_BUFFER_BYTES // max(max_frame_bytes, 1)))


@dataclass(eq=False)
class _Conn:
    """One client connection and its writer: answers are queued and sent in order by one
    task, so a slow client never holds up the event loop or other clients.

    Backpressure: once more than ``pause_bytes`` of answers wait to be sent (the client is not
    reading them), :attr:`resume` is cleared and the server reads no more requests from it
    until half of that is left; past ``max_bytes`` the queue is dropped and
    ``on_overflow`` closes the connection."""

    ws: ServerConnection
    client_id: str
    identity: Hashable  #: dedup namespace: client id + session (or this connection)
    inflight_key: Hashable  #: whose in-flight limits and fair share this connection counts in
    pause_bytes: int = 1 << 20
    max_bytes: int = 32 << 20
    on_overflow: Callable[[_Conn], None] | None = None
    out: deque = field(default_factory=deque)
    out_bytes: int = 0  #: answer bytes queued, the one being written included
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)  #: set: reading allowed
    closed: bool = False
    closer: asyncio.Task | None = None  #: closing it for unread answers

    def __post_init__(self) -> None:
        self.resume.set()

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes > self.max_bytes:  # drop it all, wake the reader and writer to end
            self.closed = True
            self.out.clear()
            self.out_bytes = 0
            self.resume.set()
            if self.on_overflow is not None:
                self.on_overflow(self)
        elif self.out_bytes > self.pause_bytes:
            self.resume.clear()
        self.wake.set()

    async def write_loop(self) -> None:
        out, wake, ws = self.out, self.wake, self.ws
        try:
            while not self.closed:
                await wake.wait()
                wake.clear()
                while out and not self.closed:
                    frame = out[0]
                    await ws.send(frame)  # waits while the socket's write buffer is full
                    if self.closed:
                        break
                    out.popleft()
                    self.out_bytes -= len(frame)
                    if self.out_bytes <= self.pause_bytes // 2:
                        self.resume.set()
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - never expected; keep the server up
            log.exception("writer failed")
        finally:
            self.closed = True
            out.clear()
            self.out_bytes = 0
            self.resume.set()


class Server:
    """Serve one or more :class:`~.service.Service` s (vision deployments, LLM deployments)
    to many clients over WebSocket.

    ``deployments`` and ``llm``: the services, by their names (unique across both; ``llm`` is
    kept for callers that pass LLM deployments apart). ``tokens``: a :class:`Tokens`, a
    tokens-file path or a ``{client_id: token}`` mapping; None leaves the server open (every
    client is ``anonymous``). ``tls``: an ``ssl.SSLContext`` or ``(cert path, key path)``.
    ``max_frame_bytes``: larger frames close the connection (code 1009).
    ``max_inflight_per_client``, ``max_inflight_bytes_per_client`` and ``max_queue`` (per
    service) bound the work a client, and all clients, can queue: beyond them requests are
    answered OVERLOADED. A client is its token's identity (without tokens: its session, else
    its connection); clients share each service's worker fairly, by request bytes
    (``max_batch_bytes`` per batch, ``fair_grace_ms``: :mod:`.batching`). Requests queued
    longer than ``request_timeout_s`` are answered TIMEOUT without running. A connection that
    leaves more than ``output_pause_bytes`` of answers unread is not read from until it
    catches up, and is closed (1008) past ``max_output_bytes``. ``dedup_*`` size the memory
    of recent answers (see :mod:`.dedup`). ``metrics_public``: serve ``/metrics`` without a
    token (with tokens it takes a valid one by default; ``/healthz`` is always open).
    """

    def __init__(self, deployments: Services = (), host: str = "127.0.0.1", port: int = 0, *,
                 tokens: Tokens | str | Path | Mapping[str, str] | None = None,
                 tls: TlsLike = None, max_frame_bytes: int = 16 << 20,
                 max_inflight_per_client: int = 256,
                 max_inflight_bytes_per_client: int = 64 << 20,
                 max_queue: int = 4096, max_connections: int = 10_000,
                 request_timeout_s: float = 30.0,
                 max_batch_bytes: int = 8 << 20, fair_grace_ms: float = 5.0,
                 output_pause_bytes: int = 1 << 20, max_output_bytes: int = 32 << 20,
                 dedup_entries: int = 65536, dedup_bytes: int = 64 << 20,
                 dedup_ttl_s: float = 60.0, metrics_public: bool = False,
                 ping_interval: float | None = 20.0,
                 llm: Iterable[Service] = ()) -> None:
        if isinstance(deployments, Service):
            deployments = [deployments]
        elif isinstance(deployments, Mapping):
            deployments = list(deployments.values())
        self.services: dict[str, Service] = {}
        for s in [*deployments, *llm]:
            if s.name in self.services:
                raise ValueError(f"two deployments named {s.name!r}")
            self.services[s.name] = s
        if not self.services:
            raise ValueError("no deployment to serve")
        if tokens is not None and not isinstance(tokens, Tokens):
            tokens = Tokens.load(tokens) if isinstance(tokens, (str, Path)) else Tokens(tokens)
        self.tokens: Tokens | None = tokens
        self.host = host
        self.port = port
        self.ssl = server_context(tls)
        if not 0 < output_pause_bytes <= max_output_bytes:
            raise ValueError("need 0 < output_pause_bytes <= max_output_bytes")
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.output_pause_bytes = output_pause_bytes
        self.max_output_bytes = max_output_bytes
        self.metrics_public = metrics_public
        self.ping_interval = ping_interval
        self._conns: set[_Conn] = set()
        self._closing: set[asyncio.Task] = set()  #: closes of connections that overflowed
        # accepted handshakes waiting for their handler (weak: a connection lost in between
        # leaves nothing behind)
        self._handshakes: weakref.WeakKeyDictionary[ServerConnection, tuple[str, str | None]] = (
            weakref.WeakKeyDictionary())
        self.metrics = ServerMetrics(
            inflight=lambda: self.admission.inflight.total,
            connections=lambda: len(self._conns), loop_cpu=self._loop_cpu,
            inflight_bytes=lambda: self.admission.inflight.total_bytes,
            output_bytes=self.output_bytes, deferrals=lambda: self.scheduler.deferrals())
        for s in self.services.values():
            s.attach(self.metrics.registry)
        self.dedup = DedupCache(dedup_entries, dedup_bytes, dedup_ttl_s)
        self.scheduler = Scheduler(self.services.values(), self.metrics, self._answer,
                                   request_timeout_s, max_batch_bytes=max_batch_bytes,
                                   fair_grace_s=fair_grace_ms / 1000.0)
        self.admission = Admission(self.services.values(), self.scheduler, self.metrics,
                                   self.dedup, max_inflight_per_client=max_inflight_per_client,
                                   max_inflight_bytes_per_client=max_inflight_bytes_per_client,
                                   max_queue=max_queue)
        self._ws_server: Any = None
        self._loop_thread: int | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def deployments(self) -> dict[str, Deployment]:
        """The vision deployments served, by name."""
        return {n: s for n, s in self.services.items() if isinstance(s, Deployment)}

    @property
    def llm(self) -> dict[str, LLMDeployment]:
        """The LLM deployments served, by name."""
        return {n: s for n, s in self.services.items() if isinstance(s, LLMDeployment)}

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS); the bound port once started."""
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (returns once listening; ``port`` then holds the real port)."""
        if self._ws_server is not None:
            raise RuntimeError("server already started")
        self._loop_thread = threading.get_ident()
        self.admission.draining = False
        self._stopped = asyncio.Event()
        self.scheduler.start()
        self._ws_server = await ws_serve(
            self._handler, self.host, self.port, ssl=self.ssl,
            process_request=self._process_request, process_response=self._process_response,
            max_size=self.max_frame_bytes, compression=None,
            max_queue=input_queue_frames(self.max_frame_bytes), write_limit=WRITE_LIMIT_BYTES,
            ping_interval=self.ping_interval, server_header="splitcomp",
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        log.info("serving %s at %s", ", ".join(self.services), self.url)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Graceful shutdown: stop accepting connections, answer new requests UNAVAILABLE,
        finish the queued ones (up to ``grace_s``), then close connections (1001)."""
        if self._ws_server is None:
            return
        if self.admission.draining:
            assert self._stopped is not None
            await self._stopped.wait()
            return
        self.admission.draining = True
        deadline = time.monotonic() + grace_s
        self._ws_server.server.close()  # stop listening: the port is free for a restart
        await self.scheduler.drain(deadline)
        while any(c.out for c in self._conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._ws_server.close(code=P.CLOSE_GOING_AWAY, reason="server shutting down")
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(),
                                   max(deadline - time.monotonic(), 1.0))
        except TimeoutError:  # peers that never finish closing: stop waiting for them
            lingering = list(self._ws_server.handler_tasks)
            log.warning("%d connection(s) still open after the grace period: dropped",
                        len(lingering))
            for c in self._conns:
                c.ws.transport.abort()
            for task in lingering:
                task.cancel()
            await asyncio.wait(lingering, timeout=1.0)
        if self._closing:
            await asyncio.wait(self._closing, timeout=2.0)
        for service, work in await self.scheduler.stop():
            service.settle(work, False)
            self._answer(service, work, P.encode_error(work.request_id, P.ErrorCode.UNAVAILABLE,
                                                       "server shutting down"), False)
        self.scheduler.close()
        self._ws_server = None
        assert self._stopped is not None
        self._stopped.set()
        log.info("server stopped")

    async def serve_forever(self, announce: bool = False) -> None:
        """Start, then serve until SIGINT/SIGTERM (or cancellation), then stop gracefully.
        ``announce``: print the services and ``listening on URL`` to stdout once listening
        (what ``splitcomp serve`` shows and scripts read)."""
        await self.start()
        if announce:
            for s in self.services.values():
                print(f"deployment {s!r}", flush=True)
            print(f"listening on {self.url} (metrics: GET /metrics)", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            await stop.wait()
        finally:
            if announce:
                print("shutting down", file=sys.stderr, flush=True)
            await self.stop()

    def start_in_thread(self, timeout_s: float = 30.0) -> BackgroundServer:
        """Run this server on its own event loop in a daemon thread (tests, demos)."""
        return BackgroundServer(self, timeout_s)

    def output_bytes(self) -> int:
        """Answer bytes queued on all connections (read on the server's loop)."""
        return sum(c.out_bytes for c in self._conns)

    def _loop_cpu(self) -> float:
        """CPU seconds of the event-loop thread (metrics render on that thread)."""
        return time.thread_time() if self._loop_thread == threading.get_ident() else math.nan

    # -- handshake -------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            if not self.metrics_public and self._client_of(request) is None:
                return self._refuse(connection, "unauthorized")
            resp = connection.respond(HTTPStatus.OK, self.metrics.render())
            del resp.headers["Content-Type"]
            resp.headers["Content-Type"] = CONTENT_TYPE
            return resp
        if self.admission.draining:
            self.metrics.handshakes_refused.inc(("shutting_down",))
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        if len(self._conns) + len(self._handshakes) >= self.max_connections:
            self.metrics.handshakes_refused.inc(("too_many_connections",))
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        client_id = self._client_of(request)
        if client_id is None:
            return self._refuse(connection, "unauthorized")
        session = request.headers.get(P.HEADER_SESSION)
        if session is not None and not _SESSION_RE.match(session):
            self.metrics.handshakes_refused.inc(("bad_session",))
            return connection.respond(HTTPStatus.BAD_REQUEST,
                                      f"{P.HEADER_SESSION}: 1-64 characters [A-Za-z0-9_-]\n")
        self._handshakes[connection] = (client_id, session)
        return None

    def _process_response(self, connection: ServerConnection, request: Request,
                          response: Response) -> None:
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            response.headers[P.HEADER_MAX_FRAME] = str(self.max_frame_bytes)
            response.headers[P.HEADER_PROTOCOL] = str(P.VERSION)
        else:
            self._handshakes.pop(connection, None)

    def _client_of(self, request: Request) -> str | None:
        if self.tokens is None:
            return "anonymous"
        return self.tokens.authenticate(request.headers.get("Authorization"))

    def _refuse(self, connection: ServerConnection, reason: str) -> Response:
        self.metrics.handshakes_refused.inc((reason,))
        resp = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token\n")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="splitcomp"'
        return resp

    # -- frames ----------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        meta = self._handshakes.pop(ws, None)
        if meta is None:  # pragma: no cover - every accepted handshake recorded one
            await ws.close(P.CLOSE_PROTOCOL_ERROR, "no handshake record")
            return
        client_id, session = meta
        identity = (client_id, session) if session else (client_id, "connection", ws.id)
        inflight_key = client_id if self.tokens is not None else identity
        conn = _Conn(ws, client_id, identity, inflight_key, self.output_pause_bytes,
                     self.max_output_bytes, self._overflowed)
        self._conns.add(conn)
        self.metrics.connections_total.inc()
        writer = asyncio.create_task(conn.write_loop())
        on_frame = self.admission.on_frame
        try:
            while not conn.closed:
                if not conn.resume.is_set():  # answers pile up unread: stop reading requests
                    self.metrics.reads_paused.inc()
                    await conn.resume.wait()
                    continue
                frame = await ws.recv()
                if isinstance(frame, str):
                    await ws.close(P.CLOSE_UNSUPPORTED_DATA, "binary frames only")
                    break
                problem = on_frame(conn, frame)
                if problem is not None:  # not even a request id: answer id 0 and hang up
                    await ws.send(P.encode_error(P.NO_REQUEST_ID, P.ErrorCode.BAD_FRAME, problem))
                    await ws.close(P.CLOSE_PROTOCOL_ERROR, "unparsable frame")
                    break
            if conn.closer is not None:
                await conn.closer
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
        finally:
            conn.closed = True
            writer.cancel()
            self._conns.discard(conn)

    def _overflowed(self, conn: _Conn) -> None:
        """``conn`` left more than ``max_output_bytes`` unread: its answers are dropped and
        the connection closed (1008; after websockets' close timeout if it never reads)."""
        self.metrics.output_overflows.inc()
        log.warning("closing a connection of %r: more than %d answer bytes unread",
                    conn.client_id, self.max_output_bytes)
        task = conn.closer = asyncio.get_running_loop().create_task(_close_unread(conn.ws))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _answer(self, service: Service, work: Work, frame: bytes, ok: bool) -> None:
        self.admission.answer(service, work, frame, ok)


async def _close_unread(ws: ServerConnection) -> None:
    """Close (1008) a connection whose answers are not read; a peer that does not read
    the close frame either is dropped after a second."""
    try:
        await asyncio.wait_for(ws.close(CLOSE_ANSWERS_UNREAD, "answers not read"), 1.0)
    except TimeoutError:
        ws.transport.abort()


class BackgroundServer:
    """A :class:`Server` on its own event loop in a daemon thread; a context manager.

    ``url`` and ``port`` are valid once constructed; :meth:`stop` shuts it down gracefully.
    """

    def __init__(self, server: Server, timeout_s: float = 30.0) -> None:
        self.server = server
        self._loop = LoopThread("splitcomp-server", timeout_s)
        try:
            self._loop.run(server.start(), timeout_s)
        except BaseException:
            self._loop.stop()
            raise

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Any, *args: Any, timeout_s: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the server's loop (e.g. to read state safely)."""
        return self._loop.call(fn, *args, timeout_s=timeout_s)

    def metrics_text(self) -> str:
        """The ``/metrics`` text, rendered on the server's loop."""
        return self.call(self.server.metrics.render)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server gracefully and end the thread."""
        self._loop.stop(self.server.stop(grace_s), grace_s + 10.0)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(deployments: Services, host: str = "127.0.0.1", port: int = 8765,
          **options: Any) -> None:
    """Serve until SIGINT/SIGTERM (blocking). ``options`` go to :class:`Server`."""
    server = Server(deployments, host, port, **options)
    asyncio.run(server.serve_forever())


__all__ = ["BackgroundServer", "Server", "serve"]

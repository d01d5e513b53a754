"""The embedded server: one process, asyncio, WebSocket binary frames (``docs/protocol.md``).

:class:`Server` decides who connects: the handshake (bearer token checked, nothing decoded
before), ``GET /metrics`` (Prometheus text) and ``GET /healthz`` on the same port; it gives
each connection its answer queue with backpressure (a connection whose answers are not read
is not read either, and is closed past a bound: :class:`~.transport.Conn`), and owns the
lifecycle (start, graceful stop, serve until a signal). The sockets and the WebSocket framing
are a :mod:`.transport` chosen by name (``websockets``, ``picows``, ``asyncio``). What
happens to a received frame is not its job: :class:`~.admission.Admission` admits it (routing,
limits, dedup) to a :class:`~.service.Service` (a vision
:class:`~.deployment.Deployment`, an :class:`~.llm.LLMDeployment`), whose batches the
:class:`~.scheduling.Scheduler` runs in one worker thread per service while the event loop
keeps serving; answers come back through each connection's writer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from .. import codecs as _codecs
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
from .transport import DEFAULT as DEFAULT_TRANSPORT
from .transport import Accept, Conn, Link, Options, Reply, Transport, transport_class
from .transport.base import CLOSE_ANSWERS_UNREAD

log = logging.getLogger("splitcomp.runtime")

_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Services = Service | Iterable[Service] | Mapping[str, Service]

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
    ``transport``: ``websockets``, ``picows`` or ``asyncio`` (:mod:`.transport`; default
    :data:`~.transport.DEFAULT`), each with TLS and the same wire bytes.
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
                 ping_interval: float | None = 20.0, transport: str | None = None,
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
        self.transport_name = transport or DEFAULT_TRANSPORT
        self._transport_class = transport_class(self.transport_name)
        self._conns: set[Conn] = set()
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
        self.scheduler.answer_batch = self.admission.answer_batch
        self._transport: Transport | None = None
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
        if self._transport is not None:
            raise RuntimeError("server already started")
        self._loop_thread = threading.get_ident()
        self.admission.draining = False
        self._stopped = asyncio.Event()
        self.scheduler.start()
        self._transport = self._transport_class(
            self, Options(self.max_frame_bytes, self.ping_interval))
        try:
            self.port = await self._transport.start(self.host, self.port, self.ssl)
        except BaseException:
            self._transport = None
            raise
        log.info("serving %s at %s (%s)", ", ".join(self.services), self.url,
                 self.transport_name)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Graceful shutdown: stop accepting connections, answer new requests UNAVAILABLE,
        finish the queued ones (up to ``grace_s``), then close connections (1001)."""
        transport = self._transport
        if transport is None:
            return
        if self.admission.draining:
            assert self._stopped is not None
            await self._stopped.wait()
            return
        self.admission.draining = True
        deadline = time.monotonic() + grace_s
        transport.stop_listening()  # the port is free for a restart
        await self.scheduler.drain(deadline)
        while any(c.out for c in self._conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await transport.close_all(P.CLOSE_GOING_AWAY, "server shutting down",
                                  max(deadline - time.monotonic(), 1.0))
        for service, work in await self.scheduler.stop():
            service.settle(work, False)
            self._answer(service, work, P.encode_error(work.request_id, P.ErrorCode.UNAVAILABLE,
                                                       "server shutting down"), False)
        self.scheduler.close()
        self._transport = None
        assert self._stopped is not None
        self._stopped.set()
        log.info("server stopped")

    async def serve_forever(self, announce: bool = False, tune: bool = True) -> None:
        """Start, then serve until SIGINT/SIGTERM (or cancellation), then stop gracefully.
        ``announce``: print the services and ``listening on URL`` to stdout once listening
        (what ``splitcomp serve`` shows and scripts read). ``tune``: compile (or load) the
        codecs' kernels first, so the first requests do not pay for it (~1 s from numba's
        cache, ~60 s cold: :func:`splitcomp.codecs.warm_up`), and once started tune the
        process for serving (:func:`tune_process`)."""
        if tune:
            _codecs.warm_up()
        await self.start()
        if tune:
            tune_process()
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

    # -- the transport's gate --------------------------------------------------------
    def handshake(self, path: str, header: Callable[[str], str | None]) -> Reply | Accept:
        """Who may connect (:class:`~.transport.Gate`): a plain HTTP reply for /healthz,
        /metrics and refusals (before any frame is read), else the accepted client."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return Reply(HTTPStatus.OK, b"ok\n")
        if path == "/metrics":
            if not self.metrics_public and self._client_of(header) is None:
                return self._refuse("unauthorized")
            return Reply(HTTPStatus.OK, self.metrics.render().encode(), content_type=CONTENT_TYPE)
        if self.admission.draining:
            self.metrics.handshakes_refused.inc(("shutting_down",))
            return Reply(HTTPStatus.SERVICE_UNAVAILABLE, b"server shutting down\n")
        assert self._transport is not None
        if len(self._conns) + self._transport.pending() >= self.max_connections:
            self.metrics.handshakes_refused.inc(("too_many_connections",))
            return Reply(HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n")
        client_id = self._client_of(header)
        if client_id is None:
            return self._refuse("unauthorized")
        session = header(P.HEADER_SESSION.lower())
        if session is not None and not _SESSION_RE.match(session):
            self.metrics.handshakes_refused.inc(("bad_session",))
            return Reply(HTTPStatus.BAD_REQUEST,
                         f"{P.HEADER_SESSION}: 1-64 characters [A-Za-z0-9_-]\n".encode())
        return Accept(client_id, session, [(P.HEADER_MAX_FRAME, str(self.max_frame_bytes)),
                                           (P.HEADER_PROTOCOL, str(P.VERSION))])

    def _client_of(self, header: Callable[[str], str | None]) -> str | None:
        if self.tokens is None:
            return "anonymous"
        return self.tokens.authenticate(header("authorization"))

    def _refuse(self, reason: str) -> Reply:
        self.metrics.handshakes_refused.inc((reason,))
        return Reply(HTTPStatus.UNAUTHORIZED, b"missing or invalid bearer token\n",
                     [("WWW-Authenticate", 'Bearer realm="splitcomp"')])

    def connected(self, link: Link, accept: Accept, conn_id: Hashable) -> Conn:
        """A connection opened (:class:`~.transport.Gate`): its :class:`Conn`."""
        client_id, session = accept.client_id, accept.session
        identity = (client_id, session) if session else (client_id, "connection", conn_id)
        inflight_key = client_id if self.tokens is not None else identity
        conn = Conn(link, client_id, identity, inflight_key, self.admission.on_frame,
                    self.output_pause_bytes, self.max_output_bytes, self._overflowed,
                    self.metrics.reads_paused.inc)
        self._conns.add(conn)
        self.metrics.connections_total.inc()
        return conn

    def disconnected(self, conn: Conn) -> None:
        conn.finish()
        self._conns.discard(conn)

    def _overflowed(self, conn: Conn) -> None:
        """``conn`` left more than ``max_output_bytes`` unread: its answers are dropped and
        the connection closed (1008; dropped after a second if it never reads)."""
        self.metrics.output_overflows.inc()
        log.warning("closing a connection of %r: more than %d answer bytes unread",
                    conn.client_id, self.max_output_bytes)
        conn.link.close(CLOSE_ANSWERS_UNREAD, "answers not read")

    def _answer(self, service: Service, work: Work, frame: bytes, ok: bool) -> None:
        self.admission.answer(service, work, frame, ok)


def tune_process() -> None:
    """Process-wide settings for a process that serves (what ``serve_forever`` applies):
    every object alive (models, modules: hundreds of thousands) leaves the cyclic garbage
    collector's reach (``gc.freeze``), so its full collections, which the requests'
    allocations trigger every few seconds under load, scan only what serving allocates
    (before: about 0.15 s of CPU each, 16-24 us per request at 64 clients); and its young
    generation is collected every 10,000 allocations instead of 700, so the objects of the
    requests in flight are traversed less often (3.1 -> 0.8 us per request)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


#: allocations between collections of the young generation in a serving process
YOUNG_GC_THRESHOLD = 10_000


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


__all__ = ["BackgroundServer", "Server", "serve", "tune_process"]

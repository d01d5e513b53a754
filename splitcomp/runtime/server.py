"""The embedded server: one process, asyncio, WebSocket binary frames (see ``docs/protocol.md``).

Data path: handshake (bearer token checked, nothing decoded before) -> frame parsed
(:mod:`.protocol`) -> deduplicated (:mod:`.dedup`) -> queued per deployment
(:mod:`.batching`) -> a worker thread per deployment decodes, stacks and runs the tail
(:func:`.handler.answer_batch`) while the event loop keeps serving -> each waiter answered
through its connection's writer task. ``GET /metrics`` on the same port serves Prometheus
text; ``GET /healthz`` answers ``ok``.

LLM deployments (:class:`splitcomp.runtime.llm.service.LLMDeployment`) take LLM frames (type 0x02):
OPEN and CLOSE are answered on the event loop; STEPs are checked against their session (owner,
KV-cache cap) there, queued per deployment, and each batch runs in the deployment's worker
thread (:meth:`LLMDeployment.run_steps`: one tail forward for all single-token steps).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import protocol as P
from .auth import Tokens
from .batching import Batcher
from .dedup import DedupCache, InFlight
from .deployment import BatchReport, Deployment
from .errors import RequestError
from .handler import answer_batch
from .stats import CONTENT_TYPE, Counter, Gauge, ServerMetrics
from .tls import TlsLike, server_context

if TYPE_CHECKING:
    from .llm.service import LLMDeployment

log = logging.getLogger("splitcomp.runtime")

_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(eq=False)
class _Conn:
    """One client connection and its writer: responses are queued and sent in order by one
    task, so a slow client never holds up the event loop or other clients."""

    ws: ServerConnection
    client_id: str
    identity: Hashable  #: dedup namespace: client id + session (or this connection)
    inflight_key: Hashable  #: whose in-flight limit this connection counts against
    out: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.out.append(frame)
            self.wake.set()

    async def write_loop(self) -> None:
        out, wake, ws = self.out, self.wake, self.ws
        try:
            while True:
                await wake.wait()
                wake.clear()
                while out:
                    await ws.send(out.popleft())
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - never expected; keep the server up
            log.exception("writer failed")
        finally:
            self.closed = True
            out.clear()


@dataclass(eq=False, slots=True)
class _Item:
    """A queued request."""

    request_id: int
    data: memoryview
    key: Hashable
    inflight_key: Hashable
    arrival: float  #: time.perf_counter() when its frame was parsed


@dataclass(eq=False, slots=True)
class _StepItem(_Item):
    """A queued LLM STEP (``data`` is the frame)."""

    request: Any = None  #: the parsed :class:`~.protocol.LLMRequest`
    session: Any = None  #: its :class:`~splitcomp.runtime.llm.sessions.ServerSession`


class Server:
    """Serve one or more :class:`Deployment` s to many clients over WebSocket.

    ``tokens``: a :class:`Tokens`, a tokens-file path or a ``{client_id: token}`` mapping;
    None leaves the server open (every client is ``anonymous``). ``tls``: an
    ``ssl.SSLContext`` or ``(cert path, key path)``. ``max_frame_bytes``: larger frames close
    the connection (code 1009). ``max_inflight_per_client`` and ``max_queue`` (per
    deployment) bound the work a client, and all clients, can queue: beyond them requests are
    answered OVERLOADED. Requests queued longer than ``request_timeout_s`` are answered
    TIMEOUT without running. ``dedup_*`` size the memory of recent answers (see
    :mod:`.dedup`). ``metrics_public``: serve ``/metrics`` without a token.
    ``llm``: LLM deployments (:class:`~splitcomp.runtime.llm.service.LLMDeployment`) served beside
    the tails, under names of their own.
    """

    def __init__(self, deployments: Deployment | Iterable[Deployment] | Mapping[str, Deployment]
                 = (), host: str = "127.0.0.1", port: int = 0, *,
                 tokens: Tokens | str | Path | Mapping[str, str] | None = None,
                 tls: TlsLike = None,
                 max_frame_bytes: int = 16 << 20,
                 max_inflight_per_client: int = 256,
                 max_queue: int = 4096,
                 max_connections: int = 10_000,
                 request_timeout_s: float = 30.0,
                 dedup_entries: int = 65536, dedup_bytes: int = 64 << 20,
                 dedup_ttl_s: float = 60.0,
                 metrics_public: bool = True,
                 ping_interval: float | None = 20.0,
                 llm: Iterable[LLMDeployment] = ()) -> None:
        if isinstance(deployments, Deployment):
            deployments = [deployments]
        elif isinstance(deployments, Mapping):
            deployments = list(deployments.values())
        self.deployments: dict[str, Deployment] = {}
        for d in deployments:
            if d.name in self.deployments:
                raise ValueError(f"two deployments named {d.name!r}")
            self.deployments[d.name] = d
        self.llm: dict[str, LLMDeployment] = {}
        for d in llm:
            if d.name in self.deployments or d.name in self.llm:
                raise ValueError(f"two deployments named {d.name!r}")
            self.llm[d.name] = d
        if not self.deployments and not self.llm:
            raise ValueError("no deployment to serve")
        if tokens is not None and not isinstance(tokens, Tokens):
            tokens = Tokens.load(tokens) if isinstance(tokens, (str, Path)) else Tokens(tokens)
        self.tokens: Tokens | None = tokens
        self.host = host
        self.port = port
        self.ssl = server_context(tls)
        self.max_frame_bytes = max_frame_bytes
        self.max_inflight_per_client = max_inflight_per_client
        self.max_queue = max_queue
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.metrics_public = metrics_public
        self.ping_interval = ping_interval
        self.dedup = DedupCache(dedup_entries, dedup_bytes, dedup_ttl_s)
        self._inflight: dict[Hashable, int] = {}
        self._inflight_total = 0
        self._conns: set[_Conn] = set()
        # accepted handshakes waiting for their handler (weak: a connection lost in between
        # leaves nothing behind)
        self._handshakes: weakref.WeakKeyDictionary[ServerConnection, tuple[str, str | None]] = (
            weakref.WeakKeyDictionary())
        self.metrics = ServerMetrics(inflight=lambda: self._inflight_total,
                                     connections=lambda: len(self._conns),
                                     loop_cpu=self._loop_cpu)
        self._llm_metrics()
        self._expiry: asyncio.Task | None = None
        self._batchers: dict[str, Batcher[_Item]] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._ws_server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._draining = False
        self._stopped: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS); the bound port once started."""
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (returns once listening; ``port`` then holds the real port)."""
        if self._ws_server is not None:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._draining = False
        self._stopped = asyncio.Event()
        for name, dep in self.deployments.items():
            self._executors[name] = ThreadPoolExecutor(1, thread_name_prefix=f"tail-{name}")
            b = Batcher(partial(self._process, dep), dep.max_batch_size,
                        dep.max_wait_ms / 1000.0, name)
            b.start()
            self._batchers[name] = b
        for name, llm in self.llm.items():
            self._executors[name] = ThreadPoolExecutor(1, thread_name_prefix=f"llm-{name}")
            b = Batcher(partial(self._process_steps, llm), llm.max_batch_size,
                        llm.max_wait_ms / 1000.0, name)
            b.start()
            self._batchers[name] = b
        if self.llm:
            self._expiry = asyncio.create_task(self._expire_sessions())
        self._ws_server = await ws_serve(
            self._handler, self.host, self.port, ssl=self.ssl,
            process_request=self._process_request, process_response=self._process_response,
            max_size=self.max_frame_bytes, compression=None, max_queue=64,
            ping_interval=self.ping_interval, server_header="splitcomp",
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        log.info("serving %s at %s", ", ".join(self.deployments), self.url)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Graceful shutdown: stop accepting connections, answer new requests UNAVAILABLE,
        finish the queued ones (up to ``grace_s``), then close connections (1001)."""
        if self._ws_server is None:
            return
        if self._draining:
            assert self._stopped is not None
            await self._stopped.wait()
            return
        self._draining = True
        deadline = time.monotonic() + grace_s
        self._ws_server.server.close()  # stop listening: the port is free for a restart
        for b in self._batchers.values():
            await b.drain(max(deadline - time.monotonic(), 0.0))
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
            for task in lingering:
                task.cancel()
            await asyncio.wait(lingering, timeout=1.0)
        for name, b in self._batchers.items():
            for item in await b.stop():
                self._answer(name, item, P.encode_error(item.request_id, P.ErrorCode.UNAVAILABLE,
                                                        "server shutting down"), ok=False)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for llm in self.llm.values():
            llm.sessions.close_all()
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._batchers.clear()
        self._executors.clear()
        self._ws_server = None
        assert self._stopped is not None
        self._stopped.set()
        log.info("server stopped")

    async def serve_forever(self) -> None:
        """Start, then serve until SIGINT/SIGTERM (or cancellation), then stop gracefully."""
        await self.start()
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
            await self.stop()

    def start_in_thread(self, timeout_s: float = 30.0) -> BackgroundServer:
        """Run this server on its own event loop in a daemon thread (tests, demos)."""
        return BackgroundServer(self, timeout_s)

    def _loop_cpu(self) -> float:
        """CPU seconds of the event-loop thread (metrics render on that thread)."""
        return time.thread_time() if self._loop_thread == threading.get_ident() else math.nan

    # -- handshake -------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in ("/metrics", "/healthz"):
            if not self.metrics_public and self._client_of(request) is None:
                return self._refuse(connection, "unauthorized")
            if path == "/healthz":
                return connection.respond(HTTPStatus.OK, "ok\n")
            resp = connection.respond(HTTPStatus.OK, self.metrics.render())
            del resp.headers["Content-Type"]
            resp.headers["Content-Type"] = CONTENT_TYPE
            return resp
        if self._draining:
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
        conn = _Conn(ws, client_id, identity, inflight_key)
        self._conns.add(conn)
        self.metrics.connections_total.inc()
        writer = asyncio.create_task(conn.write_loop())
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    await ws.close(P.CLOSE_UNSUPPORTED_DATA, "binary frames only")
                    break
                problem = self._on_frame(conn, frame)
                if problem is not None:  # not even a request id: answer id 0 and hang up
                    await ws.send(P.encode_error(P.NO_REQUEST_ID, P.ErrorCode.BAD_FRAME, problem))
                    await ws.close(P.CLOSE_PROTOCOL_ERROR, "unparsable frame")
                    break
        except ConnectionClosed:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
        finally:
            conn.closed = True
            writer.cancel()
            self._conns.discard(conn)

    def _on_frame(self, conn: _Conn, frame: bytes) -> str | None:
        """Route one frame; returns a message when the frame must close the connection."""
        if P.frame_type(frame) == P.TYPE_LLM_REQUEST:
            return self._on_llm_frame(conn, frame)
        m = self.metrics
        try:
            req = P.parse_request(frame)
        except P.FrameError as e:
            return self._bad_frame(conn, frame, e)
        dep = self.deployments.get(req.deployment)
        label = dep.name if dep is not None else ""
        labels = (label,)
        m.requests.inc(labels)
        m.bytes_in.inc(labels, len(frame))
        rid = req.request_id
        if dep is None:
            self._reply_error(conn, label, rid, P.ErrorCode.UNKNOWN_DEPLOYMENT,
                              f"no deployment {req.deployment!r} (serving "
                              f"{', '.join(self.deployments)})")
            return None
        if dep.allowed_clients is not None and conn.client_id not in dep.allowed_clients:
            self._reply_error(conn, label, rid, P.ErrorCode.UNAUTHORIZED,
                              f"client {conn.client_id!r} may not use {dep.name!r}")
            return None
        key = (conn.identity, dep.name, rid)
        if self._replay(conn, key, label, rid):
            return None
        if self._draining:
            self._reply_error(conn, label, rid, P.ErrorCode.UNAVAILABLE, "server shutting down")
            return None
        held = self._inflight.get(conn.inflight_key, 0)
        if held >= self.max_inflight_per_client:
            self._reply_error(conn, label, rid, P.ErrorCode.OVERLOADED,
                              f"{held} requests in flight (limit {self.max_inflight_per_client})")
            return None
        batcher = self._batchers[dep.name]
        if len(batcher) >= self.max_queue:
            self._reply_error(conn, label, rid, P.ErrorCode.OVERLOADED,
                              f"{dep.name!r} has {len(batcher)} requests queued")
            return None
        self._inflight[conn.inflight_key] = held + 1
        self._inflight_total += 1
        self.dedup.begin(key, conn)
        batcher.submit(_Item(rid, req.bitstream, key, conn.inflight_key, time.perf_counter()))
        return None

    def _bad_frame(self, conn: _Conn, frame: bytes, e: P.FrameError) -> str | None:
        """Count and answer an unparsable frame; a message when it must close the connection
        (not even a request id to answer)."""
        m = self.metrics
        m.requests.inc(("",))
        m.bytes_in.inc(("",), len(frame))
        m.error("", P.ErrorCode.BAD_FRAME.name)
        if e.request_id is None:
            return str(e)
        self._reply_error(conn, "", e.request_id, P.ErrorCode.BAD_FRAME, str(e))
        return None

    def _replay(self, conn: _Conn, key: Hashable, label: str, rid: int) -> bool:
        """A retried request id: send the remembered answer, or wait for the one in flight
        (every frame gets its answer, within reason). False when the id is new."""
        seen = self.dedup.lookup(key)
        if seen is None:
            return False
        self.metrics.dedup_hits.inc((label,))
        if isinstance(seen, InFlight):
            if len(seen.waiters) >= self.max_inflight_per_client:
                self._reply_error(conn, label, rid, P.ErrorCode.OVERLOADED,
                                  f"request {rid} re-sent too often while in flight")
            else:
                seen.waiters.append(conn)
        else:
            conn.send(seen)
            self.metrics.bytes_out.inc((label,), len(seen))
        return True

    def _reply_error(self, conn: _Conn, label: str, request_id: int, code: P.ErrorCode,
                     message: str) -> None:
        frame = P.encode_error(request_id, code, message)
        self.metrics.error(label, code.name)
        self.metrics.bytes_out.inc((label,), len(frame))
        conn.send(frame)

    # -- batches ---------------------------------------------------------------------
    async def _process(self, dep: Deployment, items: list[_Item]) -> None:
        """Run one batch in the deployment's worker thread, then answer every request."""
        start = time.perf_counter()
        live = self._drop_timed_out(dep.name, items, start)
        if not live:
            return
        assert self._loop is not None
        try:
            report, frames = await self._loop.run_in_executor(
                self._executors[dep.name], answer_batch, dep, [it.request_id for it in live],
                [it.data for it in live], [start - it.arrival for it in live])
        except Exception as e:
            log.exception("batch of %s failed", dep.name)
            for it in live:
                self._answer(dep.name, it, P.encode_error(it.request_id, P.ErrorCode.INTERNAL,
                                                          f"batch failed: {e!r}"[:300]), ok=False)
            return
        self._record(dep.name, live, report, frames, start)

    def _drop_timed_out(self, name: str, items: list, start: float,
                        on_drop: Callable[[Any], object] | None = None) -> list:
        """Answer TIMEOUT to the items queued longer than ``request_timeout_s`` (calling
        ``on_drop`` for each first); returns the others, in order."""
        live = []
        for it in items:
            waited = start - it.arrival
            if waited > self.request_timeout_s:
                if on_drop is not None:
                    on_drop(it)
                self._answer(name, it, P.encode_error(
                    it.request_id, P.ErrorCode.TIMEOUT,
                    f"queued {waited:.1f} s (limit {self.request_timeout_s} s)"), ok=False)
            else:
                live.append(it)
        return live

    def _record_times(self, labels: tuple[str], items: list, report: Any, encode_s: float,
                      start: float) -> None:
        """Batch sizes and time counters of one batch (vision or LLM steps)."""
        m = self.metrics
        for n in report.tail_calls:
            m.batch_size.observe(n, labels)
        m.batch_requests.observe(len(items), labels)
        m.decode_seconds.inc(labels, report.decode_s)
        m.decode_cpu_seconds.inc(labels, report.decode_cpu_s)
        m.worker_cpu_seconds.inc(labels, report.worker_cpu_s)
        m.tail_seconds.inc(labels, report.tail_s)
        m.tail_cpu_seconds.inc(labels, report.tail_cpu_s)
        m.encode_seconds.inc(labels, encode_s)
        m.queue_seconds.inc(labels, sum(start - it.arrival for it in items))

    def _record(self, name: str, items: list[_Item], report: BatchReport, frames: list[bytes],
                start: float) -> None:
        m, labels = self.metrics, (name,)
        self._record_times(labels, items, report, report.encode_s, start)
        now = time.perf_counter()
        for it, reply, frame in zip(items, report.replies, frames, strict=True):
            ok = reply.error is None
            if ok:
                m.results.inc(labels)
                m.latency.observe(now - it.arrival, labels)
            else:
                m.error(name, reply.error.code.name)
            self._answer(name, it, frame, ok)

    def _answer(self, name: str, item: _Item, frame: bytes, ok: bool) -> None:
        entry = self.dedup.finish(item.key, frame if ok else None)
        waiters = entry.waiters if entry is not None else ()
        for conn in waiters:
            conn.send(frame)
        self.metrics.bytes_out.inc((name,), len(frame) * len(waiters))
        left = self._inflight.get(item.inflight_key, 1) - 1
        if left > 0:
            self._inflight[item.inflight_key] = left
        else:
            self._inflight.pop(item.inflight_key, None)
        self._inflight_total -= 1

    # -- LLM sessions ----------------------------------------------------------------
    def _llm_metrics(self) -> None:
        if not self.llm:
            return
        r, d = self.metrics.registry, ("deployment",)
        self._m_sessions = r.add(Gauge("splitcomp_llm_sessions", "Open LLM sessions.", d))
        self._m_kv = r.add(Gauge("splitcomp_llm_kv_bytes", "KV-cache bytes of the LLM sessions "
                                 "(reserved: steps in flight included).", d))
        self._m_opened = r.add(Gauge("splitcomp_llm_sessions_opened_total",
                                     "LLM sessions opened.", d, kind="counter"))
        self._m_expired = r.add(Gauge("splitcomp_llm_sessions_expired_total",
                                      "LLM sessions freed by the idle timeout.", d,
                                      kind="counter"))
        self._m_tokens = r.add(Counter("splitcomp_llm_tokens_total",
                                       "Tokens run through the tail (prefills and steps).", d))
        self._m_sample_cpu = r.add(Counter(
            "splitcomp_llm_sample_cpu_seconds_total",
            "CPU of the worker thread picking next tokens and building answers.", d))
        self._m_contexts = r.add(Gauge("splitcomp_llm_codec_contexts", "Codec contexts held "
                                       "(in use by sessions or kept for reuse).", d))
        self._m_context_bytes = r.add(Gauge("splitcomp_llm_codec_context_bytes_total",
                                            "Codec context bytes accepted from clients at OPEN.",
                                            d, kind="counter"))

    def _llm_gauges(self, dep: LLMDeployment) -> None:
        sm, labels = dep.sessions, (dep.name,)
        self._m_sessions.set(len(sm), labels)
        self._m_kv.set(sm.reserved_bytes, labels)
        self._m_opened.set(sm.opened, labels)
        self._m_expired.set(sm.expired, labels)
        self._m_contexts.set(len(dep.contexts), labels)
        self._m_context_bytes.set(dep.contexts.upload_bytes, labels)

    async def _expire_sessions(self) -> None:
        """Free idle sessions every quarter of the shortest idle timeout (at most 1 s)."""
        timeout = min(d.sessions.idle_timeout_s for d in self.llm.values())
        period = min(max(timeout / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            for dep in self.llm.values():
                dep.sessions.expire()
                self._llm_gauges(dep)

    def _on_llm_frame(self, conn: _Conn, frame: bytes) -> str | None:
        """Route one LLM frame (see :meth:`_on_frame`)."""
        m = self.metrics
        try:
            req = P.parse_llm_request(frame)
        except P.FrameError as e:
            return self._bad_frame(conn, frame, e)
        rid, op = req.request_id, req.op
        if op is P.LLMOp.OPEN:
            dep = self.llm.get(req.deployment)
        else:
            dep = next((d for d in self.llm.values() if req.session in d.sessions), None)
        label = dep.name if dep is not None else ""
        m.requests.inc((label,))
        m.bytes_in.inc((label,), len(frame))
        key = (conn.identity, "llm", rid)
        if self._replay(conn, key, label, rid):
            return None
        if dep is None:
            if op is P.LLMOp.OPEN:
                self._reply_error(conn, label, rid, P.ErrorCode.UNKNOWN_DEPLOYMENT,
                                  f"no LLM deployment {req.deployment!r} (serving "
                                  f"{', '.join(self.llm) or 'none'})")
            else:
                self._reply_error(conn, label, rid, P.ErrorCode.SESSION_NOT_FOUND,
                                  "no such session for this client (never opened, closed, "
                                  "or expired)")
            return None
        if dep.allowed_clients is not None and conn.client_id not in dep.allowed_clients:
            self._reply_error(conn, label, rid, P.ErrorCode.UNAUTHORIZED,
                              f"client {conn.client_id!r} may not use {dep.name!r}")
            return None
        if self._draining:
            self._reply_error(conn, label, rid, P.ErrorCode.UNAVAILABLE, "server shutting down")
            return None
        held = self._inflight.get(conn.inflight_key, 0)
        if held >= self.max_inflight_per_client:
            self._reply_error(conn, label, rid, P.ErrorCode.OVERLOADED,
                              f"{held} requests in flight (limit {self.max_inflight_per_client})")
            return None
        sessions, batcher = dep.sessions, self._batchers[dep.name]
        try:
            if op is P.LLMOp.OPEN:
                answer = P.encode_llm_opened(rid, dep.opened(dep.open(conn.client_id, req)))
            elif op is P.LLMOp.CLOSE:
                answer = P.encode_llm_closed(rid, sessions.close(conn.client_id, req.session))
            else:
                session = sessions.get(conn.client_id, req.session)
                if req.tokens > dep.max_step_tokens:
                    raise RequestError(P.ErrorCode.TOO_LARGE, f"{req.tokens} tokens in one step "
                                       f"(limit {dep.max_step_tokens})")
                if len(batcher) >= self.max_queue:
                    raise RequestError(P.ErrorCode.OVERLOADED,
                                       f"{dep.name!r} has {len(batcher)} steps queued")
                sessions.reserve(session, req.tokens)
        except RequestError as e:
            self._reply_error(conn, label, rid, e.code, e.message)
            self._llm_gauges(dep)
            return None
        self._llm_gauges(dep)
        if op is not P.LLMOp.STEP:  # answered at once, and remembered for retries
            self.dedup.begin(key, conn)
            self.dedup.finish(key, answer)
            m.results.inc((label,))
            m.bytes_out.inc((label,), len(answer))
            conn.send(answer)
            return None
        self._inflight[conn.inflight_key] = held + 1
        self._inflight_total += 1
        self.dedup.begin(key, conn)
        batcher.submit(_StepItem(rid, memoryview(frame), key, conn.inflight_key,
                                 time.perf_counter(), req, session))
        return None

    async def _process_steps(self, dep: LLMDeployment, items: list[_StepItem]) -> None:
        """Run one batch of STEPs in the deployment's worker thread, then answer each."""
        from .llm.service import StepItem

        start = time.perf_counter()
        sessions, name, labels = dep.sessions, dep.name, (dep.name,)
        live = self._drop_timed_out(
            name, items, start, lambda it: sessions.finish(it.session, it.request.tokens,
                                                           ok=False))
        if not live:
            return
        steps = [StepItem(it.request_id, it.session, it.request.tokens, it.request.bitstreams,
                          start - it.arrival) for it in live]
        assert self._loop is not None
        try:
            report = await self._loop.run_in_executor(self._executors[name], dep.run_steps,
                                                      steps)
        except Exception as e:
            log.exception("steps of %s failed", name)
            for it in live:
                sessions.finish(it.session, it.request.tokens, ok=False)
                self._answer(name, it, P.encode_error(it.request_id, P.ErrorCode.INTERNAL,
                                                      f"batch failed: {e!r}"[:300]), ok=False)
            return
        m = self.metrics
        self._record_times(labels, live, report, report.sample_cpu_s, start)
        self._m_sample_cpu.inc(labels, report.sample_cpu_s)
        now = time.perf_counter()
        for it, frame, ok, code in zip(live, report.frames, report.ok, report.errors,
                                       strict=True):
            sessions.finish(it.session, it.request.tokens, ok)
            if ok:
                m.results.inc(labels)
                m.latency.observe(now - it.arrival, labels)
                self._m_tokens.inc(labels, it.request.tokens)
            else:
                m.error(name, code.name if code is not None else "INTERNAL")
            self._answer(name, it, frame, ok)
        self._llm_gauges(dep)



class BackgroundServer:
    """A :class:`Server` on its own event loop in a daemon thread; a context manager.

    ``url`` and ``port`` are valid once constructed; :meth:`stop` shuts it down gracefully.
    """

    def __init__(self, server: Server, timeout_s: float = 30.0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._error: BaseException | None = None
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(server.start())
            except BaseException as e:  # reported to the constructor
                self._error = e
                started.set()
                self._loop.close()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="splitcomp-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError(f"server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Any, *args: Any, timeout_s: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the server's loop (e.g. to read state safely)."""
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def metrics_text(self) -> str:
        """The ``/metrics`` text, rendered on the server's loop."""
        return self.call(self.server.metrics.render)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server gracefully and end the thread."""
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop)
        try:
            fut.result(grace_s + 10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(deployments: Deployment | Iterable[Deployment], host: str = "127.0.0.1",
          port: int = 8765, **options: Any) -> None:
    """Serve until SIGINT/SIGTERM (blocking). ``options`` go to :class:`Server`."""
    server = Server(deployments, host, port, **options)
    asyncio.run(server.serve_forever())


__all__ = ["BackgroundServer", "Server", "serve"]

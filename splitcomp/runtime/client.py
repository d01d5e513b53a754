"""The edge client: run the head locally, encode the features, send them, return the result.

:class:`AsyncSplitClient` (asyncio) multiplexes any number of concurrent requests over one
WebSocket by request id. When the connection drops it reconnects with exponential backoff
and re-sends each unanswered request with the *same* id, so the server (which remembers
recent ids per session) runs it once. A server never reached (connection refused, unknown
host on the first connect) fails at once with :class:`ConnectionLost` instead: retrying is for
a server that was there before (restarting), or for one still starting (``wait_for_server``).
:class:`SplitClient` is the same thing for synchronous code: an event loop in a background
thread, callable from many threads at once.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import random
import secrets
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from .. import codecs
from ..codecs import Codec
from . import protocol as P
from .errors import ConnectionLost, RuntimeTimeout, ServerError, Unauthorized
from .loop_thread import LoopThread
from .tls import client_context

log = logging.getLogger("splitcomp.runtime")

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class InferResult:
    """A result with what it cost: the wire bytes each way, the client-side latency (head
    and encoding excluded) and the server's figures (:class:`~.protocol.Timing`)."""

    outputs: tuple[torch.Tensor, ...]
    request_id: int
    bytes_sent: int  #: request frame size
    bytes_received: int  #: response frame size
    latency_s: float  #: first send to answer decoded, retries included
    attempts: int
    timing: P.Timing
    source: str = "server"  #: "edge" when an early exit answered and nothing was sent

    @property
    def output(self) -> Outputs:
        """The single output tensor, or the tuple when the tail returns several."""
        return self.outputs[0] if len(self.outputs) == 1 else self.outputs


class _Lost(Exception):
    """The connection carrying a request closed before its answer."""


#: connect errors meaning that nothing can be reached at the address
_UNREACHABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)


def unreachable(e: BaseException) -> str | None:
    """Why a failed connect shows that nothing answers at the address (refused, unknown
    host, no route), or None for a failure worth retrying (a timeout, a handshake)."""
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror or e})"
    if not isinstance(e, OSError) or isinstance(e, TimeoutError):
        return None
    if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
        return "connection refused"
    if e.errno in _UNREACHABLE:
        return e.strerror or str(e)
    if "Connect call failed" in str(e):  # asyncio, several addresses: "Multiple exceptions"
        return "connection refused" if f"[Errno {errno.ECONNREFUSED}]" in str(e) else str(e)
    return None


class AsyncSplitClient:
    """Send features to a deployment of a splitcomp server (asyncio).

    ``head``: the edge half (None to send inputs as they are, e.g. for a full-offload
    deployment). ``codec``: a :class:`~splitcomp.codecs.Codec` or a codec name (default fp32).
    ``timeout_s``: per request, reconnections and retries included (:class:`RuntimeTimeout`).
    ``retries``: re-sends after a lost connection or an UNAVAILABLE answer
    (:class:`ConnectionLost` beyond); reconnecting itself is bounded by ``timeout_s`` only.
    ``ca``: a PEM file trusted for ``wss://`` (or pass an ``ssl_context``).
    ``max_inflight``: cap on this client's concurrent requests (None: the server's limit
    applies and answers OVERLOADED). ``head_in_thread``: run head and encoder in a worker
    thread so the event loop stays responsive. ``session``: the dedup namespace kept across
    reconnections (default: 128 random bits per client object). ``compact``: send compact
    streams (one tensor; the header a template both ends registered, docs/bitstream.md), as
    for a trained bottleneck's latent (:mod:`.trained`). ``wait_for_server``: keep retrying
    a first connection that is refused (a server still starting) instead of failing at once
    with :class:`ConnectionLost`. ``early_exit``: a module on the
    head's first output returning ``(logits, confidence, exits)`` (``splitcomp.train.exits.
    EdgeExit``): a request whose inputs all exit is answered on the edge, nothing sent
    (``InferResult.source == "edge"``; :attr:`exits` and :attr:`sent` count both kinds).
    """

    def __init__(self, url: str, head: Callable[..., Any] | None = None,
                 codec: Codec | str = "fp32", deployment: str = "default", *,
                 token: str | None = None, timeout_s: float = 30.0, retries: int = 5,
                 ca: str | Path | None = None, ssl_context: ssl.SSLContext | None = None,
                 connect_timeout_s: float = 10.0, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, max_inflight: int | None = None,
                 head_in_thread: bool = True, session: str | None = None,
                 max_response_bytes: int = 256 << 20, compact: bool = False,
                 early_exit: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
                 wait_for_server: bool = False) -> None:
        self.url = url
        self.wait_for_server = wait_for_server
        self._reached = False  #: a connection succeeded once (the server was there)
        self._connect_problem: BaseException | None = None  #: the last failed connect's
        self.early_exit = early_exit
        self.exits = 0  #: requests answered on the edge
        self.sent = 0  #: requests sent to the server
        self.compact = compact
        self.head = head
        self.codec = codecs.get(codec) if isinstance(codec, str) else codec
        self.deployment = deployment
        self._name = P.check_name(deployment)
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.ssl = client_context(url, ca, ssl_context)
        self.connect_timeout_s = connect_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.head_in_thread = head_in_thread
        self.max_response_bytes = max_response_bytes
        self.session = session or secrets.token_hex(16)
        self.max_frame_bytes: int | None = None  #: learnt from the server's handshake
        self.reconnects = 0
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None  #: the connection new requests use
        self._open_conns: set[ClientConnection] = set()  #: incl. ones being drained
        self._reader: asyncio.Task | None = None
        self._pending: dict[int, tuple[asyncio.Future, ClientConnection]] = {}
        self._lock: asyncio.Lock | None = None
        self._limit = asyncio.Semaphore(max_inflight) if max_inflight else None
        self._closed = False

    # -- public API ------------------------------------------------------------------
    async def infer(self, *inputs: Any) -> Outputs:
        """Run the head on ``inputs``, send, and return the tail's output (one tensor, or a
        tuple when the tail returns several)."""
        return (await self.infer_detailed(*inputs)).output

    async def infer_detailed(self, *inputs: Any) -> InferResult:
        """Like :meth:`infer`, with wire sizes, latency and the server's timing figures."""
        if self.head_in_thread:
            data = await asyncio.to_thread(self.encode_or_exit, *inputs)
        else:
            data = self.encode_or_exit(*inputs)
        if isinstance(data, InferResult):
            return data
        return await self.infer_encoded(data)

    def encode(self, *inputs: Any) -> bytes:
        """Head (if any) and encoder: the bitstream that would be sent for ``inputs``."""
        return self.codec.encode(list(self._features(inputs)), compact=self.compact)

    def encode_or_exit(self, *inputs: Any) -> bytes | InferResult:
        """The bitstream to send, or the edge's answer when the early exit takes every input."""
        feats = self._features(inputs)
        if self.early_exit is not None:
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits, _, exits = self.early_exit(feats[0])
            if bool(exits.all()):
                self.exits += 1
                return InferResult((logits,), 0, 0, 0, time.perf_counter() - t0, 0,
                                   P.Timing(0, 0, 0, 0), source="edge")
        self.sent += 1
        return self.codec.encode(list(feats), compact=self.compact)

    def _features(self, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        with torch.inference_mode():
            feats = self.head(*inputs) if self.head is not None else inputs
        return (feats,) if isinstance(feats, torch.Tensor) else tuple(feats)

    async def infer_encoded(self, bitstream: bytes, request_id: int | None = None) -> InferResult:
        """Send an already encoded bitstream (e.g. precomputed by a load generator)."""
        if self._closed:
            raise RuntimeError("client closed")
        rid = next(self._ids) if request_id is None else request_id
        frame = P.encode_request(rid, self._name, bitstream)
        if self._limit is not None:
            async with self._limit:
                return await self._send(rid, frame)
        return await self._send(rid, frame)

    async def connect(self) -> None:
        """Open the connection now (otherwise the first request does)."""
        loop = asyncio.get_running_loop()
        await self._connection(loop.time() + self.timeout_s)

    async def close(self) -> None:
        """Close the connection; pending requests fail with :class:`ConnectionLost`."""
        self._closed = True
        self._ws = None
        await asyncio.gather(*(ws.close() for ws in list(self._open_conns)),
                             return_exceptions=True)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()

    async def __aenter__(self) -> AsyncSplitClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def next_request_id(self) -> int:
        """A fresh request id of this client (for frames built by the caller)."""
        return next(self._ids)

    # -- requests --------------------------------------------------------------------
    async def _send(self, rid: int, frame: bytes) -> InferResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        resp_frame, resp, attempts, _ = await self.exchange(rid, frame)
        assert resp.timing is not None and resp.bitstream is not None
        out = codecs.decode(resp.bitstream)
        return InferResult(out, rid, len(frame), len(resp_frame), loop.time() - t0, attempts,
                           resp.timing)

    async def exchange(self, rid: int, frame: bytes) -> tuple[bytes, P.Response, int, float]:
        """Send a ready ``frame`` with request id ``rid``; returns (answer frame, its parse,
        attempts, latency s). Retries, reconnection and timeouts as for :meth:`infer`; an
        error answer raises :class:`ServerError`."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + self.timeout_s
        attempts = 0
        last: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempts += 1
                    ws = await self._connection(deadline)
                    if self.max_frame_bytes and len(frame) > self.max_frame_bytes:
                        raise ServerError(P.ErrorCode.TOO_LARGE,
                                          f"frame of {len(frame)} bytes exceeds the server's "
                                          f"{self.max_frame_bytes}", rid)
                    fut = loop.create_future()
                    self._pending[rid] = (fut, ws)
                    try:
                        await ws.send(frame)
                        resp_frame, resp = await fut
                    except (ConnectionClosed, _Lost, OSError) as e:
                        last = e
                    else:
                        if resp.ok:
                            return resp_frame, resp, attempts, loop.time() - t0
                        if resp.code not in P.RETRYABLE:
                            raise ServerError(resp.code, resp.message, rid)
                        last = ServerError(resp.code, resp.message, rid)
                        if self._ws is ws:  # a draining server: new requests go elsewhere,
                            self._ws = None  # its answers to older ones still arrive
                    finally:
                        if self._pending.get(rid, (None,))[0] is fut:
                            del self._pending[rid]
                    if attempts > self.retries:
                        raise ConnectionLost(f"request {rid}: gave up after {attempts} attempts "
                                             f"({last!r})") from last
                    await asyncio.sleep(self._backoff(attempts))
        except TimeoutError:
            problem = last if last is not None else self._connect_problem
            raise RuntimeTimeout(f"request {rid} to {self.deployment!r} at {self.url}: no answer "
                                 f"within {self.timeout_s} s ({attempts} attempt(s); last "
                                 f"problem: {problem!r})") from None

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * (0.5 + random.random())

    # -- connection ------------------------------------------------------------------
    async def _connection(self, deadline: float) -> ClientConnection:
        ws = self._ws
        if ws is not None and ws.state is State.OPEN:
            return ws
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            ws = self._ws
            if ws is not None and ws.state is State.OPEN:
                return ws
            if self._closed:
                raise ConnectionLost("client closed")
            ws = await self._open(deadline)
            self._ws = ws
            self._open_conns.add(ws)
            self._reader = asyncio.create_task(self._read(ws))
            return ws

    async def _open(self, deadline: float) -> ClientConnection:
        loop = asyncio.get_running_loop()
        headers = {P.HEADER_SESSION: self.session}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        tries = 0
        while True:
            tries += 1
            left = deadline - loop.time()
            try:
                ws = await connect(
                    self.url, additional_headers=headers, ssl=self.ssl, compression=None,
                    open_timeout=max(min(self.connect_timeout_s, left), 0.01),
                    max_size=self.max_response_bytes, proxy=None,
                    user_agent_header="splitcomp",
                )
            except InvalidStatus as e:
                status = e.response.status_code
                if status in (401, 403):
                    raise Unauthorized(f"{self.url} refused the token (HTTP {status})") from None
                if status != 503:
                    raise ConnectionLost(f"{self.url} refused the connection: HTTP {status}") \
                        from None
                problem: BaseException = e
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
                if isinstance(e, ssl.SSLCertVerificationError):
                    raise
                problem = e
                why = unreachable(e)
                if why and not self._reached and not self.wait_for_server:
                    raise ConnectionLost(f"cannot connect to {self.url}: {why} (is a splitcomp "
                                         "server running there?)") from None
            else:
                max_frame = ws.response.headers.get(P.HEADER_MAX_FRAME) if ws.response else None
                self.max_frame_bytes = int(max_frame) if max_frame and max_frame.isdigit() \
                    else None
                if self._reader is not None:  # connected before: this is a reconnection
                    self.reconnects += 1
                self._reached = True
                self._connect_problem = None
                return ws
            self._connect_problem = problem
            delay = self._backoff(tries)
            if loop.time() + delay >= deadline:
                await asyncio.sleep(max(deadline - loop.time(), 0))  # the caller's timeout fires
                raise RuntimeTimeout(f"could not connect to {self.url}: {problem!r}")
            log.debug("connect to %s failed (%r); retrying in %.2f s", self.url, problem, delay)
            await asyncio.sleep(delay)

    async def _read(self, ws: ClientConnection) -> None:
        pending = self._pending
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    continue
                try:
                    resp = P.parse_response(frame)
                except P.FrameError as e:
                    log.warning("unparsable frame from the server: %s", e)
                    continue
                entry = pending.get(resp.request_id)
                if entry is not None and not entry[0].done():
                    entry[0].set_result((frame, resp))
                elif resp.request_id == P.NO_REQUEST_ID:
                    log.warning("server error without a request id: %s %s", resp.code,
                                resp.message)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            self._open_conns.discard(ws)
            code = ws.close_code
            for fut, fws in list(pending.values()):
                if fws is ws and not fut.done():
                    fut.set_exception(_Lost(f"connection closed (code {code})"))


class SplitClient:
    """Synchronous :class:`AsyncSplitClient`: its event loop runs in a daemon thread, and
    :meth:`infer` may be called from several threads at once (requests multiplex).

    The head and encoder run in the calling thread. Arguments as for
    :class:`AsyncSplitClient`.
    """

    def __init__(self, url: str, head: Callable[..., Any] | None = None,
                 codec: Codec | str = "fp32", deployment: str = "default",
                 **options: Any) -> None:
        options["head_in_thread"] = False
        self._client = AsyncSplitClient(url, head, codec, deployment, **options)
        # the coroutines have their own timeout; the loop's is a backstop
        self._loop = LoopThread("splitcomp-client", self._client.timeout_s + 30.0)

    @property
    def client(self) -> AsyncSplitClient:
        return self._client

    def infer(self, *inputs: Any) -> Outputs:
        """Run the head, send, return the tail's output (see :meth:`AsyncSplitClient.infer`)."""
        return self.infer_detailed(*inputs).output

    def infer_detailed(self, *inputs: Any) -> InferResult:
        data = self._client.encode_or_exit(*inputs)
        return data if isinstance(data, InferResult) else self.infer_encoded(data)

    def infer_encoded(self, bitstream: bytes, request_id: int | None = None) -> InferResult:
        return self._loop.run(self._client.infer_encoded(bitstream, request_id))

    def encode(self, *inputs: Any) -> bytes:
        return self._client.encode(*inputs)

    def close(self) -> None:
        self._loop.stop(self._client.close())

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_url(url: str, path: str) -> str:
    """``ws://h:p`` -> ``http://h:p/path`` (``wss`` -> ``https``)."""
    base = url.rstrip("/")
    if base.startswith("wss://"):
        base = "https://" + base[6:]
    elif base.startswith("ws://"):
        base = "http://" + base[5:]
    return f"{base}/{path.lstrip('/')}"


def fetch_metrics(url: str, token: str | None = None, ca: str | Path | None = None,
                  timeout_s: float = 10.0) -> str:
    """GET the server's ``/metrics`` text (blocking)."""
    req = urllib.request.Request(http_url(url, "/metrics"))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = client_context(url, ca) if url.startswith("wss://") else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(req, timeout=timeout_s) as resp:
        return resp.read().decode("utf-8")

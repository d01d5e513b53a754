"""Admission: which requests may queue, and the way every answer goes back.

One request path for every :class:`~.service.Service`: a frame is parsed by its kind, routed
to a service, checked against retries (a request id seen before with the same bytes gets the
remembered answer, or waits for the one in flight: :mod:`.dedup`), the service's allowed
clients, draining, the client's in-flight limits (requests and bytes) and the service's queue
limit, then admitted by the service (answered at once, or queued with the
:class:`~.scheduling.Scheduler` as part of the client's flow, weighted by its bytes, so each
client gets a fair share of the worker). :meth:`Admission.answer` sends an answer to everyone
waiting for it and frees the client's in-flight slot and bytes.

State lives on the server's event loop; nothing here touches a socket beyond
``conn.send`` (a non-blocking queue per connection).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import protocol as P
from .dedup import DedupCache, InFlight
from .errors import RequestError
from .inflight import InflightLedger
from .service import SERVICE_KINDS, Service, Work, kind_of
from .stats import ServerMetrics

if TYPE_CHECKING:
    from .scheduling import Scheduler


class Peer(Protocol):
    """What admission needs of a connection."""

    client_id: str
    identity: Hashable  #: dedup namespace: client id + session (or this connection)
    inflight_key: Hashable  #: whose in-flight limits and fair share this connection counts in

    def send(self, frame: bytes) -> None: ...


class Admission:
    """Admits requests to ``services`` and routes their answers (see the module docstring).

    ``max_inflight_per_client``: requests a client may have queued or running;
    ``max_inflight_bytes_per_client``: their request bytes (a client with nothing in flight
    may always send one frame); ``max_queue``: requests queued per service (OVERLOADED beyond
    each).
    """

    def __init__(self, services: Iterable[Service], scheduler: Scheduler,
                 metrics: ServerMetrics, dedup: DedupCache, *,
                 max_inflight_per_client: int = 256,
                 max_inflight_bytes_per_client: int = 64 << 20,
                 max_queue: int = 4096) -> None:
        self.by_kind: dict[type[Service], list[Service]] = {k: [] for k in SERVICE_KINDS.values()}
        for s in services:
            kinds = [k for k in SERVICE_KINDS.values() if isinstance(s, k)]
            if not kinds:
                raise TypeError(f"{type(s).__name__} is not a registered service kind")
            self.by_kind[kinds[0]].append(s)
        self.scheduler = scheduler
        self.metrics = metrics
        self.dedup = dedup
        self.inflight = InflightLedger(max_inflight_per_client, max_inflight_bytes_per_client)
        self.max_queue = max_queue
        self.draining = False

    # -- requests --------------------------------------------------------------------
    def on_frame(self, conn: Peer, frame: bytes) -> str | None:
        """Take one request frame from ``conn``; returns a message when the frame must close
        the connection (not even a request id to answer)."""
        m = self.metrics
        kind = kind_of(frame, P.TYPE_REQUEST)
        try:
            req = kind.parse(frame)
        except P.FrameError as e:
            return self._bad_frame(conn, frame, e)
        target = kind.route(req, self.by_kind.get(kind, []))
        refused_at_route = isinstance(target, RequestError)
        label = "" if refused_at_route else target.name
        labels, size = (label,), len(frame)
        m.requests.inc(labels)
        m.bytes_in.inc(labels, size)
        rid = req.request_id
        key = (conn.identity, kind.dedup_scope(req), rid)
        seen = self.dedup.lookup(key, frame)
        if seen is not None:
            self._replay(conn, seen, label, rid)
            return None
        if refused_at_route:
            self.reply_error(conn, label, rid, target.code, target.message)
            return None
        if target.allowed_clients is not None and conn.client_id not in target.allowed_clients:
            self.reply_error(conn, label, rid, P.ErrorCode.UNAUTHORIZED,
                             f"client {conn.client_id!r} may not use {target.name!r}")
            return None
        if self.draining:
            self.reply_error(conn, label, rid, P.ErrorCode.UNAVAILABLE, "server shutting down")
            return None
        who = conn.inflight_key
        refused = self.inflight.refusal(who, size)
        if refused is not None:
            self.reply_error(conn, label, rid, P.ErrorCode.OVERLOADED, refused)
            return None
        try:
            admitted = target.admit(conn.client_id, req, lambda: self._check_queue(target))
        except RequestError as e:
            self.reply_error(conn, label, rid, e.code, e.message)
            target.update_metrics()
            return None
        target.update_metrics()
        if isinstance(admitted, bytes):  # answered at once, and remembered for retries
            key, _ = self.dedup.begin(key, frame, conn)
            self.dedup.finish(key, admitted)
            m.results.inc(labels)
            m.bytes_out.inc(labels, len(admitted))
            conn.send(admitted)
            return None
        self.inflight.add(who, size)
        key, entry = self.dedup.begin(key, frame, conn)
        self.scheduler.submit(target, Work(rid, admitted, key, who, time.perf_counter()),
                              who, size, entry.seal)
        return None

    def _check_queue(self, service: Service) -> None:
        queued = self.scheduler.queued(service)
        if queued >= self.max_queue:
            raise RequestError(P.ErrorCode.OVERLOADED,
                               f"{service.name!r} has {queued} {service.unit} queued")

    def _bad_frame(self, conn: Peer, frame: bytes, e: P.FrameError) -> str | None:
        """Count and answer an unparsable frame; a message when it must close the connection
        (not even a request id to answer)."""
        m = self.metrics
        m.requests.inc(("",))
        m.bytes_in.inc(("",), len(frame))
        m.error("", P.ErrorCode.BAD_FRAME.name)
        if e.request_id is None:
            return str(e)
        self.reply_error(conn, "", e.request_id, P.ErrorCode.BAD_FRAME, str(e))
        return None

    def _replay(self, conn: Peer, seen: InFlight | bytes, label: str, rid: int) -> None:
        """A retried request (same id, same bytes; ``seen``: what the dedup cache holds for
        it): send the remembered answer, or wait for the one in flight (every frame gets its
        answer, within reason)."""
        self.metrics.dedup_hits.inc((label,))
        if isinstance(seen, InFlight):
            if len(seen.waiters) >= self.inflight.max_requests:
                self.reply_error(conn, label, rid, P.ErrorCode.OVERLOADED,
                                 f"request {rid} re-sent too often while in flight")
            else:
                seen.waiters.append(conn)
        else:
            conn.send(seen)
            self.metrics.bytes_out.inc((label,), len(seen))

    def reply_error(self, conn: Peer, label: str, request_id: int, code: P.ErrorCode,
                    message: str) -> None:
        frame = P.encode_error(request_id, code, message)
        self.metrics.error(label, code.name)
        self.metrics.bytes_out.inc((label,), len(frame))
        conn.send(frame)

    # -- answers ---------------------------------------------------------------------
    def answer_batch(self, service: Service, works: Sequence[Work], frames: Sequence[bytes],
                     oks: Sequence[bool]) -> None:
        """:meth:`answer` for each of a batch's requests, its bytes counted once."""
        finish, release, sent = self.dedup.finish, self.inflight.release, 0
        for work, frame, ok in zip(works, frames, oks, strict=True):
            entry = finish(work.key, frame if ok else None)
            if entry is None:
                release(work.inflight_key, 0)
                continue
            waiters = entry.waiters
            for conn in waiters:
                conn.send(frame)
            sent += len(frame) * len(waiters)
            release(work.inflight_key, entry.size)
        self.metrics.bytes_out.inc((service.name,), sent)

    def answer(self, service: Service, work: Work, frame: bytes, ok: bool) -> None:
        """Send ``frame`` to every connection waiting for ``work`` (remembered for retries
        when ``ok``) and free its in-flight slot and bytes."""
        entry = self.dedup.finish(work.key, frame if ok else None)
        waiters: Any = entry.waiters if entry is not None else ()
        for conn in waiters:
            conn.send(frame)
        self.metrics.bytes_out.inc((service.name,), len(frame) * len(waiters))
        self.inflight.release(work.inflight_key, entry.size if entry is not None else 0)

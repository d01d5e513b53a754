"""The request path without a transport: request frames in, response frames out.

:func:`handle_frames` runs whole request frames through the same :class:`~.service.Service`
steps the embedded server uses (parse, route, allowed clients, admit, run, settle), for a front
end that owns its own transport and batching: a Ray Serve ``@serve.batch`` replica, or any HTTP
endpoint taking the frames of ``docs/protocol.md`` as bodies. :class:`FrontGate` is what such a
front end puts before it, as :mod:`.admission` does for the embedded server: retries answered
once (:mod:`.dedup`: the same request id *and* the same bytes) and each client's in-flight
limits (requests, bytes).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence

from . import protocol as P
from .dedup import DedupCache, InFlight
from .errors import RequestError
from .inflight import InflightLedger
from .service import Service, Work, kind_of

#: a valid ``X-Splitcomp-Session`` header value (docs/protocol.md)
SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def error_frame(request_id: int | None, code: P.ErrorCode, message: str) -> bytes:
    """An error frame (request id 0 when the frame had none)."""
    return P.encode_error(request_id if request_id is not None else P.NO_REQUEST_ID, code,
                          message)


def handle_frames(services: Mapping[str, Service] | Iterable[Service],
                  frames: Sequence[bytes | memoryview],
                  client_ids: Sequence[str] | None = None) -> list[bytes]:
    """Whole request frames in, response frames out, in order. ``client_ids``: who sent each
    frame (sessions are bound to it; default ``anonymous``). Queued requests for the same
    service run as one batch; malformed frames, unknown deployments and refused requests get
    error frames. Not thread-safe: one call at a time per set of services.

    No authentication, deduplication, in-flight limits or timeouts: the front end owns those.
    """
    svcs = list(services.values()) if isinstance(services, Mapping) else list(services)
    out: list[bytes | None] = [None] * len(frames)
    queued: dict[int, tuple[Service, list[tuple[int, Work]]]] = {}
    for i, frame in enumerate(frames):
        kind = kind_of(frame, P.TYPE_REQUEST)
        try:
            req = kind.parse(frame)
        except P.FrameError as e:
            out[i] = error_frame(e.request_id, P.ErrorCode.BAD_FRAME, str(e))
            continue
        rid = req.request_id
        client = client_ids[i] if client_ids is not None else "anonymous"
        target = kind.route(req, [s for s in svcs if isinstance(s, kind)])
        try:
            if isinstance(target, RequestError):
                raise target
            if target.allowed_clients is not None and client not in target.allowed_clients:
                raise RequestError(P.ErrorCode.UNAUTHORIZED,
                                   f"client {client!r} may not use {target.name!r}")
            admitted = target.admit(client, req, lambda: None)
        except RequestError as e:
            out[i] = P.encode_error(rid, e.code, e.message)
            continue
        finally:
            if not isinstance(target, RequestError):
                target.update_metrics()
        if isinstance(admitted, bytes):
            out[i] = admitted
        else:
            work = Work(rid, admitted, None, None, time.perf_counter())
            queued.setdefault(id(target), (target, []))[1].append((i, work))
    for service, items in queued.values():
        batch = [w for _, w in items]
        try:
            result = service.run(batch, time.perf_counter())
        except Exception as e:  # a service bug must not take the other answers down
            result = None
            message = f"batch failed: {e!r}"[:300]
        for j, (i, w) in enumerate(items):
            ok = result is not None and result.errors[j] is None
            service.settle(w, ok)
            out[i] = result.frames[j] if result is not None else P.encode_error(
                w.request_id, P.ErrorCode.INTERNAL, message)
        service.update_metrics(result)
    assert all(f is not None for f in out)
    return out  # type: ignore[return-value]


class FrontGate:
    """Retries and in-flight limits in front of :func:`handle_frames`, on one event loop.

    :meth:`submit` answers a request frame: BAD_FRAME without a parsable request id; a
    retry (same dedup ``identity``, deployment and request id, same bytes) gets the kept
    answer or waits for the one in flight; OVERLOADED past ``max_inflight_per_client``
    requests or ``max_inflight_bytes_per_client`` bytes in flight for ``who`` (a client with
    nothing in flight may always send one frame); anything else is answered by ``run``. Only
    successful answers are kept (:class:`~.dedup.DedupCache` sizes them).
    """

    def __init__(self, *, max_inflight_per_client: int = 256,
                 max_inflight_bytes_per_client: int = 64 << 20,
                 dedup: DedupCache | None = None) -> None:
        self.inflight = InflightLedger(max_inflight_per_client, max_inflight_bytes_per_client)
        self.dedup = dedup if dedup is not None else DedupCache()
        self.replays = 0  #: retries answered without running again
        self.refused = 0  #: requests refused for a client's in-flight limits

    async def submit(self, frame: bytes, run: Callable[[], Awaitable[bytes]], *,
                     who: Hashable, identity: Hashable | None) -> bytes:
        """The answer frame to ``frame`` from client ``who``; ``identity``: its dedup
        namespace (None: no deduplication)."""
        kind = kind_of(frame, P.TYPE_REQUEST)
        try:
            req = kind.parse(frame)
        except P.FrameError as e:
            return error_frame(e.request_id, P.ErrorCode.BAD_FRAME, str(e))
        rid = req.request_id
        key: Hashable | None = None
        if identity is not None:
            key = (identity, kind.dedup_scope(req), rid)
            seen = self.dedup.lookup(key, frame)
            if seen is not None:
                return await self._replay(seen, rid)
        size = len(frame)
        refused = self.inflight.refusal(who, size)
        if refused is not None:
            self.refused += 1
            return P.encode_error(rid, P.ErrorCode.OVERLOADED, refused)
        self.inflight.add(who, size)
        if key is not None:
            key, _ = self.dedup.begin(key, frame, None)  # the sender awaits ``run`` itself
        answer: bytes | None = None
        try:
            answer = await run()
            return answer
        finally:
            self.inflight.release(who, size)
            if key is not None:
                self._settle(key, rid, answer)

    async def _replay(self, seen: InFlight | bytes, rid: int) -> bytes:
        self.replays += 1
        if isinstance(seen, bytes):
            return seen
        if len(seen.waiters) > self.inflight.max_requests:
            return P.encode_error(rid, P.ErrorCode.OVERLOADED,
                                  f"request {rid} re-sent too often while in flight")
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        seen.waiters.append(waiter)
        return await waiter

    def _settle(self, key: Hashable, rid: int, answer: bytes | None) -> None:
        """End an in-flight request: keep a successful answer, hand it to retries waiting."""
        ok = answer is not None and P.frame_type(answer) != P.TYPE_ERROR
        entry = self.dedup.finish(key, answer if ok else None)
        out = answer if answer is not None else P.encode_error(
            rid, P.ErrorCode.UNAVAILABLE, "the request was dropped before its answer; retry")
        for waiter in entry.waiters[1:] if entry is not None else ():
            if not waiter.done():
                waiter.set_result(out)

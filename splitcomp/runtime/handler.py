"""The request path without a transport: request frames in, response frames out.

:func:`handle_frames` runs whole request frames through the same :class:`~.service.Service`
steps the embedded server uses (parse, route, admit, run, settle), for a front end that owns
its own transport and batching: a Ray Serve ``@serve.batch`` replica, or any HTTP endpoint
taking the frames of ``docs/protocol.md`` as bodies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from . import protocol as P
from .errors import RequestError
from .service import Service, Work, kind_of


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

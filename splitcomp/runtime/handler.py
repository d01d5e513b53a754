"""The tail handler, transport-free: requests in, response frames out.

The embedded server calls :func:`answer_batch` in its worker thread; any other front end (a
Ray Serve ``@serve.batch`` replica, an HTTP endpoint taking the same frames as bodies) can call
:func:`handle_frames` with whole request frames and send back what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from . import protocol as P
from .deployment import BatchReport, Deployment


def answer_batch(dep: Deployment, request_ids: Sequence[int],
                 bitstreams: Sequence[bytes | memoryview],
                 queue_s: Sequence[float] | None = None) -> tuple[BatchReport, list[bytes]]:
    """Run one batch through ``dep``; returns its report and one response frame per request
    (result or typed error), in order. ``queue_s``: how long each waited (sent back)."""
    c0 = time.thread_time()
    report = dep.run_batch(bitstreams)
    frames = []
    for i, (rid, r) in enumerate(zip(request_ids, report.replies, strict=True)):
        if r.error is None:
            assert r.result is not None
            frames.append(P.encode_result(rid, r.result, r.batch_size,
                                          queue_s[i] if queue_s is not None else 0.0,
                                          r.decode_s, r.tail_s))
        else:
            frames.append(P.encode_error(rid, r.error.code, r.error.message))
    report.worker_cpu_s = time.thread_time() - c0
    return report, frames


def handle_frames(deployments: Mapping[str, Deployment],
                  frames: Sequence[bytes | memoryview]) -> list[bytes]:
    """Whole request frames in, response frames out, in order. Frames for the same deployment
    are batched together; malformed frames and unknown deployments get error frames.

    No authentication, deduplication or limits: the front end calling this owns those.
    """
    out: list[bytes | None] = [None] * len(frames)
    by_dep: dict[str, list[tuple[int, P.Request]]] = {}
    for i, frame in enumerate(frames):
        try:
            req = P.parse_request(frame)
        except P.FrameError as e:
            rid = e.request_id if e.request_id is not None else P.NO_REQUEST_ID
            out[i] = P.encode_error(rid, P.ErrorCode.BAD_FRAME, str(e))
            continue
        if req.deployment not in deployments:
            out[i] = P.encode_error(req.request_id, P.ErrorCode.UNKNOWN_DEPLOYMENT,
                                    f"no deployment {req.deployment!r}")
            continue
        by_dep.setdefault(req.deployment, []).append((i, req))
    for name, items in by_dep.items():
        _, answers = answer_batch(deployments[name], [r.request_id for _, r in items],
                                  [r.bitstream for _, r in items])
        for (i, _), frame in zip(items, answers, strict=True):
            out[i] = frame
    assert all(f is not None for f in out)
    return out  # type: ignore[return-value]

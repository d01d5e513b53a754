"""Scheduling: one batcher and one worker thread per service, timeouts, batch accounting.

Each :class:`~.service.Service` gets a :class:`~.batching.Batcher` (dynamic batching on the
event loop, fair across clients: each client's work is a flow, weighted by its bytes) and a
one-thread executor: a batch's :meth:`Service.run` runs there while the loop keeps serving,
one batch at a time per service. Work queued longer than the request timeout is answered
TIMEOUT without running. Periodic upkeep (e.g. idle LLM sessions) runs as one task per
service that asks for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from . import protocol as P
from .batching import Batcher
from .service import BatchResult, Service, Work
from .stats import ServerMetrics

log = logging.getLogger("splitcomp.runtime")

#: how an answer leaves: (service, work, frame, ok)
Answer = Callable[[Service, Work, bytes, bool], None]
#: how a batch's answers leave, in one call: (service, works, frames, oks)
AnswerBatch = Callable[[Service, Sequence[Work], Sequence[bytes], Sequence[bool]], None]
#: what runs in the worker thread right before a work's batch (e.g. digesting its frame)
Prepare = Callable[[], None]


class Scheduler:
    """Batches and runs the admitted work of ``services``; ``answer`` sends each answer.

    ``max_batch_bytes``: a batch holds at most this many request bytes (at least one
    request), so one batch of a client's large requests cannot hold the worker for long;
    ``fair_grace_s``: how long a client just served keeps its turn (:mod:`.batching`);
    ``answer_batch``: sends a batch's answers in one call (else ``answer`` per request).
    """

    def __init__(self, services: Iterable[Service], metrics: ServerMetrics, answer: Answer,
                 request_timeout_s: float = 30.0, *, max_batch_bytes: float = 8 << 20,
                 fair_grace_s: float = 0.005, answer_batch: AnswerBatch | None = None) -> None:
        self.services = list(services)
        self.metrics = metrics
        self.answer = answer
        self.answer_batch = answer_batch
        self.request_timeout_s = request_timeout_s
        self.max_batch_bytes = max_batch_bytes
        self.fair_grace_s = fair_grace_s
        self._batchers: dict[str, Batcher[tuple[Work, Prepare | None]]] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._upkeep: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the batchers and upkeep tasks (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        for s in self.services:
            self._executors[s.name] = ThreadPoolExecutor(1, thread_name_prefix=f"svc-{s.name}")
            b = Batcher(partial(self._process, s), s.max_batch_size, s.max_wait_ms / 1000.0,
                        s.name, max_batch_cost=self.max_batch_bytes, grace_s=self.fair_grace_s)
            b.start()
            self._batchers[s.name] = b
            period = s.upkeep_period_s()
            if period is not None:
                self._upkeep.append(asyncio.create_task(self._keep_up(s, period)))

    def queued(self, service: Service) -> int:
        """Work of ``service`` queued and not yet in a batch."""
        return len(self._batchers[service.name])

    def submit(self, service: Service, work: Work, flow: Hashable = None, cost: int = 1,
               prepare: Prepare | None = None) -> None:
        """Queue ``work`` as part of ``flow`` (whose fair share it takes), weighing ``cost``
        (bytes); ``prepare`` runs in the worker thread before its batch."""
        self._batchers[service.name].submit((work, prepare), flow, cost)

    def deferrals(self) -> int:
        """Requests left for a later batch to keep another client's fair turn."""
        return sum(b.deferrals for b in self._batchers.values())

    async def drain(self, deadline: float) -> None:
        """Wait (until ``deadline``, time.monotonic()) for every queued batch to finish."""
        for b in self._batchers.values():
            await b.drain(max(deadline - time.monotonic(), 0.0))

    async def stop(self) -> list[tuple[Service, Work]]:
        """Stop batching; returns the work still queued (to be answered, then :meth:`close`)."""
        left = []
        for s in self.services:
            b = self._batchers.pop(s.name, None)
            if b is not None:
                left += [(s, w) for w, _ in await b.stop()]
        return left

    def close(self) -> None:
        """Stop upkeep, close the services and their worker threads."""
        for task in self._upkeep:
            task.cancel()
        self._upkeep.clear()
        for s in self.services:
            s.close()
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    async def _keep_up(self, service: Service, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                service.upkeep()
            except Exception:  # pragma: no cover - never expected; keep the loop going
                log.exception("upkeep of %s failed", service.name)

    async def _process(self, service: Service, items: list[tuple[Work, Prepare | None]]
                       ) -> None:
        """Run one batch in the service's worker thread, then answer every request."""
        start = time.perf_counter()
        live, prepares = [], []
        for w, prepare in items:
            waited = start - w.arrival
            if waited > self.request_timeout_s:
                service.settle(w, False)
                self.answer(service, w, P.encode_error(
                    w.request_id, P.ErrorCode.TIMEOUT,
                    f"queued {waited:.1f} s (limit {self.request_timeout_s} s)"), False)
            else:
                live.append(w)
                if prepare is not None:
                    prepares.append(prepare)
        if not live:
            return
        assert self._loop is not None
        try:
            result = await self._loop.run_in_executor(self._executors[service.name],
                                                      _run, service, live, start, prepares)
        except Exception as e:
            log.exception("batch of %s failed", service.name)
            for w in live:
                service.settle(w, False)
                self.answer(service, w, P.encode_error(w.request_id, P.ErrorCode.INTERNAL,
                                                       f"batch failed: {e!r}"[:300]), False)
            return
        self._record(service, live, result, start)

    def _record(self, service: Service, items: list[Work], result: BatchResult,
                start: float) -> None:
        m, labels = self.metrics, (service.name,)
        for n in result.tail_calls:
            m.batch_size.observe(n, labels)
        m.batch_requests.observe(len(items), labels)
        m.decode_seconds.inc(labels, result.decode_s)
        m.decode_cpu_seconds.inc(labels, result.decode_cpu_s)
        m.worker_cpu_seconds.inc(labels, result.worker_cpu_s)
        m.tail_seconds.inc(labels, result.tail_s)
        m.tail_cpu_seconds.inc(labels, result.tail_cpu_s)
        m.encode_seconds.inc(labels, result.encode_s)
        m.queue_seconds.inc(labels, sum(start - w.arrival for w in items))
        now = time.perf_counter()
        settle, oks, latencies = service.settle, [], []
        for w, code in zip(items, result.errors, strict=True):
            ok = code is None
            settle(w, ok)
            oks.append(ok)
            if ok:
                latencies.append(now - w.arrival)
            else:
                m.error(service.name, code.name)
        if latencies:
            m.results.inc(labels, len(latencies))
            m.latency.observe_many(latencies, labels)
        if self.answer_batch is not None:
            self.answer_batch(service, items, result.frames, oks)
        else:
            for w, frame, ok in zip(items, result.frames, oks, strict=True):
                self.answer(service, w, frame, ok)
        service.update_metrics(result)


def _run(service: Service, batch: list[Work], start: float, prepares: list[Prepare]
         ) -> BatchResult:
    """The worker thread's part: the batch's preparations, then :meth:`Service.run`."""
    for prepare in prepares:
        prepare()
    return service.run(batch, start)

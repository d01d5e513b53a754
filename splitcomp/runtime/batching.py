"""Dynamic batching with fair shares: gather queued items into batches, one batch at a time.

Items are queued per *flow* (for the server, a client) and taken in fair-queuing order
(self-clocked fair queuing): an item's tag is its flow's previous tag (or the batcher's
virtual time, for a flow that was idle) plus its cost (request bytes), and batches take the
smallest tags first. A flow that keeps many items queued thus waits behind its own backlog
while a flow with one item goes ahead of it: flows with work queued get equal shares of the
bytes served, whatever the others queue.

Closed-loop clients (send, wait for the answer, send again) have nothing queued while their
answer travels, and a plain fair queue would hand the worker to a backlogged flow in that gap.
So a flow whose last queued item was taken stays *recent* after its batch ends:

* for ``grace_s``, if it came back within its grace the time before (a *prompt* flow), an item
  tagged behind what its next item would be tagged is not batched before it comes back or
  its grace runs out (the batch closes; an empty one waits);
* for ten times as long in any case, an item tagged behind a recent flow's next one is *ahead
  of its turn*: a batch takes such items of each flow only up to an equal share of a typical
  full batch (``max_batch_size`` times the median cost of the flows active), and at least one.

A backlog therefore runs in the gaps in small pieces instead of whole batches, while a flow
that thinks longer than its grace between items (an edge device running a model) never makes
the worker wait. With ``grace_s`` 0, batches fill in plain fair order.

A batch closes when it holds ``max_batch_size`` items or ``max_batch_cost`` of cost (always
at least one item), or when the *oldest* queued item has waited ``max_wait_s``: under load
(items queued while the previous batch ran) the next batch starts at once, and when idle a
lone request waits at most ``max_wait_s``. With one flow for all it is a FIFO.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("splitcomp.runtime")
MAX_LATE_FLOWS = 4096  #: flows remembered as not prompt (least recently late forgotten first)
LINGER = 10  #: how many graces a served flow counts as active
MEDIAN_OF = 63  #: flows sampled for the median cost


class _Entry:
    """One queued item with its fair-queuing tag."""

    __slots__ = ("arrival", "cost", "flow", "item", "seq", "tag", "taken")

    def __init__(self, tag: int, seq: int, arrival: float, flow: Hashable, cost: int,
                 item: Any) -> None:
        self.tag, self.seq, self.arrival = tag, seq, arrival
        self.flow, self.cost, self.item = flow, cost, item
        self.taken = False


class _Flow:
    """A flow with items queued: how many, the tag and cost of its last one."""

    __slots__ = ("cost", "finish", "queued")

    def __init__(self, finish: int) -> None:
        self.finish = finish
        self.cost = 0
        self.queued = 0


class _Recent:
    """A flow whose last item was taken: its tag and cost, until when it holds items back
    (``binding``, prompt flows only) and until when it counts as active."""

    __slots__ = ("binding", "cost", "deadline", "finish", "linger")

    def __init__(self, finish: int, cost: int, binding: bool) -> None:
        self.finish, self.cost, self.binding = finish, cost, binding
        self.deadline = self.linger = math.inf  #: set when its batch ends

    @property
    def next_tag(self) -> int:
        """What the flow's next item would be tagged (same cost as its last)."""
        return self.finish + self.cost


class Batcher(Generic[T]):
    """Queue items with :meth:`submit`; ``process(batch)`` is awaited for each batch in turn.

    Only one ``process`` runs at a time (one tail at a time per deployment). Must be started
    (:meth:`start`) inside a running event loop and used from that loop only. ``grace_s``:
    how long a prompt flow served last keeps its turn (see the module docstring).
    """

    def __init__(self, process: Callable[[list[T]], Awaitable[None]], max_batch_size: int = 32,
                 max_wait_s: float = 0.002, name: str = "", *,
                 max_batch_cost: float = math.inf, grace_s: float = 0.005) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_s < 0 or grace_s < 0:
            raise ValueError("max_wait_s and grace_s must be non-negative")
        if max_batch_cost <= 0:
            raise ValueError("max_batch_cost must be positive")
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_batch_cost = max_batch_cost
        self.grace_s = grace_s
        self.name = name
        self.busy = False
        self.deferrals = 0  #: items left for a later batch to keep another flow's turn
        self.holds = 0  #: of which: batches closed early or waits for a prompt flow
        self._heap: list[tuple[int, int, _Entry]] = []
        self._arrivals: deque[_Entry] = deque()
        self._flows: dict[Hashable, _Flow] = {}
        self._recent: dict[Hashable, _Recent] = {}
        self._late: OrderedDict[Hashable, None] = OrderedDict()
        self._ahead: dict[Hashable, int] = {}  #: cost ahead of its turn, per flow, this batch
        self._forming: list[_Entry] = []
        self._vtime = 0
        self._seq = itertools.count()
        self._blocked = False
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Items queued and not yet in a running batch."""
        return len(self._heap) + len(self._forming)

    def start(self) -> None:
        """Start the batching task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    def submit(self, item: T, flow: Hashable = None, cost: int = 1) -> None:
        """Queue one item of ``flow`` costing ``cost`` (e.g. bytes; from the event loop)."""
        assert self._loop is not None and self._wakeup is not None and self._idle is not None
        now = self._loop.time()
        f = self._flows.get(flow)
        if f is None:  # nothing queued until now; back while recent, it keeps its place
            back = self._recent.pop(flow, None)
            if back is not None and now <= back.deadline:
                self._late.pop(flow, None)  # prompt
            elif back is not None and back.binding:
                self._missed(flow)
            f = self._flows[flow] = _Flow(back.finish if back is not None else self._vtime)
            start = f.finish
        else:
            start = max(f.finish, self._vtime)
        f.finish, f.cost = start + cost, cost
        f.queued += 1
        e = _Entry(f.finish, next(self._seq), now, flow, cost, item)
        heapq.heappush(self._heap, (e.tag, e.seq, e))
        self._arrivals.append(e)
        self._idle.clear()
        n = len(self._heap)
        if self._blocked or n == 1 or n >= self.max_batch_size:
            self._wakeup.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued item has been processed; False on timeout."""
        if self._idle is None or (not len(self) and not self.busy):
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> list[T]:
        """Stop the batching task; returns the items still queued (not processed)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        left = self._forming + sorted((e for _, _, e in self._heap), key=lambda e: e.seq)
        self._forming = []
        self._heap.clear()
        self._arrivals.clear()
        self._flows.clear()
        self._recent.clear()
        self._late.clear()
        return [e.item for e in left]

    # -- the batching task -------------------------------------------------------------
    async def _run(self) -> None:
        assert self._loop is not None and self._wakeup is not None and self._idle is not None
        wakeup, loop = self._wakeup, self._loop
        while True:
            if not self._heap:
                self._idle.set()
                wakeup.clear()
                await wakeup.wait()
                continue
            if len(self._heap) < self.max_batch_size and self.max_wait_s > 0:
                deadline = self._oldest() + self.max_wait_s
                if loop.time() < deadline:
                    await self._sleep(deadline)
            batch = await self._form()
            self._forming = []
            self._forget_taken()
            if not batch:
                continue
            self.busy = True
            items = [e.item for e in batch]
            for e in batch:  # what the queue keeps of a taken entry holds no item
                e.item = None
            try:
                await self.process(items)
            except asyncio.CancelledError:
                raise
            except Exception:  # the processor answers its items; never let the loop die
                log.exception("batch processing failed (%s)", self.name)
            finally:
                self.busy = False
                self._served(batch)

    async def _sleep(self, until: float) -> None:
        """Wait for a :meth:`submit` that wakes the task, or until ``until`` (loop time)."""
        assert self._wakeup is not None
        self._wakeup.clear()
        if until == math.inf:
            await self._wakeup.wait()
            return
        try:
            async with asyncio.timeout_at(until):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    async def _form(self) -> list[_Entry]:
        """Take the next batch; waits while the next item must leave its turn to a prompt
        flow (until that flow comes back, its grace ends, or the batch's wait is over)."""
        assert self._loop is not None
        batch = self._forming = []
        self._ahead = {}
        while True:
            now = self._loop.time()
            self._expire(now)
            if not self._take(batch) or len(batch) >= self.max_batch_size:
                return batch
            until = min((r.deadline for r in self._recent.values() if r.binding),
                        default=math.inf)
            if batch:
                until = min(until, min(e.arrival for e in batch) + self.max_wait_s)
            elif until == math.inf:  # pragma: no cover - no flow in service, nothing to await
                self._recent.clear()
                continue
            if until <= now:
                if batch:
                    return batch
                continue  # grace over: expired at the top
            self._blocked = True
            try:
                await self._sleep(until)
            finally:
                self._blocked = False

    def _take(self, batch: list[_Entry]) -> bool:
        """Move items into ``batch`` in tag order; True when stopped to keep a prompt flow's
        turn (False: batch full, cost cap reached, nothing left that may go)."""
        heap, flows, recent, ahead = self._heap, self._flows, self._recent, self._ahead
        cost = sum(e.cost for e in batch)
        hold = min((r.next_tag for r in recent.values() if r.binding), default=math.inf)
        turn = min((r.next_tag for r in recent.values()), default=math.inf)
        share = self._share() if turn < math.inf else math.inf
        skipped: list[tuple[int, int, _Entry]] = []
        blocked = False
        while heap and len(batch) < self.max_batch_size:
            tag, _, e = heap[0]
            if batch and cost + e.cost > self.max_batch_cost:
                break
            if tag > hold:
                blocked = True
                break
            if tag > turn:  # ahead of its turn: a share of the batch per flow, one at least
                used = ahead.get(e.flow, 0)
                if used and used + e.cost > share:
                    skipped.append(heapq.heappop(heap))
                    if len(skipped) > self.max_batch_size:  # bounded work per batch
                        break
                    continue
                ahead[e.flow] = used + e.cost
            heapq.heappop(heap)
            e.taken = True
            batch.append(e)
            cost += e.cost
            self._vtime = max(self._vtime, tag)
            f = flows[e.flow]
            f.queued -= 1
            if not f.queued:
                del flows[e.flow]
                if self.grace_s > 0:
                    r = recent[e.flow] = _Recent(f.finish, e.cost, e.flow not in self._late)
                    turn = min(turn, r.next_tag)
                    if r.binding:
                        hold = min(hold, r.next_tag)
                    if share == math.inf:
                        share = self._share()
        self.deferrals += len(skipped) + blocked
        self.holds += blocked
        for s in skipped:
            heapq.heappush(heap, s)
        return blocked

    def _share(self) -> float:
        """A flow's share of a typical full batch: ``max_batch_size`` times the median cost of
        the active flows (queued or recent), divided among them."""
        n = len(self._flows) + len(self._recent)
        costs = sorted(itertools.islice(itertools.chain(
            (f.cost for f in self._flows.values()), (r.cost for r in self._recent.values())),
            MEDIAN_OF))
        return self.max_batch_size * costs[len(costs) // 2] / max(n, 1) if costs else math.inf

    def _served(self, batch: list[_Entry]) -> None:
        """A batch ended: its flows with nothing queued keep their turn for ``grace_s`` (if
        prompt) and count as active ten times as long."""
        assert self._loop is not None
        now = self._loop.time()
        for e in batch:
            r = self._recent.get(e.flow)
            if r is not None and r.deadline == math.inf:
                r.deadline, r.linger = now + self.grace_s, now + LINGER * self.grace_s

    def _expire(self, now: float) -> None:
        gone = []
        for f, r in self._recent.items():
            if r.binding and r.deadline <= now:
                r.binding = False
                self._missed(f)
            if r.linger <= now:
                gone.append(f)
        for f in gone:
            del self._recent[f]

    def _missed(self, flow: Hashable) -> None:
        """``flow`` did not come back within its grace: its next turn holds nothing back."""
        self._late[flow] = None
        self._late.move_to_end(flow)
        if len(self._late) > MAX_LATE_FLOWS:
            self._late.popitem(last=False)

    def _oldest(self) -> float:
        """Arrival time of the oldest queued item."""
        self._forget_taken()
        return self._arrivals[0].arrival

    def _forget_taken(self) -> None:
        """Drop the taken entries at the front of the arrival order (after every batch: under
        load :meth:`_oldest` is not asked, and the order would keep every item ever queued,
        their requests' frames with them)."""
        arrivals = self._arrivals
        while arrivals and arrivals[0].taken:
            arrivals.popleft()

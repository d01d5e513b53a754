"""Dynamic batching: gather queued items into batches and process one batch at a time.

A batch closes when it holds ``max_batch_size`` items or when the *oldest* queued item has
waited ``max_wait_s``: under load (items queued while the previous batch ran) the next batch
starts at once, and when idle a lone request waits at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("splitcomp.runtime")


class Batcher(Generic[T]):
    """Queue items with :meth:`submit`; ``process(batch)`` is awaited for each batch in turn.

    Only one ``process`` runs at a time (one tail at a time per deployment). Must be started
    (:meth:`start`) inside a running event loop and used from that loop only.
    """

    def __init__(self, process: Callable[[list[T]], Awaitable[None]], max_batch_size: int = 32,
                 max_wait_s: float = 0.002, name: str = "") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be non-negative")
        self.process = process
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.name = name
        self.busy = False
        self._items: deque[tuple[float, T]] = deque()
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Items queued and not yet taken into a batch."""
        return len(self._items)

    def start(self) -> None:
        """Start the batching task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    def submit(self, item: T) -> None:
        """Queue one item (from the event loop)."""
        assert self._loop is not None and self._wakeup is not None and self._idle is not None
        items = self._items
        items.append((self._loop.time(), item))
        self._idle.clear()
        if len(items) == 1 or len(items) >= self.max_batch_size:
            self._wakeup.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued item has been processed; False on timeout."""
        if self._idle is None or (not self._items and not self.busy):
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
        left = [item for _, item in self._items]
        self._items.clear()
        return left

    async def _run(self) -> None:
        assert self._loop is not None and self._wakeup is not None and self._idle is not None
        items, wakeup, loop = self._items, self._wakeup, self._loop
        while True:
            if not items:
                self._idle.set()
                wakeup.clear()
                await wakeup.wait()
                continue
            if len(items) < self.max_batch_size and self.max_wait_s > 0:
                deadline = items[0][0] + self.max_wait_s
                if loop.time() < deadline:
                    wakeup.clear()
                    try:
                        async with asyncio.timeout_at(deadline):
                            await wakeup.wait()
                    except TimeoutError:
                        pass
            n = min(len(items), self.max_batch_size)
            batch = [items.popleft()[1] for _ in range(n)]
            self.busy = True
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the processor answers its items; never let the loop die
                log.exception("batch processing failed (%s)", self.name)
            finally:
                self.busy = False

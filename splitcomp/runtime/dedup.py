"""Remember recent requests so a retried request id is answered once.

A request is *in flight* from acceptance until its answer; a retry meanwhile waits for that
answer. Successful answers are then kept (response frame bytes) for ``ttl_s`` seconds, at most
``max_entries`` of them and ``max_bytes`` in all, oldest evicted first. Errors are not kept:
they are cheap to recompute and some (OVERLOADED, UNAVAILABLE) must not stick.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class InFlight:
    """A request being processed; ``waiters`` get its answer (the original sender first)."""

    waiters: list[Any] = field(default_factory=list)


class DedupCache:
    """In-flight requests and recent answers, keyed by (client identity, deployment, id)."""

    def __init__(self, max_entries: int = 65536, max_bytes: int = 64 << 20, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.inflight: dict[Hashable, InFlight] = {}
        self._done: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._done)

    def lookup(self, key: Hashable) -> InFlight | bytes | None:
        """The in-flight record, the cached answer frame, or None for a new request."""
        entry = self.inflight.get(key)
        if entry is not None:
            return entry
        done = self._done.get(key)
        if done is None:
            return None
        if self.clock() - done[0] > self.ttl_s:
            self._pop(key)
            return None
        return done[1]

    def begin(self, key: Hashable, waiter: Any) -> InFlight:
        """Record a new in-flight request answered to ``waiter``."""
        entry = self.inflight[key] = InFlight([waiter])
        return entry

    def finish(self, key: Hashable, frame: bytes | None) -> InFlight | None:
        """End an in-flight request; keep ``frame`` when given (a success). Returns its record."""
        entry = self.inflight.pop(key, None)
        if frame is not None and self.max_entries > 0 and len(frame) <= self.max_bytes:
            self._pop(key)
            self._done[key] = (self.clock(), frame)
            self.bytes += len(frame)
            self._evict()
        return entry

    def _pop(self, key: Hashable) -> None:
        old = self._done.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1])

    def _evict(self) -> None:
        now = self.clock()
        done = self._done
        while done:
            key, (t, frame) = next(iter(done.items()))
            if (len(done) > self.max_entries or self.bytes > self.max_bytes
                    or now - t > self.ttl_s):
                done.popitem(last=False)
                self.bytes -= len(frame)
            else:
                break

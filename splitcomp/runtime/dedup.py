"""Remember recent requests so a retried request is answered once.

A request is known by its key (client identity, where it went, request id) *and* its payload:
a retry is the same id with the same frame bytes; the same id with other bytes (a client that
restarted its ids, a bug) is a new request and never gets another request's answer. A request
is *in flight* from acceptance until its answer; a retry meanwhile waits for that answer (the
frames are compared byte for byte). Successful answers are then kept (response frame bytes,
with a 128-bit digest of the request frame: XXH3-128 with ``xxhash`` installed (``make``
installs it, extra ``fast``; 0.7 us for a 32 KiB frame here), else the first 128 bits of its
SHA-256 (23 us: a sixth of the server's whole overhead per request). Neither is a secret: a
collision would only give a client the answer to another request *of its own* under the same
id) for ``ttl_s`` seconds, at most ``max_entries`` of them
and ``max_bytes`` in all, oldest evicted first. Errors are not kept: they are cheap to
recompute and some (OVERLOADED, UNAVAILABLE) must not stick.

The digest is taken off the event loop when it can be: :meth:`InFlight.seal` runs in the
worker thread before the request's batch (hashing releases the GIL); an answer whose digest
is not yet known is digested when it is kept.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

try:
    import xxhash
except ImportError:  # pragma: no cover - make installs it
    xxhash = None

DIGEST_BYTES = 16


def digest(frame: bytes | memoryview) -> bytes:
    """A request frame's 128-bit digest (XXH3-128, or without ``xxhash`` the first 128 bits of
    its SHA-256): what tells a retry's bytes from another request's under the same id."""
    if xxhash is not None:
        return xxhash.xxh3_128_digest(frame)
    return hashlib.sha256(frame).digest()[:DIGEST_BYTES]


@dataclass(eq=False)
class InFlight:
    """A request being processed; ``waiters`` get its answer (the original sender first).
    ``frame``: the request frame (retries are compared with it); ``digest``: its digest, once
    :meth:`seal` ran."""

    waiters: list[Any] = field(default_factory=list)
    frame: bytes | memoryview = b""
    digest: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.frame)

    def seal(self) -> None:
        """Digest the request frame (any thread; for keeping its answer later)."""
        if self.digest is None:
            self.digest = digest(self.frame)


_OTHER = object()  #: the key is taken by a request with other bytes


class DedupCache:
    """In-flight requests and recent answers, keyed by (client identity, deployment, id) and
    told apart by payload (see the module docstring)."""

    def __init__(self, max_entries: int = 65536, max_bytes: int = 64 << 20, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.inflight: dict[Hashable, InFlight] = {}
        self._done: OrderedDict[Hashable, tuple[float, bytes, bytes]] = OrderedDict()
        self.bytes = 0
        self.mismatches = 0  #: lookups of a known id with another payload

    def __len__(self) -> int:
        return len(self._done)

    def lookup(self, key: Hashable, frame: bytes | memoryview) -> InFlight | bytes | None:
        """The in-flight record or the kept answer of the request ``frame`` under ``key``;
        None for a new request (including a known id with other bytes)."""
        found = self._find(key, frame, None)
        if found is not _OTHER:
            return found  # type: ignore[return-value]
        self.mismatches += 1
        d = digest(frame)  # the same id, other bytes: perhaps a request begun under its digest
        found = self._find((key, d), frame, d)
        return None if found is _OTHER else found  # type: ignore[return-value]

    def _find(self, key: Hashable, frame: bytes | memoryview, d: bytes | None) -> Any:
        entry = self.inflight.get(key)
        if entry is not None:
            return entry if entry.frame == frame else _OTHER
        done = self._done.get(key)
        if done is None:
            return None
        t, answer, kept_digest = done
        if self.clock() - t > self.ttl_s:
            self._pop(key)
            return None
        return answer if kept_digest == (d if d is not None else digest(frame)) else _OTHER

    def begin(self, key: Hashable, frame: bytes | memoryview, waiter: Any
              ) -> tuple[Hashable, InFlight]:
        """Record a new in-flight request answered to ``waiter``; returns the key it is kept
        under (``key``, or ``(key, digest)`` while another payload holds ``key``) and its
        record."""
        if key in self.inflight:
            key = (key, digest(frame))
        entry = self.inflight[key] = InFlight([waiter], frame)
        return key, entry

    def finish(self, key: Hashable, answer: bytes | None) -> InFlight | None:
        """End an in-flight request; keep ``answer`` when given (a success). Returns its
        record."""
        entry = self.inflight.pop(key, None)
        if (answer is not None and entry is not None and self.max_entries > 0
                and len(answer) <= self.max_bytes):
            entry.seal()
            self._pop(key)
            assert entry.digest is not None
            self._done[key] = (self.clock(), answer, entry.digest)
            self.bytes += len(answer)
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
            key, (t, answer, _) = next(iter(done.items()))
            if (len(done) > self.max_entries or self.bytes > self.max_bytes
                    or now - t > self.ttl_s):
                done.popitem(last=False)
                self.bytes -= len(answer)
            else:
                break

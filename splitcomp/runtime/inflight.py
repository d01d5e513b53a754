"""Per-client in-flight accounting: what each client has accepted and not yet answered.

One ledger serves the WebSocket server's admission and the Ray front gate: a client may have
at most ``max_requests`` requests and ``max_bytes`` request bytes in flight, except that a
client with nothing in flight may always send one request (however large: the frame size
limit bounds it), so a limit never locks a client out.
"""

from __future__ import annotations

from collections.abc import Hashable


class InflightLedger:
    """Requests and request bytes in flight per client, and their totals."""

    def __init__(self, max_requests: int = 256, max_bytes: int = 64 << 20) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests: dict[Hashable, int] = {}
        self.bytes: dict[Hashable, int] = {}
        self.total = 0
        self.total_bytes = 0

    def refusal(self, who: Hashable, size: int) -> str | None:
        """Why ``who`` may not add a request of ``size`` bytes now (None: it may)."""
        held, held_bytes = self.requests.get(who, 0), self.bytes.get(who, 0)
        if held >= self.max_requests:
            return f"{held} requests in flight (limit {self.max_requests})"
        if held and held_bytes + size > self.max_bytes:
            return (f"{held_bytes} request bytes in flight, {size} more would pass the "
                    f"limit ({self.max_bytes})")
        return None

    def add(self, who: Hashable, size: int) -> None:
        self.requests[who] = self.requests.get(who, 0) + 1
        self.bytes[who] = self.bytes.get(who, 0) + size
        self.total += 1
        self.total_bytes += size

    def release(self, who: Hashable, size: int) -> None:
        """One request of ``size`` bytes of ``who`` answered (or dropped)."""
        left = self.requests.get(who, 1) - 1
        if left > 0:
            self.requests[who] = left
            self.bytes[who] -= size
        else:
            self.requests.pop(who, None)
            self.bytes.pop(who, None)
        self.total -= 1
        self.total_bytes -= size

"""Per-request rate control: pick the codec setting that fits a latency bound on a varying link.

The controller holds a ladder of settings (bytes per sample, accuracy, compute ms), keeps
only its Pareto front (more bytes must buy more accuracy), and for each request predicts

    latency = compute + (queued bytes + bytes) * 8 / bandwidth estimate + rtt

choosing the most accurate setting whose prediction stays under the bound. The bandwidth
estimate comes from observed transfers only (an EWMA of ``8 * bytes / (seconds - rtt)``,
quicker to follow a fall than a rise) and is capped while a transfer is late: a message
not acknowledged ``elapsed`` seconds after it left proves the rate is below
``8 * bytes / (elapsed - rtt)``. Hysteresis: a step down happens as soon as the current
setting's prediction misses the bound; a step up needs its prediction under
``up_margin * bound`` and ``min_dwell`` requests since the last switch. A step up undone
within two dwells is a failed probe: that setting (and those above it) then waits a dwell that
doubles with each failure (up to ``max_dwell``), unless the bandwidth estimate has risen by
``reprobe_gain`` over its value at the failure (the link changed: probe at once).

:func:`simulate` plays requests through a :class:`~splitcomp.plan.channel.Channel` (one FIFO
uplink, trace bandwidth) for the controller or a fixed setting; nothing here touches a socket.
:class:`splitcomp.plan.adaptive.AdaptiveClient` drives the same policies on the real runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .channel import Channel


@dataclass(frozen=True)
class Setting:
    """One way to send a request: ``compute_ms`` is edge + server time outside the network."""

    name: str
    bytes_per_sample: float
    accuracy: float
    compute_ms: float = 0.0


def setting_front(settings: Sequence[Setting]) -> list[Setting]:
    """Settings not dominated by a cheaper one, by bytes ascending with accuracy increasing.

    A setting is dropped when another has no more bytes and at least its accuracy (compute
    breaks ties only: it is usually small next to the wire time where control matters).
    """
    ordered = sorted(settings, key=lambda s: (s.bytes_per_sample, -s.accuracy, s.compute_ms))
    front: list[Setting] = []
    for s in ordered:
        if not front or s.accuracy > front[-1].accuracy:
            front.append(s)
    return front


class BandwidthEstimator:
    """EWMA of uplink throughput from observed transfer times (rtt known)."""

    def __init__(self, initial_bps: float, rtt_s: float, *, alpha_down: float = 0.6,
                 alpha_up: float = 0.3, min_bps: float = 1e3) -> None:
        if initial_bps <= 0 or rtt_s < 0:
            raise ValueError("initial bandwidth must be positive and rtt non-negative")
        self.bps = float(initial_bps)
        self.rtt_s = float(rtt_s)
        self.alpha_down, self.alpha_up, self.min_bps = alpha_down, alpha_up, min_bps

    def observe(self, nbytes: float, seconds: float) -> float:
        """A message of ``nbytes`` took ``seconds`` from first byte out to acknowledgement."""
        if nbytes <= 0:
            return self.bps
        sample = max(8.0 * nbytes / max(seconds - self.rtt_s, 1e-6), self.min_bps)
        a = self.alpha_down if sample < self.bps else self.alpha_up
        self.bps = (1 - a) * self.bps + a * sample
        return self.bps

    def cap(self, nbytes: float, elapsed_s: float) -> float:
        """A message of ``nbytes`` is still unacknowledged ``elapsed_s`` after it left."""
        if nbytes > 0 and elapsed_s > self.rtt_s:
            self.bps = max(min(self.bps, 8.0 * nbytes / (elapsed_s - self.rtt_s)), self.min_bps)
        return self.bps


class Policy(Protocol):
    """What :func:`simulate` drives: a choice per request and feedback on transfers."""

    settings: list[Setting]

    def choose(self, queued_bytes: float = 0.0) -> int: ...

    def observe(self, nbytes: float, seconds: float) -> None: ...

    def late(self, nbytes: float, elapsed_s: float) -> None: ...


class RateController:
    """Most accurate setting under the latency bound, with an EWMA bandwidth and hysteresis.

    ``settings`` may come in any order; :attr:`settings` is their Pareto front, cheapest first,
    and every index (``start``, :meth:`choose`) refers to it. ``start`` defaults to the cheapest.
    """

    def __init__(
        self,
        settings: Sequence[Setting],
        bound_s: float,
        rtt_s: float,
        *,
        initial_bps: float = 1e6,
        estimator: BandwidthEstimator | None = None,
        up_margin: float = 0.8,
        min_dwell: int = 5,
        max_dwell: int = 200,
        reprobe_gain: float = 1.25,
        start: int | None = None,
    ) -> None:
        self.settings = setting_front(settings)
        if not self.settings:
            raise ValueError("no settings")
        self.bound_s, self.rtt_s = float(bound_s), float(rtt_s)
        self.estimator = estimator or BandwidthEstimator(initial_bps, rtt_s)
        self.up_margin, self.min_dwell, self.max_dwell = up_margin, min_dwell, max_dwell
        self.reprobe_gain = reprobe_gain
        self.dwell = min_dwell
        self.failed: tuple[int, float] | None = None  # (setting, estimate) of a failed probe
        self.current = 0 if start is None else start
        if not 0 <= self.current < len(self.settings):
            raise ValueError(f"start {start} outside the {len(self.settings)} settings kept")
        self.since_switch = 0
        self.last_up = False
        self.switches = 0

    def predict(self, k: int, queued_bytes: float = 0.0) -> float:
        """Predicted seconds for setting ``k`` behind ``queued_bytes`` of unsent data."""
        s = self.settings[k]
        wire = 8.0 * (queued_bytes + s.bytes_per_sample) / self.estimator.bps
        return 1e-3 * s.compute_ms + wire + self.rtt_s

    def _best_under(self, limit: float, queued_bytes: float) -> int | None:
        for k in range(len(self.settings) - 1, -1, -1):
            if self.predict(k, queued_bytes) <= limit:
                return k
        return None

    def choose(self, queued_bytes: float = 0.0) -> int:
        """Index (into :attr:`settings`) of the setting for the next request."""
        cur = self.current
        up = self._best_under(self.up_margin * self.bound_s, queued_bytes)
        if up is not None and up > cur and self._may_probe(up):
            new = up
        elif self.predict(cur, queued_bytes) > self.bound_s:
            fit = self._best_under(self.bound_s, queued_bytes)
            new = fit if fit is not None else 0
        else:
            new = cur
        if new != cur:
            if new < cur and self.last_up and self.since_switch <= 2 * self.dwell:
                self.dwell = min(2 * self.dwell, self.max_dwell)
                self.failed = (cur, self.estimator.bps)
            self.last_up = new > cur
            self.current, self.since_switch = new, 0
            self.switches += 1
        self.since_switch += 1
        return new

    def _may_probe(self, k: int) -> bool:
        if self.since_switch < self.min_dwell:
            return False
        if self.failed is None or k < self.failed[0]:
            return True
        if self.estimator.bps >= self.reprobe_gain * self.failed[1]:
            self.failed, self.dwell = None, self.min_dwell  # the link has changed
            return True
        return self.since_switch >= self.dwell

    def observe(self, nbytes: float, seconds: float) -> None:
        self.estimator.observe(nbytes, seconds)

    def late(self, nbytes: float, elapsed_s: float) -> None:
        self.estimator.cap(nbytes, elapsed_s)


@dataclass
class FixedPolicy:
    """Always the same setting (the baselines)."""

    settings: list[Setting]
    index: int

    def choose(self, queued_bytes: float = 0.0) -> int:
        return self.index

    def observe(self, nbytes: float, seconds: float) -> None:
        pass

    def late(self, nbytes: float, elapsed_s: float) -> None:
        pass


@dataclass
class Request:
    """What happened to one request in :func:`simulate`."""

    t: float
    setting: int
    name: str
    nbytes: int
    latency_s: float
    correct: bool
    queued_s: float = 0.0
    estimate_bps: float = field(default=math.nan)


def _unsent(nbytes: int, start: float, finish: float, t: float) -> float:
    """Bytes of a message still in the sender's buffer at ``t`` (linear while it drains)."""
    if t >= finish:
        return 0.0
    if t <= start:
        return float(nbytes)
    return nbytes * (finish - t) / (finish - start)


def simulate(
    policy: Policy,
    channel: Channel,
    arrivals: Sequence[float],
    payload: Callable[[int, int], tuple[int, bool]],
) -> list[Request]:
    """Play requests arriving at ``arrivals`` (s) through ``channel``'s uplink, FIFO.

    ``payload(i, k)`` gives request ``i``'s real byte count and whether its answer is right at
    setting ``k``. A request computes for the setting's ``compute_ms`` (before sending), waits
    for the link, is serialised at the trace's bandwidth (packet headers included, see
    :meth:`Channel.serialization_time`) and is answered after one RTT. The controller is told
    the bytes not yet serialised (what its socket buffer still holds). The sender learns a
    transfer's time when its acknowledgement arrives (last byte out + RTT); until then a
    late transfer caps the estimate (:meth:`BandwidthEstimator.cap`).
    """
    pending: list[tuple[float, float, int]] = []  # (start, ack time, bytes), not yet acked
    link_free = -math.inf
    out: list[Request] = []
    rtt = channel.rtt_s
    for i, t in enumerate(arrivals):
        still = []
        for start, ack, n in pending:
            if ack <= t:
                policy.observe(n, ack - start)
            else:
                still.append((start, ack, n))
        pending = still
        unacked = [(start, n) for start, _, n in pending if start <= t]
        if unacked:
            start, n = unacked[0]
            policy.late(n, t - start)
        queued = sum(_unsent(n, start, ack - rtt, t) for start, ack, n in pending)
        k = policy.choose(queued)
        s = policy.settings[k]
        nbytes, correct = payload(i, k)
        ready = t + 1e-3 * s.compute_ms
        start = max(ready, link_free)
        finish = start + channel.serialization_time(nbytes, start)
        link_free = finish
        pending.append((start, finish + rtt, nbytes))
        est = getattr(getattr(policy, "estimator", None), "bps", math.nan)
        out.append(Request(float(t), k, s.name, int(nbytes), float(finish + rtt - t),
                           bool(correct), float(start - ready), float(est)))
    return out


def summarize(requests: Sequence[Request], bound_s: float) -> dict[str, Any]:
    """Latency percentiles (ms), misses of the bound, accuracy and setting counts."""
    if not requests:
        return {"n": 0}
    lat = sorted(r.latency_s for r in requests)

    def pct(p: float) -> float:
        return 1e3 * lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))]

    counts: dict[str, int] = {}
    for r in requests:
        counts[r.name] = counts.get(r.name, 0) + 1
    return {
        "n": len(requests),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "max_ms": 1e3 * lat[-1],
        "bound_ms": 1e3 * bound_s,
        "missed": sum(r.latency_s > bound_s for r in requests),
        "accuracy": 100.0 * sum(r.correct for r in requests) / len(requests),
        "mean_bytes": sum(r.nbytes for r in requests) / len(requests),
        "settings": counts,
    }

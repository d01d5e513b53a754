"""Server metrics in the Prometheus text format (version 0.0.4), without a client library.

:class:`Registry` holds counters, gauges and histograms with labels and renders them;
:func:`parse_prometheus` reads the text back (tests, the load generator); :class:`ServerMetrics`
is the server's metric set. Metrics are updated on the event loop only, so no locks.

Per-request server compute (for "server CPU per request, tail excluded"): the process's
``process_cpu_seconds_total`` minus ``splitcomp_tail_cpu_seconds_total`` (CPU of the thread
running the tail; exact when torch runs one intra-op thread), divided by the results sent.
``splitcomp_loop_cpu_seconds_total`` is the event loop's share (transport, framing, routing,
batching); ``splitcomp_worker_cpu_seconds_total`` minus the tail's CPU is decoding, stacking
and result encoding (``splitcomp_decode_cpu_seconds_total`` the decoding alone).
"""

from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(int(v)) if float(v).is_integer() and abs(v) < 1 << 53 else repr(float(v))


def _label_str(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing value per label combination."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        return [f"{self.name}{_label_str(self.labelnames, k)} {_fmt(v)}"
                for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value that goes up and down, or is read from ``fn`` at render time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 fn: Callable[[], float] | None = None, kind: str = "gauge") -> None:
        super().__init__(name, help, labelnames)
        self.values: dict[Labels, float] = {}
        self.fn = fn
        self.kind = kind  # "counter" for a monotonic value read from fn

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        if self.fn is not None:
            return [f"{self.name} {_fmt(float(self.fn()))}"]
        return [f"{self.name}{_label_str(self.labelnames, k)} {_fmt(v)}"
                for k, v in sorted(self.values.items())]


class Histogram(_Metric):
    """Cumulative buckets, ``_sum`` and ``_count`` per label combination."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        self.values: dict[Labels, list[float]] = {}  # per-bucket counts, then sum, then count

    def observe(self, value: float, labels: Labels = (), count: int = 1) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        for i, b in enumerate(self.buckets):
            if value <= b:
                row[i] += count
                break
        row[-2] += value * count
        row[-1] += count

    def observe_many(self, values: Sequence[float], labels: Labels = ()) -> None:
        """:meth:`observe` each of ``values`` (once each)."""
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        buckets, over, total = self.buckets, len(self.buckets), row[-2]
        for v in values:
            i = bisect_left(buckets, v)  # the first bucket with v <= its bound
            if i < over and v <= buckets[i]:  # (none for NaN, as observe)
                row[i] += 1
            total += v
        row[-2] = total
        row[-1] += len(values)

    def render(self) -> list[str]:
        lines = []
        for k, row in sorted(self.values.items()):
            cum = 0.0
            for b, n in zip(self.buckets, row, strict=False):
                cum += n
                le = 'le="' + _fmt(b) + '"'
                lines.append(f"{self.name}_bucket{_label_str(self.labelnames, k, le)} {_fmt(cum)}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_label_str(self.labelnames, k, inf)} "
                         f"{_fmt(row[-1])}")
            lines.append(f"{self.name}_sum{_label_str(self.labelnames, k)} {_fmt(row[-2])}")
            lines.append(f"{self.name}_count{_label_str(self.labelnames, k)} {_fmt(row[-1])}")
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            lines += m.header()
            lines += m.render()
        return "\n".join(lines) + "\n"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_prometheus(text: str) -> Samples:
    """Parse Prometheus text into ``{(sample name, sorted label pairs): value}``.

    Raises ValueError on a line that is not a comment, blank, or a well-formed sample.
    """
    out: Samples = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {lineno}: not a Prometheus sample: {line!r}")
        labels: list[tuple[str, str]] = []
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            if not lm:
                raise ValueError(f"line {lineno}: bad labels: {body!r}")
            labels.append((lm.group(1), _unescape(lm.group(2))))
            pos = lm.end()
        out[(m.group(1), tuple(sorted(labels)))] = float(m.group(4))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


class ServerMetrics:
    """Everything the server counts (names prefixed ``splitcomp_``), labelled by deployment."""

    def __init__(self, inflight: Callable[[], float] | None = None,
                 connections: Callable[[], float] | None = None,
                 loop_cpu: Callable[[], float] | None = None,
                 inflight_bytes: Callable[[], float] | None = None,
                 output_bytes: Callable[[], float] | None = None,
                 deferrals: Callable[[], float] | None = None) -> None:
        r = self.registry = Registry()
        self.started = time.monotonic()
        d = ("deployment",)
        self.requests = r.add(Counter("splitcomp_requests_total",
                                      "Request frames received (parsed or not).", d))
        self.results = r.add(Counter("splitcomp_results_total", "Results sent.", d))
        self.errors = r.add(Counter("splitcomp_errors_total", "Error responses by code.",
                                    ("deployment", "code")))
        self.dedup_hits = r.add(Counter(
            "splitcomp_dedup_hits_total",
            "Retried request ids answered from the cache or attached to the in-flight one.", d))
        self.bytes_in = r.add(Counter("splitcomp_bytes_in_total",
                                      "Request frame bytes received.", d))
        self.bytes_out = r.add(Counter("splitcomp_bytes_out_total",
                                       "Response frame bytes queued for sending.", d))
        self.batch_size = r.add(Histogram("splitcomp_batch_size",
                                          "Samples per tail call.", d, BATCH_BUCKETS))
        self.batch_requests = r.add(Histogram("splitcomp_batch_requests",
                                              "Requests per batch taken from the queue.", d,
                                              BATCH_BUCKETS))
        self.decode_seconds = r.add(Counter(
            "splitcomp_decode_seconds_total",
            "Header checks and decoding of bitstreams (worker thread, wall).", d))
        self.decode_cpu_seconds = r.add(Counter(
            "splitcomp_decode_cpu_seconds_total",
            "CPU of the worker thread while checking and decoding bitstreams.", d))
        self.worker_cpu_seconds = r.add(Counter(
            "splitcomp_worker_cpu_seconds_total",
            "CPU of the worker thread per batch: decode, stacking, tail, results.", d))
        self.tail_seconds = r.add(Counter("splitcomp_tail_seconds_total",
                                          "Tail calls (wall).", d))
        self.tail_cpu_seconds = r.add(Counter(
            "splitcomp_tail_cpu_seconds_total",
            "CPU of the thread running the tail during tail calls.", d))
        self.encode_seconds = r.add(Counter("splitcomp_encode_seconds_total",
                                            "Stacking, splitting and encoding results.", d))
        self.queue_seconds = r.add(Counter("splitcomp_queue_seconds_total",
                                           "Time requests waited before their batch started.", d))
        self.latency = r.add(Histogram("splitcomp_request_seconds",
                                       "Frame arrival to response queued, per result.", d))
        self.handshakes_refused = r.add(Counter("splitcomp_handshakes_refused_total",
                                                "Connections refused at the handshake.",
                                                ("reason",)))
        self.connections_total = r.add(Counter("splitcomp_connections_total",
                                               "WebSocket connections accepted."))
        self.reads_paused = r.add(Counter(
            "splitcomp_reads_paused_total",
            "Times a connection's reading paused: its answers were not being read."))
        self.output_overflows = r.add(Counter(
            "splitcomp_output_overflows_total",
            "Connections closed (1008) for leaving more answer bytes unread than allowed."))
        if connections is not None:
            r.add(Gauge("splitcomp_connections", "Open WebSocket connections.", fn=connections))
        if inflight is not None:
            r.add(Gauge("splitcomp_inflight", "Requests accepted and not yet answered.",
                        fn=inflight))
        if inflight_bytes is not None:
            r.add(Gauge("splitcomp_inflight_bytes",
                        "Request frame bytes accepted and not yet answered.", fn=inflight_bytes))
        if output_bytes is not None:
            r.add(Gauge("splitcomp_output_bytes",
                        "Answer bytes queued in the server, not yet taken by the socket.",
                        fn=output_bytes))
        if deferrals is not None:
            r.add(Gauge("splitcomp_fair_deferrals_total",
                        "Requests left for a later batch to keep another client's fair turn.",
                        fn=deferrals, kind="counter"))
        if loop_cpu is not None:
            r.add(Gauge("splitcomp_loop_cpu_seconds_total",
                        "CPU of the event-loop thread (sockets, frames, routing, batching).",
                        fn=loop_cpu, kind="counter"))
        r.add(Gauge("process_cpu_seconds_total", "User and system CPU of this process.",
                    fn=_process_cpu, kind="counter"))
        r.add(Gauge("splitcomp_uptime_seconds", "Seconds since the server started.",
                    fn=lambda: time.monotonic() - self.started))

    def render(self) -> str:
        return self.registry.render()

    def error(self, deployment: str, code_name: str) -> None:
        self.errors.inc((deployment, code_name))


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


"""Rate control on the real runtime: a client that moves between codec settings as the link
changes, sending real bitstreams to a real server.

:class:`AdaptiveClient` wraps an :class:`~splitcomp.runtime.AsyncSplitClient`, the head, a
policy (:class:`~splitcomp.plan.rate_control.RateController` or a fixed setting) and one codec
per setting. Per request it asks the policy for a setting (telling it the bytes still queued
on the uplink), runs the head, encodes with that setting's codec, puts the request frame on a
:class:`PacedLink` (a FIFO uplink that follows the :class:`~splitcomp.plan.channel.Channel` on
a :class:`~splitcomp.plan.channel.Pacer`'s clock, bandwidth trace included), sends it over the
WebSocket, waits the downlink time of the answer and records the real end-to-end latency.
The policy learns the transfer time (first byte on the link to answer, minus the server's
own time) when the answer arrives, and is told of a transfer still unanswered when the next
request is chosen (:meth:`~splitcomp.plan.rate_control.RateController.late`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..codecs import Codec
from ..runtime import AsyncSplitClient
from .channel import Pacer
from .planner import request_wire_bytes, response_wire_bytes
from .rate_control import Policy, Request


class PacedLink:
    """A FIFO uplink on ``pacer``'s clock: messages are serialised one after another at the
    channel's rate (trace, packet headers and expected retransmissions included) and arrive
    half an RTT after their last byte leaves. Unlike :meth:`Pacer.pace`, concurrent messages
    queue behind each other, as on a real link."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.channel = pacer.channel
        self._free = -math.inf
        self._queue: list[tuple[float, float, int]] = []  # (start, last byte out, bytes)

    def now(self) -> float:
        return self.pacer.now()

    def queued_bytes(self, t: float | None = None) -> float:
        """Bytes of earlier messages not yet serialised at ``t`` (default: now)."""
        t = self.now() if t is None else t
        self._queue = [m for m in self._queue if m[1] > t]
        total = 0.0
        for start, finish, n in self._queue:
            total += n if t <= start else n * (finish - t) / (finish - start)
        return total

    def reserve(self, nbytes: int) -> tuple[float, float]:
        """Queue ``nbytes``: (when its first byte leaves, when it has fully arrived)."""
        ch = self.channel
        start = max(self.now(), self._free)
        finish = start + ch.serialization_time(nbytes, start) + ch.retransmission_time(
            nbytes, start)
        self._free = finish
        if finish > start:
            self._queue.append((start, finish, nbytes))
        return start, finish + 0.5 * ch.rtt_s

    async def sleep_until(self, t: float) -> None:
        """Sleep until the pacer's clock reads ``t``."""
        delay = t - self.now()
        if delay > 0.001:
            await asyncio.sleep(delay - 0.001)
        while self.now() < t:  # asyncio.sleep may wake up a tick early
            await asyncio.sleep(0)


@dataclass
class Sent:
    """One request of an :class:`AdaptiveClient`: the setting used, the bytes, the real
    end-to-end latency (head to answer after the downlink) and the answer (or the error)."""

    t: float  #: arrival, on the pacer's clock
    setting: int
    name: str
    nbytes: int  #: bitstream bytes
    wire_bytes: int  #: the request on the wire (frame and WebSocket header)
    latency_s: float = math.nan
    queued_s: float = 0.0  #: waiting for the link behind earlier requests
    server_s: float = 0.0  #: queue + decode + tail on the server
    estimate_bps: float = math.nan  #: the policy's bandwidth estimate when choosing
    bitstream: bytes = b""
    outputs: tuple[torch.Tensor, ...] | None = None
    error: str | None = None

    def as_request(self, correct: bool = True) -> Request:
        """The :class:`~splitcomp.plan.rate_control.Request` that ``summarize`` reads."""
        return Request(self.t, self.setting, self.name, self.nbytes, self.latency_s, correct,
                       self.queued_s, self.estimate_bps)


@dataclass
class AdaptiveClient:
    """Per-request codec choice over a paced link to a real server.

    ``codecs`` maps each setting name of ``policy.settings`` to its codec (the server's
    deployment must accept them all). ``keep_bitstreams``: store each request's bitstream in
    its :class:`Sent` (to check answers against a local tail). ``gate``: a per-input choice
    instead of the policy's (a trained gate, ``splitcomp.train.gate.EdgeGate``: the head's
    first output -> an index into ``policy.settings``), made after the head has run.
    """

    client: AsyncSplitClient
    head: Callable[..., Any] | None
    policy: Policy
    codecs: Mapping[str, Codec]
    link: PacedLink
    keep_bitstreams: bool = False
    gate: Callable[[torch.Tensor], torch.Tensor] | None = None
    _unanswered: dict[int, tuple[float, int]] = field(default_factory=dict, init=False,
                                                      repr=False)
    _ids: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [s.name for s in self.policy.settings if s.name not in self.codecs]
        if missing:
            raise ValueError(f"no codec for setting(s) {', '.join(missing)}")

    def choose(self) -> int:
        """The policy's setting for a request leaving now (told of late transfers first)."""
        now = self.link.now()
        if self._unanswered:
            start, n = min(self._unanswered.values())
            if start <= now:
                self.policy.late(n, now - start)
        return self.policy.choose(self.link.queued_bytes(now))

    def encode(self, k: int | None, *inputs: Any) -> tuple[int, bytes]:
        """Head, then the codec of setting ``k`` (None: the gate's pick); (setting, bytes)."""
        with torch.inference_mode():
            feats = self.head(*inputs) if self.head is not None else inputs
            if isinstance(feats, torch.Tensor):
                feats = (feats,)
            if k is None:
                if self.gate is None:
                    raise ValueError("no setting given and no gate")
                k = int(self.gate(feats[0])[0])
        return k, self.codecs[self.policy.settings[k].name].encode(list(feats))

    async def request(self, *inputs: Any) -> Sent:
        """Choose, encode, send through the paced link and the server; never raises for a
        failed request (its :attr:`Sent.error` says why)."""
        t0 = self.link.now()
        k = None if self.gate is not None else self.choose()
        est = float(getattr(getattr(self.policy, "estimator", None), "bps", math.nan))
        k, data = self.encode(k, *inputs)
        wire = request_wire_bytes(len(data), self.client.deployment)
        sent = Sent(t0, k, self.policy.settings[k].name, len(data), wire, estimate_bps=est,
                    bitstream=data if self.keep_bitstreams else b"")
        start, arrive = self.link.reserve(wire)
        sent.queued_s = max(start - self.link.now(), 0.0)
        rid = self._ids = self._ids + 1
        self._unanswered[rid] = (start, wire)
        try:
            await self.link.sleep_until(arrive)
            res = await self.client.infer_encoded(data)
            t_answer = self.link.now()
            down = self.link.channel.transfer_time(response_wire_bytes(res.bytes_received),
                                                   t_answer, downlink=True)
            await self.link.sleep_until(t_answer + down)
        except Exception as e:  # recorded, not raised: a benchmark counts failures
            sent.error = f"{type(e).__name__}: {e}"
            sent.latency_s = self.link.now() - t0
            return sent
        finally:
            self._unanswered.pop(rid, None)
        t1 = self.link.now()
        tm = res.timing
        sent.server_s = (tm.queue_us + tm.decode_us + tm.tail_us) / 1e6
        sent.latency_s = t1 - t0
        sent.outputs = res.outputs
        self.policy.observe(wire, max(t1 - start - sent.server_s, 0.0))
        return sent

    async def run(self, inputs: Sequence[Any], arrivals: Sequence[float]) -> list[Sent]:
        """Open loop: request ``i`` (``inputs[i]``, a tensor or a tuple of head inputs) starts
        at ``arrivals[i]`` on the pacer's clock, whether earlier ones are answered or not."""
        tasks = []
        for x, t in zip(inputs, arrivals, strict=True):
            await self.link.sleep_until(t)
            args = x if isinstance(x, tuple) else (x,)
            tasks.append(asyncio.create_task(self.request(*args)))
            await asyncio.sleep(0)  # let the request choose and encode before the next
        return list(await asyncio.gather(*tasks))


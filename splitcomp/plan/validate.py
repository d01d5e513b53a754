"""Check a plan's predicted latency against the real runtime on loopback.

A :class:`~splitcomp.runtime.Server` on 127.0.0.1 serves the plan's tail; a client runs the
head, encodes with the plan's codec, waits the channel's uplink time (:class:`.Pacer`),
sends, gets the answer and waits the downlink time. The end-to-end time of each request,
head included, is measured; the prediction assumes the edge runs at this machine's speed
(device profile ``server``), since here it does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..codecs import Codec
from ..runtime import AsyncSplitClient, Deployment, Server
from .channel import Channel, Pacer
from .planner import request_wire_bytes, response_wire_bytes


@dataclass(frozen=True)
class Measured:
    """Per-request end-to-end seconds (head to answer) and the server's own figures."""

    end_to_end_s: tuple[float, ...]
    queue_s: tuple[float, ...]
    server_s: tuple[float, ...]  #: decode + tail as the server reports them
    uplink_bytes: int

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.end_to_end_s)


async def _run(head: nn.Module, tail: nn.Module, codec: Codec, channel: Channel,
               inputs: Sequence[torch.Tensor], warmup: int, max_wait_ms: float) -> Measured:
    dep = Deployment("plan", tail, max_wait_ms=max_wait_ms)
    server = Server(dep, "127.0.0.1", 0, ping_interval=None)
    await server.start()
    e2e, queue, srv = [], [], []
    up = 0
    try:
        async with AsyncSplitClient(server.url, head, codec, "plan",
                                    head_in_thread=False) as client:
            await client.connect()
            pacer = Pacer(channel)
            for i, x in enumerate(inputs):
                t0 = time.perf_counter()
                data = client.encode(x)
                up = len(data)
                await pacer.pace(request_wire_bytes(len(data), "plan"))
                res = await client.infer_encoded(data)
                await pacer.pace(response_wire_bytes(res.bytes_received), downlink=True)
                t1 = time.perf_counter()
                if i >= warmup:
                    e2e.append(t1 - t0)
                    queue.append(res.timing.queue_us / 1e6)
                    srv.append((res.timing.decode_us + res.timing.tail_us) / 1e6)
    finally:
        await server.stop()
    return Measured(tuple(e2e), tuple(queue), tuple(srv), up)


def measure_split(head: nn.Module, tail: nn.Module, codec: Codec, channel: Channel,
                  inputs: Sequence[torch.Tensor], *, warmup: int = 2,
                  max_wait_ms: float = 2.0) -> Measured:
    """Send each input (batch 1, one at a time) through head, codec, paced loopback, tail."""
    with torch.inference_mode():
        return asyncio.run(_run(head, tail, codec, channel, inputs, warmup, max_wait_ms))

"""The network between edge and server: bandwidth, RTT, packet loss, bit errors.

``Channel.transfer_time(nbytes, t)`` predicts how long one message of ``nbytes`` takes to
arrive when its first byte leaves at ``t`` (seconds since the channel's clock started):

    half the RTT + serialisation of payload and per-packet headers at the bandwidth
    + the expected cost of retransmissions

A packet of ``mss`` payload bytes (plus ``header_bytes``) is lost with probability
``p = 1 - (1 - loss) * (1 - ber) ** bits_per_packet``; each loss costs one more
serialisation of that packet and one RTT of recovery (fast retransmit), so the expected extra
time per packet is ``p / (1 - p) * (packet time + rtt)``. Bandwidth is constant or read from
a trace (``time_s bandwidth_bps`` lines, linearly interpolated, held at the ends).

That is a link with retransmission (TCP). A raw radio link without it delivers every byte,
some bits flipped: :meth:`Channel.corrupt` is that link at the channel's ``ber``
(:func:`splitcomp.codecs.channel_errors.flip_bits`), what ``splitcomp eval --ber`` and
``benchmarks/bit_errors.py`` send streams through.

:class:`Pacer` delays a real send by the predicted time so that a loopback link behaves
like the channel (used to check the planner's predictions end to end).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs.channel_errors import flip_bits

_RATE_UNITS = {"": 1.0, "bit": 1.0, "b": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3,
               "kb": 1e3, "mbit": 1e6, "mbps": 1e6, "mb": 1e6, "gbit": 1e9, "gbps": 1e9,
               "gb": 1e9}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_NUM = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"


def parse_rate(text: str | float) -> float:
    """``"10Mbit"``, ``"1.5mbps"``, ``"800kbit"``, ``"2e6"`` -> bits per second.

    Units are bits (tc style), with or without ``/s``; a capital ``B`` (bytes, as in ``MBps``)
    is refused rather than guessed.
    """
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(_NUM + r"([A-Za-z/]*)\s*", text)
    unit = m.group(2).lower().removesuffix("/s") if m else ""
    if not m or unit not in _RATE_UNITS or "B" in m.group(2):
        raise ValueError(f"cannot read a bit rate from {text!r} (e.g. 10Mbit, 800kbit, 2e6)")
    value = float(m.group(1)) * _RATE_UNITS[unit]
    if value <= 0:
        raise ValueError(f"bit rate must be positive, got {text!r}")
    return value


def parse_duration(text: str | float) -> float:
    """``"20ms"``, ``"0.1s"``, ``"500us"``, ``"0.02"`` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(_NUM + r"([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _TIME_UNITS:
        raise ValueError(f"cannot read a duration from {text!r} (e.g. 20ms, 0.1s)")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class BandwidthTrace:
    """Bandwidth over time: knots ``times`` (s, increasing) and ``bps``, linear in between."""

    times: tuple[float, ...]
    bps: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.times) != len(self.bps) or not self.times:
            raise ValueError("a trace needs as many times as rates, at least one")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("trace times must increase strictly")
        if min(self.bps) <= 0:
            raise ValueError("trace bandwidths must be positive")

    @classmethod
    def load(cls, path: str | Path) -> BandwidthTrace:
        """Read ``time_s bandwidth`` lines (comma or whitespace separated; ``#`` comments and
        a non-numeric header line are skipped; the rate may carry a unit, e.g. ``5Mbit``)."""
        times, rates = [], []
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p for p in re.split(r"[,\s;]+", line) if p]
            try:
                t, r = parse_duration(parts[0]), parse_rate(parts[1])
            except (ValueError, IndexError):
                if not times:  # a header line
                    continue
                raise ValueError(f"{path}: cannot read {line!r}") from None
            times.append(t)
            rates.append(r)
        return cls(tuple(times), tuple(rates))

    def at(self, t: float) -> float:
        """Bandwidth (bit/s) at time ``t``."""
        return float(np.interp(t, self.times, self.bps))

    def bits_between(self, t0: float, t1: float) -> float:
        """Bits the link carries from ``t0`` to ``t1`` (exact for the piecewise-linear rate)."""
        return self._cum(t1) - self._cum(t0)

    def finish_time(self, t0: float, bits: float) -> float:
        """When ``bits`` sent from ``t0`` on have all left."""
        target = self._cum(t0) + bits
        knots, cum = self._knots()
        if target >= cum[-1]:
            return knots[-1] + (target - cum[-1]) / self.bps[-1]
        if target <= cum[0]:
            return knots[0] - (cum[0] - target) / self.bps[0]
        i = int(np.searchsorted(cum, target, side="right")) - 1
        t_a, t_b = knots[i], knots[i + 1]
        b_a, b_b = self.bps[i], self.bps[i + 1]
        rem = target - cum[i]
        slope = (b_b - b_a) / (t_b - t_a)
        if abs(slope) < 1e-12:
            return t_a + rem / b_a
        # b_a * dt + slope / 2 * dt^2 = rem
        dt = (-b_a + math.sqrt(b_a * b_a + 2 * slope * rem)) / slope
        return t_a + dt

    def _knots(self) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(self.times, dtype=np.float64)
        b = np.asarray(self.bps, dtype=np.float64)
        seg = 0.5 * (b[1:] + b[:-1]) * np.diff(t)
        return t, np.concatenate([[0.0], np.cumsum(seg)])

    def _cum(self, t: float) -> float:
        """Bits carried from ``times[0]`` to ``t`` (negative before it)."""
        knots, cum = self._knots()
        if t <= knots[0]:
            return -(knots[0] - t) * self.bps[0]
        if t >= knots[-1]:
            return float(cum[-1] + (t - knots[-1]) * self.bps[-1])
        i = int(np.searchsorted(knots, t, side="right")) - 1
        dt = t - knots[i]
        b = self.at(t)
        return float(cum[i] + 0.5 * (self.bps[i] + b) * dt)


@dataclass(frozen=True)
class Channel:
    """One edge-server link. ``bandwidth_bps`` is the uplink rate (ignored when ``trace`` is
    given); ``downlink_bps`` defaults to the uplink rate (trace included). ``loss`` is the
    packet loss probability, ``ber`` the bit error rate (a corrupted packet is a lost one).
    ``mss``: payload bytes per packet; ``header_bytes``: TCP/IP headers per packet."""

    bandwidth_bps: float = 10e6
    rtt_s: float = 0.02
    loss: float = 0.0
    ber: float = 0.0
    downlink_bps: float | None = None
    trace: BandwidthTrace | None = None
    mss: int = 1448
    header_bytes: int = 52
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.bandwidth_bps <= 0 or self.rtt_s < 0:
            raise ValueError("bandwidth must be positive and RTT non-negative")
        if not (0 <= self.loss < 1 and 0 <= self.ber < 1):
            raise ValueError("loss and ber are probabilities below 1")

    @classmethod
    def parse(cls, bandwidth: str | float = "10Mbit", rtt: str | float = "20ms", *,
              loss: float = 0.0, ber: float = 0.0, downlink: str | float | None = None,
              trace: str | Path | None = None) -> Channel:
        """A channel from command-line style strings."""
        return cls(parse_rate(bandwidth), parse_duration(rtt), loss, ber,
                   parse_rate(downlink) if downlink is not None else None,
                   BandwidthTrace.load(trace) if trace is not None else None)

    # -- the model -------------------------------------------------------------------
    def packet_error(self) -> float:
        """Probability that one full packet is lost or corrupted."""
        bits = 8 * (self.mss + self.header_bytes)
        return 1.0 - (1.0 - self.loss) * (1.0 - self.ber) ** bits

    def corrupt(self, data: bytes | bytearray | memoryview, rng: np.random.Generator) -> bytes:
        """``data`` as a link without retransmission delivers it: each bit flipped
        independently with probability :attr:`ber` (seeded by ``rng``)."""
        return flip_bits(data, self.ber, rng)

    def wire_bits(self, nbytes: int) -> float:
        """Bits on the link for ``nbytes`` of payload (packet headers included)."""
        packets = max(1, math.ceil(nbytes / self.mss))
        return 8.0 * (nbytes + packets * self.header_bytes)

    def rate_at(self, t: float = 0.0, downlink: bool = False) -> float:
        if downlink and self.downlink_bps is not None:
            return self.downlink_bps
        return self.trace.at(t) if self.trace is not None else self.bandwidth_bps

    def serialization_time(self, nbytes: int, t: float = 0.0, downlink: bool = False) -> float:
        """Seconds to push ``nbytes`` (and packet headers) onto the link from ``t``."""
        if nbytes <= 0:
            return 0.0
        bits = self.wire_bits(nbytes)
        if self.trace is not None and not (downlink and self.downlink_bps is not None):
            return self.trace.finish_time(t, bits) - t
        return bits / self.rate_at(t, downlink)

    def retransmission_time(self, nbytes: int, t: float = 0.0, downlink: bool = False) -> float:
        """Expected extra seconds lost packets cost (resend + one RTT to notice each)."""
        p = self.packet_error()
        if nbytes <= 0 or p == 0.0:
            return 0.0
        packets = max(1, math.ceil(nbytes / self.mss))
        per_packet = self.serialization_time(nbytes, t, downlink) / packets
        return packets * p / (1.0 - p) * (per_packet + self.rtt_s)

    def transfer_time(self, nbytes: int, t: float = 0.0, downlink: bool = False) -> float:
        """Expected seconds for a message of ``nbytes`` sent at ``t`` to arrive in full:
        half the RTT + serialisation + expected retransmissions. Zero bytes: nothing sent."""
        if nbytes <= 0:
            return 0.0
        return (0.5 * self.rtt_s + self.serialization_time(nbytes, t, downlink)
                + self.retransmission_time(nbytes, t, downlink))

    def round_trip(self, up_bytes: int, down_bytes: int, t: float = 0.0,
                   server_s: float = 0.0) -> float:
        """Request of ``up_bytes`` out, ``server_s`` of work, response of ``down_bytes`` back."""
        up = self.transfer_time(up_bytes, t)
        return up + self.transfer_time(down_bytes, t + up + server_s, downlink=True)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name")
        if self.trace is not None:
            d["trace"] = {"times": list(self.trace.times), "bps": list(self.trace.bps)}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Channel:
        d = dict(d)
        tr = d.pop("trace", None)
        return cls(**d, trace=BandwidthTrace(tuple(tr["times"]), tuple(tr["bps"]))
                   if tr else None)

    def describe(self) -> str:
        bw = "trace" if self.trace is not None else f"{self.bandwidth_bps / 1e6:g} Mbit/s"
        extra = (f", loss {self.loss:g}" if self.loss else "") + (
            f", BER {self.ber:g}" if self.ber else "")
        return f"{bw}, RTT {1e3 * self.rtt_s:g} ms{extra}"


class Pacer:
    """Make a fast real link behave like ``channel``: ``await pacer.pace(n)`` sleeps for
    the time ``n`` bytes would take on the channel, measured on the pacer's own clock
    (started at construction, so a bandwidth trace plays out in real time).

    Call it before sending a message (uplink) and after receiving one (``downlink=True``);
    the real transfer time of the loopback link then adds on top (sub-millisecond).
    """

    def __init__(self, channel: Channel, clock: Any = time.perf_counter) -> None:
        self.channel = channel
        self._clock = clock
        self._start = clock()

    def now(self) -> float:
        return self._clock() - self._start

    def delay(self, nbytes: int, downlink: bool = False) -> float:
        return self.channel.transfer_time(nbytes, self.now(), downlink)

    async def pace(self, nbytes: int, downlink: bool = False) -> float:
        """Sleep for the channel's transfer time of ``nbytes``; returns the seconds slept."""
        d = self.delay(nbytes, downlink)
        target = self._clock() + d
        await asyncio.sleep(max(d - 0.001, 0.0))
        while self._clock() < target:  # asyncio.sleep may wake up to a tick early
            await asyncio.sleep(0)
        return d

    def pace_sync(self, nbytes: int, downlink: bool = False) -> float:
        """:meth:`pace` for synchronous code."""
        d = self.delay(nbytes, downlink)
        time.sleep(d)
        return d

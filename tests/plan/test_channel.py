"""Channel model: parsing, trace interpolation, transfer-time arithmetic, pacing."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from splitcomp.plan.channel import BandwidthTrace, Channel, Pacer, parse_duration, parse_rate


@pytest.mark.parametrize("text, bps", [
    ("10Mbit", 10e6), ("1Mbit", 1e6), ("800kbit", 8e5), ("1.5mbps", 1.5e6), ("2e6", 2e6),
    ("1Gbit", 1e9), ("100 kbit/s", 1e5), (3e6, 3e6),
])
def test_parse_rate(text, bps) -> None:
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["", "fast", "10MB", "10MBps", "-1Mbit", "0Mbit", "10 parsecs"])
def test_parse_rate_refuses(bad) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


@pytest.mark.parametrize("text, s", [("20ms", 0.02), ("0.1s", 0.1), ("500us", 5e-4),
                                     ("0.02", 0.02), ("1", 1.0)])
def test_parse_duration(text, s) -> None:
    assert parse_duration(text) == pytest.approx(s)
    with pytest.raises(ValueError):
        parse_duration("20 minutes")


def test_constant_transfer_time() -> None:
    ch = Channel(1e6, 0.02, mss=1000, header_bytes=50)
    # 2500 bytes: 3 packets, 2650 bytes on the wire -> 21.2 ms + half the RTT
    assert ch.wire_bits(2500) == 8 * 2650
    assert ch.transfer_time(2500) == pytest.approx(0.01 + 0.0212)
    assert ch.transfer_time(0) == 0.0
    assert ch.round_trip(2500, 100) == pytest.approx(0.02 + 0.0212 + 8 * 150 / 1e6)
    assert Channel(1e6, 0.02, downlink_bps=1e5).transfer_time(100, downlink=True) == \
        pytest.approx(0.01 + 8 * 152 / 1e5)


def test_loss_and_ber_add_expected_retransmissions() -> None:
    clean = Channel(1e6, 0.02)
    lossy = Channel(1e6, 0.02, loss=0.1)
    n = 100 * clean.mss
    per_packet = clean.serialization_time(n) / 100
    extra = 100 * (0.1 / 0.9) * (per_packet + 0.02)
    assert lossy.transfer_time(n) - clean.transfer_time(n) == pytest.approx(extra)
    noisy = Channel(1e6, 0.02, ber=1e-5)
    p = 1 - (1 - 1e-5) ** (8 * (noisy.mss + noisy.header_bytes))
    assert noisy.packet_error() == pytest.approx(p)
    assert noisy.transfer_time(n) > clean.transfer_time(n)
    with pytest.raises(ValueError):
        Channel(1e6, 0.02, loss=1.0)


def test_trace_interpolation_and_integration(tmp_path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("time_s,bandwidth_bps\n# a comment\n0,1e6\n1, 3e6\n2 3Mbit\n")
    tr = BandwidthTrace.load(path)
    assert tr.times == (0.0, 1.0, 2.0) and tr.bps == (1e6, 3e6, 3e6)
    assert tr.at(0.5) == pytest.approx(2e6)
    assert tr.at(-1) == 1e6 and tr.at(10) == 3e6  # held at the ends
    assert tr.bits_between(0, 1) == pytest.approx(2e6)  # trapezoid
    assert tr.bits_between(1, 3) == pytest.approx(6e6)
    # 2e6 bits from t=0 end exactly at t=1; then more at 3 Mbit/s
    assert tr.finish_time(0, 2e6) == pytest.approx(1.0)
    assert tr.finish_time(0, 5e6) == pytest.approx(2.0)
    # inside the ramp: b(t) = 1e6 + 2e6 t, bits = 1e6 t + 1e6 t^2 = 0.75e6 at t = 0.5
    assert tr.finish_time(0, 0.75e6) == pytest.approx(0.5)
    ch = Channel(1.0, 0.0, trace=tr, header_bytes=0)
    assert ch.serialization_time(250_000, t=0.0) == pytest.approx(1.0)  # 2e6 bits
    assert ch.rate_at(0.5) == pytest.approx(2e6)
    assert Channel.from_json(ch.to_json()) == ch


def test_trace_rejects_bad_lines(tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("0 1e6\n1 oops\n")
    with pytest.raises(ValueError):
        BandwidthTrace.load(path)
    with pytest.raises(ValueError):
        BandwidthTrace((0.0, 0.0), (1.0, 1.0))


def test_pacer_sleeps_the_transfer_time() -> None:
    ch = Channel(1e6, 0.02)
    pacer = Pacer(ch)

    async def go() -> float:
        t0 = time.perf_counter()
        await pacer.pace(1000)
        return time.perf_counter() - t0

    slept = asyncio.run(go())
    assert slept >= ch.transfer_time(1000) - 1e-4
    assert math.isclose(pacer.delay(1000), ch.transfer_time(1000))

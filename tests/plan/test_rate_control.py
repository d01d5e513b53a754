"""Rate control on a synthetic trace: steps down on a drop, back up after, keeps the bound."""

from __future__ import annotations

import pytest

from splitcomp.plan.channel import BandwidthTrace, Channel
from splitcomp.plan.rate_control import (
    BandwidthEstimator,
    FixedPolicy,
    RateController,
    Setting,
    setting_front,
    simulate,
    summarize,
)

LADDER = [
    Setting("low", 1_000, 88.0, 2.0),
    Setting("mid", 3_000, 90.0, 2.0),
    Setting("high", 16_000, 91.0, 1.0),
    Setting("dominated", 20_000, 90.5, 1.0),
]
BOUND, RTT = 0.1, 0.02
PHASES = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0))  # 10, 0.5, 10 Mbit/s


def drop_channel() -> Channel:
    e = 1e-3
    trace = BandwidthTrace((0.0, 10.0, 10.0 + e, 20.0, 20.0 + e, 30.0),
                           (10e6, 10e6, 0.5e6, 0.5e6, 10e6, 10e6))
    return Channel(rtt_s=RTT, trace=trace)


def run(policy):
    arrivals = [0.05 * i for i in range(600)]

    def payload(i: int, k: int) -> tuple[int, bool]:
        s = policy.settings[k]
        return int(s.bytes_per_sample), (i % 100) < s.accuracy

    return simulate(policy, drop_channel(), arrivals, payload)


def phase(reqs, lo: float, hi: float, settle: float = 0.0):
    return [r for r in reqs if lo + settle <= r.t < hi]


def test_setting_front_drops_dominated() -> None:
    assert [s.name for s in setting_front(LADDER)] == ["low", "mid", "high"]


def test_estimator_follows_observations() -> None:
    est = BandwidthEstimator(10e6, RTT)
    for _ in range(10):
        est.observe(10_000, RTT + 80_000 / 1e6)  # 1 Mbit/s
    assert est.bps == pytest.approx(1e6, rel=0.01)
    est.cap(10_000, RTT + 0.4)  # still unacked after 0.4 s: at most 0.2 Mbit/s
    assert est.bps <= 0.2e6 + 1


def test_controller_switches_down_on_drop_and_back_up() -> None:
    ctl = RateController(LADDER, BOUND, RTT, initial_bps=10e6, start=2)
    reqs = run(ctl)
    names = [s.name for s in ctl.settings]
    before, during, after = (phase(reqs, lo, hi, settle=2.0) for lo, hi in PHASES)
    assert {r.name for r in before} == {"high"}
    assert {r.name for r in during} <= {"low", "mid"} and any(r.name == "mid" for r in during)
    assert {r.name for r in after} == {"high"}
    # misses only while the backlog sent before the drop was noticed drains (< 1 s)
    assert all(10.0 <= r.t < 11.0 for r in reqs if r.latency_s > BOUND)
    assert 0 < ctl.switches <= 12
    assert names[ctl.current] == "high"


def test_fixed_settings_miss_the_bound_or_lose_accuracy() -> None:
    ctl = summarize(run(RateController(LADDER, BOUND, RTT, initial_bps=10e6, start=2)), BOUND)
    high = summarize(run(FixedPolicy(setting_front(LADDER), 2)), BOUND)
    low = summarize(run(FixedPolicy(setting_front(LADDER), 0)), BOUND)
    assert high["missed"] > 100 > ctl["missed"]  # 0.5 Mbit/s cannot carry 16 kB every 50 ms
    assert low["missed"] == 0 and low["accuracy"] < ctl["accuracy"] < high["accuracy"] + 1e-9


def test_hysteresis_limits_switching_on_a_noisy_link() -> None:
    times = tuple(0.5 * i for i in range(61))
    bps = tuple(2.2e6 if i % 2 else 1.6e6 for i in range(61))  # around the mid/high threshold
    ctl = RateController(LADDER, BOUND, RTT, initial_bps=2e6, min_dwell=20)
    arrivals = [0.05 * i for i in range(600)]
    simulate(ctl, Channel(rtt_s=RTT, trace=BandwidthTrace(times, bps)), arrivals,
             lambda i, k: (int(ctl.settings[k].bytes_per_sample), True))
    assert ctl.switches <= 600 // 20

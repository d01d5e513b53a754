"""The demo's jobs (:mod:`splitcomp.bench.demo`); the command itself: tests/cli/test_demo.py."""

from __future__ import annotations

from splitcomp.bench import demo


def test_rate_accuracy_flag_kept() -> None:
    assert callable(demo.plan_jobs) and isinstance(demo.plan_jobs(True), list)

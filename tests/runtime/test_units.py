"""Pure pieces of the runtime: dynamic batcher, dedup cache, tokens, Prometheus text."""

from __future__ import annotations

import asyncio

import pytest

from splitcomp.runtime.auth import Tokens, bearer_token, parse_tokens
from splitcomp.runtime.batching import Batcher
from splitcomp.runtime.dedup import DedupCache, InFlight
from splitcomp.runtime.stats import (
    Counter,
    Gauge,
    Histogram,
    Registry,
    ServerMetrics,
    parse_prometheus,
    total,
)

pytestmark = pytest.mark.timeout(30)


# -- batching -------------------------------------------------------------------------
def _run_batcher(max_batch: int, max_wait_s: float, script) -> list[list[int]]:
    batches: list[list[int]] = []

    async def process(batch: list[int]) -> None:
        batches.append(batch)
        await asyncio.sleep(0.02)  # one batch at a time: items queue meanwhile

    async def main() -> None:
        b = Batcher(process, max_batch, max_wait_s)
        b.start()
        await script(b)
        assert await b.drain(5.0)
        assert await b.stop() == []

    asyncio.run(main())
    return batches


def test_batcher_closes_full_batches_at_once_and_partial_ones_after_max_wait() -> None:
    async def script(b: Batcher) -> None:
        for i in range(10):
            b.submit(i)

    assert _run_batcher(4, 0.1, script) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batcher_waits_at_most_max_wait_for_a_lone_item() -> None:
    async def script(b: Batcher) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        b.submit(1)
        await b.drain(5.0)
        assert 0.04 <= loop.time() - t0 < 1.0
        b.submit(2)
        await asyncio.sleep(0.01)
        b.submit(3)  # within the wait of 2: same batch

    assert _run_batcher(8, 0.05, script) == [[1], [2, 3]]


def test_batcher_survives_a_failing_processor() -> None:
    seen = []

    async def process(batch: list[int]) -> None:
        seen.append(batch)
        if batch == [1]:
            raise RuntimeError("boom")

    async def main() -> None:
        b = Batcher(process, 1, 0.0)
        b.start()
        b.submit(1)
        b.submit(2)
        assert await b.drain(5.0)
        await b.stop()

    asyncio.run(main())
    assert seen == [[1], [2]]


def test_batcher_rejects_bad_settings() -> None:
    async def noop(batch: list) -> None:
        return None

    with pytest.raises(ValueError):
        Batcher(noop, 0)
    with pytest.raises(ValueError):
        Batcher(noop, 1, -1.0)


# -- dedup ----------------------------------------------------------------------------
def test_dedup_keeps_successes_and_forgets_errors() -> None:
    now = [0.0]
    cache = DedupCache(max_entries=2, max_bytes=100, ttl_s=10.0, clock=lambda: now[0])
    assert cache.lookup("a") is None
    entry = cache.begin("a", "conn1")
    assert cache.lookup("a") is entry and isinstance(entry, InFlight)
    entry.waiters.append("conn2")
    assert cache.finish("a", b"result").waiters == ["conn1", "conn2"]
    assert cache.lookup("a") == b"result"
    cache.begin("b", "c")
    cache.finish("b", None)  # an error: not kept
    assert cache.lookup("b") is None
    for k in "cd":
        cache.begin(k, "c")
        cache.finish(k, b"x" * 10)
    assert cache.lookup("a") is None and len(cache) == 2  # max_entries evicts the oldest
    now[0] = 11.0
    assert cache.lookup("c") is None  # ttl
    cache.begin("e", "c")
    cache.finish("e", b"y" * 95)  # max_bytes evicts older entries
    assert cache.lookup("d") is None and cache.lookup("e") == b"y" * 95
    assert cache.bytes == 95


# -- auth -----------------------------------------------------------------------------
TOKEN_A = "a" * 32
TOKEN_B = "0123456789abcdef0123"


def test_tokens_file_parsing_and_authentication(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# edge devices\nalice {TOKEN_A}\n\n  bob   {TOKEN_B}  \n")
    tokens = Tokens.load(path)
    assert tokens.client_ids() == ["alice", "bob"]
    assert tokens.authenticate(f"Bearer {TOKEN_A}") == "alice"
    assert tokens.authenticate(f"bearer {TOKEN_B}") == "bob"
    for bad in (None, "", TOKEN_A, f"Basic {TOKEN_A}", f"Bearer {TOKEN_A}x", "Bearer "):
        assert tokens.authenticate(bad) is None


@pytest.mark.parametrize("text", [
    f"alice {TOKEN_A} extra", f"alice {TOKEN_A}\nalice {TOKEN_B}", "alice short",
    f"alice {TOKEN_A}\nbob {TOKEN_A}", "justone",
])
def test_tokens_file_refuses_malformed_entries(text: str) -> None:
    with pytest.raises(ValueError):
        Tokens(parse_tokens(text))


def test_bearer_token() -> None:
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None


# -- stats ----------------------------------------------------------------------------
def test_prometheus_text_round_trip() -> None:
    r = Registry()
    c = r.add(Counter("x_total", "A counter.", ("dep", "code")))
    c.inc(("a", "OK"), 3)
    c.inc(("b\"\n\\", "E"))
    g = r.add(Gauge("y", "A gauge.", fn=lambda: 2.5))
    h = r.add(Histogram("z", "A histogram.", ("dep",), buckets=(1, 4)))
    for v in (1, 2, 3, 9):
        h.observe(v, ("a",))
    text = r.render()
    assert "# TYPE x_total counter" in text and "# TYPE z histogram" in text
    s = parse_prometheus(text)
    assert s[("x_total", (("code", "OK"), ("dep", "a")))] == 3
    assert s[("x_total", (("code", "E"), ("dep", "b\"\n\\")))] == 1
    assert s[("y", ())] == 2.5 and g.fn is not None
    assert s[("z_bucket", (("dep", "a"), ("le", "1")))] == 1
    assert s[("z_bucket", (("dep", "a"), ("le", "4")))] == 3
    assert s[("z_bucket", (("dep", "a"), ("le", "+Inf")))] == 4
    assert s[("z_sum", (("dep", "a"),))] == 15 and s[("z_count", (("dep", "a"),))] == 4
    assert total(s, "x_total") == 4 and total(s, "x_total", dep="a") == 3


def test_server_metrics_render_parses() -> None:
    m = ServerMetrics(inflight=lambda: 3, connections=lambda: 1)
    m.error("r20", "BAD_FRAME")
    s = parse_prometheus(m.render())
    assert total(s, "splitcomp_errors_total", code="BAD_FRAME") == 1
    assert total(s, "splitcomp_inflight") == 3 and total(s, "process_cpu_seconds_total") > 0


def test_parse_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_prometheus("not a metric line at all {")

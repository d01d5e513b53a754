"""Pure pieces of the runtime: dynamic batcher, dedup cache, tokens, Prometheus text."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from splitcomp.runtime import dedup
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


def test_batcher_keeps_no_item_it_processed_under_sustained_load() -> None:
    """Closed-loop flows that always keep a full batch queued (the server at 64 clients,
    batches of 32): the batcher holds on to nothing of the items it processed (it once kept
    every item ever queued, and with it each request's frame)."""
    kept: list[weakref.ref] = []

    class Item:
        pass

    async def main() -> Batcher:
        async def process(batch: list[Item]) -> None:
            kept.extend(weakref.ref(x) for x in batch)
            for _ in batch:  # each flow sends its next item as its answer arrives
                b.submit(Item(), len(kept) % 8, 1)
            await asyncio.sleep(0)

        b = Batcher(process, 4, 0.001, grace_s=0.0)
        b.start()
        for i in range(8):
            b.submit(Item(), i, 1)
        while len(kept) < 400:
            await asyncio.sleep(0.001)
        queued = len(b)
        gc.collect()
        alive = sum(r() is not None for r in kept[:-8])  # the batch in process aside
        await b.stop()
        assert queued <= 8 and alive == 0
        return b

    assert len(asyncio.run(main())._arrivals) == 0


def test_batcher_rejects_bad_settings() -> None:
    async def noop(batch: list) -> None:
        return None

    with pytest.raises(ValueError):
        Batcher(noop, 0)
    with pytest.raises(ValueError):
        Batcher(noop, 1, -1.0)


# -- fair batching ---------------------------------------------------------------------
def _run_fair(script, max_batch: int = 4, max_wait_s: float = 0.0, grace_s: float = 0.0,
              max_batch_cost: float = float("inf"), work_s: float = 0.01) -> list[list]:
    """Run ``script(batcher, batches)``; returns the batches, each a list of items."""
    batches: list[list] = []

    async def process(batch: list) -> None:
        batches.append(batch)
        await asyncio.sleep(work_s)

    async def main() -> None:
        b = Batcher(process, max_batch, max_wait_s, max_batch_cost=max_batch_cost,
                    grace_s=grace_s)
        b.start()
        await script(b, batches)
        assert await b.drain(10.0)
        assert await b.stop() == []

    asyncio.run(main())
    return batches


def test_fair_batcher_interleaves_flows_by_bytes() -> None:
    """A flow with 12 items queued first does not hold up a flow that queues later: batches
    alternate, and a flow of items 3x larger gets a third of the items."""
    async def script(b: Batcher, batches: list) -> None:
        for i in range(12):
            b.submit(("heavy", i), "heavy", 300)
        for i in range(6):
            b.submit(("light", i), "light", 100)

    batches = _run_fair(script)
    first = batches[0] + batches[1]
    assert sum(1 for f, _ in first if f == "light") >= 5  # not behind the heavy backlog
    order = [item for batch in batches for item in batch]
    assert [i for f, i in order if f == "heavy"] == list(range(12))  # FIFO within a flow
    assert [i for f, i in order if f == "light"] == list(range(6))


def test_fair_batcher_single_flow_is_fifo_with_full_batches() -> None:
    async def script(b: Batcher, batches: list) -> None:
        for i in range(10):
            b.submit(i, "only", 1000)

    assert _run_fair(script, grace_s=0.05) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_fair_batcher_keeps_a_closed_loop_flows_turn() -> None:
    """Light flows send one item at a time and the next after their batch: within the grace
    the heavy backlog waits for them instead of filling the batches (without a grace it
    would take the gaps)."""
    def scenario(grace_s: float) -> list[list]:
        async def script(b: Batcher, batches: list) -> None:
            for i in range(40):
                b.submit(("heavy", i), "heavy", 1000)
            for k in range(5):
                for c in range(3):
                    b.submit((f"light{c}", k), f"light{c}", 100)
                seen = len(batches)
                while not any(f"light{0}" == f and i == k for batch in batches[seen - 1:]
                              for f, i in batch):
                    await asyncio.sleep(0.001)

        return _run_fair(script, max_batch=8, max_wait_s=0.002, grace_s=grace_s, work_s=0.005)

    def heavy_before_last_light(batches: list[list]) -> int:
        order = [item for batch in batches for item in batch]
        last = max(i for i, (f, k) in enumerate(order) if f == "light0" and k == 4)
        return sum(1 for f, _ in order[:last] if f == "heavy")

    assert heavy_before_last_light(scenario(0.5)) <= 1  # its share: 1000 bytes per 10 rounds
    assert heavy_before_last_light(scenario(0.0)) > 10


def test_fair_batcher_does_not_wait_for_a_flow_that_thinks_longer_than_its_grace() -> None:
    """A light flow whose next item comes 50 ms after its answer (past a 10 ms grace) is not
    waited for: the heavy backlog runs in between instead of the worker idling."""
    holds = []

    async def script(b: Batcher, batches: list) -> None:
        for i in range(40):
            b.submit(("heavy", i), "heavy", 1000)
        for k in range(4):
            b.submit(("light", k), "light", 100)
            while not any(f == "light" and i == k for batch in batches for f, i in batch):
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
        holds.append(b.holds)

    batches = _run_fair(script, max_batch=8, max_wait_s=0.002, grace_s=0.01, work_s=0.005)
    order = [item for batch in batches for item in batch]
    last = order.index(("light", 3))
    assert sum(1 for f, _ in order[:last] if f == "heavy") >= 16
    assert holds[0] <= 3  # held back for it in its first round only
    # (the heavy backlog still runs in pieces, one item a batch, while the light flow lingers)


def test_fair_batcher_caps_batch_cost_but_takes_one_item() -> None:
    async def script(b: Batcher, batches: list) -> None:
        for i in range(4):
            b.submit(i, "a", 600)
        b.submit(9, "b", 5000)

    batches = _run_fair(script, max_batch=8, max_batch_cost=1000)
    assert sorted(len(batch) for batch in batches) == [1, 1, 1, 1, 1]
    assert [9] in batches  # larger than the cap alone: still runs


def test_fair_batcher_stop_returns_queued_items() -> None:
    async def process(batch: list) -> None:
        await asyncio.sleep(10)

    async def main() -> list:
        b = Batcher(process, 1, 0.0)
        b.start()
        for i in range(3):
            b.submit(i, i % 2, 10)
        await asyncio.sleep(0.01)
        return await b.stop()

    assert sorted(asyncio.run(main())) in ([1, 2], [0, 2], [0, 1])


# -- dedup ----------------------------------------------------------------------------
def test_dedup_keeps_successes_and_forgets_errors() -> None:
    now = [0.0]
    cache = DedupCache(max_entries=2, max_bytes=100, ttl_s=10.0, clock=lambda: now[0])
    assert cache.lookup("a", b"A") is None
    key, entry = cache.begin("a", b"A", "conn1")
    assert key == "a" and cache.lookup("a", b"A") is entry and isinstance(entry, InFlight)
    entry.waiters.append("conn2")
    assert cache.finish("a", b"result").waiters == ["conn1", "conn2"]
    assert cache.lookup("a", b"A") == b"result"
    cache.begin("b", b"B", "c")
    cache.finish("b", None)  # an error: not kept
    assert cache.lookup("b", b"B") is None
    for k in "cd":
        cache.begin(k, k.encode(), "c")
        cache.finish(k, b"x" * 10)
    assert cache.lookup("a", b"A") is None and len(cache) == 2  # max_entries evicts the oldest
    now[0] = 11.0
    assert cache.lookup("c", b"c") is None  # ttl
    cache.begin("e", b"e", "c")
    cache.finish("e", b"y" * 95)  # max_bytes evicts older entries
    assert cache.lookup("d", b"d") is None and cache.lookup("e", b"e") == b"y" * 95
    assert cache.bytes == 95


@pytest.mark.parametrize("fast", [True, False], ids=["xxh3", "sha256"])
def test_dedup_tells_payloads_apart(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same id with other bytes is a new request, in flight or answered (with either
    digest: XXH3-128, or SHA-256 without ``xxhash``)."""
    if fast:
        pytest.importorskip("xxhash")
    else:
        monkeypatch.setattr(dedup, "xxhash", None)
    assert len(dedup.digest(b"payload-1")) == dedup.DIGEST_BYTES
    assert dedup.digest(memoryview(b"payload-1")) == dedup.digest(b"payload-1")
    cache = DedupCache()
    key, first = cache.begin("id1", b"payload-1", "c")
    assert cache.lookup("id1", b"payload-2") is None  # same id, other bytes: new
    key2, second = cache.begin("id1", b"payload-2", "c")  # both in flight
    assert key2 != key and cache.lookup("id1", b"payload-2") is second
    assert cache.lookup("id1", b"payload-1") is first
    first.seal()  # (the worker thread's part)
    cache.finish(key, b"answer-1")
    cache.finish(key2, b"answer-2")
    assert cache.lookup("id1", b"payload-1") == b"answer-1"
    assert cache.lookup("id1", b"payload-2") == b"answer-2"
    assert cache.lookup("id1", b"payload-3") is None
    assert cache.mismatches >= 3


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

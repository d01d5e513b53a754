"""End-to-end: real servers on 127.0.0.1 (ephemeral ports), real clients, no mocks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import urllib.error

import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus

from splitcomp import codecs
from splitcomp.runtime import (
    AsyncSplitClient,
    ConnectionLost,
    Deployment,
    ErrorCode,
    RuntimeTimeout,
    ServerError,
    SplitClient,
    Unauthorized,
    fetch_metrics,
    parse_prometheus,
)
from splitcomp.runtime import protocol as P
from splitcomp.runtime.stats import total

from .conftest import DelayedTail, SlowTail, raw_connect

pytestmark = pytest.mark.timeout(60)
FP32 = codecs.get("fp32")
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


def _inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 32, 32, generator=g) for _ in range(n)]


def test_lossless_results_equal_local_tail_unbatched(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=1, max_wait_ms=0))
    with SplitClient(srv.url, r20.head, "fp32", "r20") as client:
        for x in _inputs(4):
            with torch.inference_mode():
                want = r20.tail(*r20.head(x))
            assert torch.equal(client.infer(x), want)


def test_batching_across_concurrent_clients_is_exact(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=8, max_wait_ms=30))
    xs = _inputs(24, seed=1)

    async def one_client(i: int, client: AsyncSplitClient) -> list:
        return [await client.infer_detailed(x) for x in xs[3 * i: 3 * i + 3]]

    async def main() -> list:
        clients = [AsyncSplitClient(srv.url, r20.head, "fp32", "r20") for _ in range(8)]
        try:
            per_client = await asyncio.gather(*(one_client(i, c) for i, c in enumerate(clients)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        return [r for rs in per_client for r in rs]

    results = asyncio.run(main())
    assert max(r.timing.batch_size for r in results) > 1  # batches did form across clients
    for x, r in zip(xs, results, strict=True):
        assert torch.equal(r.output, r20.reference(r20.features(x), r.timing.batch_size))
    s = parse_prometheus(srv.metrics_text())
    assert total(s, "splitcomp_batch_size_sum") == 24
    assert total(s, "splitcomp_batch_size_count") < 24


def test_wrong_or_missing_token_is_refused_at_the_handshake(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail), tokens=TOKENS)
    x = _inputs(1)[0]
    for token in (None, "not-the-right-token-at-all", TOKENS["alice"] + "x"):
        with SplitClient(srv.url, r20.head, "fp32", "r20", token=token) as client:
            with pytest.raises(Unauthorized):
                client.infer(x)
        with pytest.raises(InvalidStatus) as info:
            raw_connect(srv.url, token=token)
        assert info.value.response.status_code == 401
    with SplitClient(srv.url, r20.head, "fp32", "r20", token=TOKENS["bob"]) as client:
        assert client.infer(x).shape == (1, 10)
    s = parse_prometheus(srv.metrics_text())
    assert total(s, "splitcomp_handshakes_refused_total", reason="unauthorized") == 6
    assert total(s, "splitcomp_requests_total") == 1  # nothing else reached the frame parser


def test_metrics_need_a_token_by_default(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail), tokens=TOKENS)
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch_metrics(srv.url)
    assert info.value.code == 401
    info.value.close()
    assert "splitcomp_requests_total" in fetch_metrics(srv.url, token=TOKENS["bob"])
    public = start_server(Deployment("r20", r20.tail), tokens=TOKENS, metrics_public=True)
    assert "splitcomp_requests_total" in fetch_metrics(public.url)


def test_sync_client_is_shared_by_threads(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=8, max_wait_ms=20))
    xs = _inputs(12, seed=6)
    results: dict[int, object] = {}
    with SplitClient(srv.url, r20.head, "fp32", "r20") as client:
        def work(i: int) -> None:
            for k in range(i, len(xs), 4):
                results[k] = client.infer_detailed(xs[k])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == list(range(12))
    assert max(r.timing.batch_size for r in results.values()) > 1  # one connection, batched
    for k, r in results.items():
        assert torch.equal(r.output, r20.reference(r20.features(xs[k]), r.timing.batch_size))


def test_garbage_frames_get_errors_while_a_valid_client_is_served(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=4, max_wait_ms=5))
    xs = _inputs(30, seed=2)
    answers: list[torch.Tensor] = []

    def valid_client() -> None:
        with SplitClient(srv.url, r20.head, "fp32", "r20", timeout_s=30) as client:
            for x in xs:
                answers.append(client.infer_detailed(x))

    t = threading.Thread(target=valid_client)
    t.start()
    good = FP32.encode(r20.features(xs[0]))
    corrupt = bytearray(good)
    corrupt[100] ^= 0x01
    for _ in range(3):
        # a frame that is not this protocol at all: error with id 0, then closed (1002)
        with raw_connect(srv.url) as ws:
            ws.send(b"GET / HTTP/1.1 garbage")
            resp = P.parse_response(ws.recv(timeout=5))
            assert (resp.request_id, resp.code) == (0, ErrorCode.BAD_FRAME)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.protocol.close_rcvd.code == P.CLOSE_PROTOCOL_ERROR
        # errors that carry a request id keep the connection open
        with raw_connect(srv.url) as ws:
            ws.send(P.encode_request(11, "r20", bytes(corrupt)))
            ws.send(P.encode_request(12, "nope", good))
            ws.send(P.encode_request(13, "r20", b"short"))
            ws.send(b"SP\x01\x07" + (14).to_bytes(8, "little"))
            ws.send(P.encode_request(15, "r20", good))
            got = {}
            for _ in range(5):
                resp = P.parse_response(ws.recv(timeout=10))
                got[resp.request_id] = resp.code
            assert got == {11: ErrorCode.BAD_BITSTREAM, 12: ErrorCode.UNKNOWN_DEPLOYMENT,
                           13: ErrorCode.BAD_BITSTREAM, 14: ErrorCode.BAD_FRAME, 15: None}
        with raw_connect(srv.url) as ws:  # a text frame: closed as unsupported data
            ws.send("hello")
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.protocol.close_rcvd.code == P.CLOSE_UNSUPPORTED_DATA
    t.join(30)
    assert not t.is_alive() and len(answers) == len(xs)
    for x, r in zip(xs, answers, strict=True):
        assert torch.equal(r.output, r20.reference(r20.features(x), r.timing.batch_size))


def test_random_frames_never_break_the_server(r20, start_server) -> None:
    """Random prefixes, names and bitstreams (some mutated from a valid one): every frame with
    a readable id gets exactly one answer, and the server keeps serving."""
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=8, max_wait_ms=1))
    g = torch.Generator().manual_seed(5)
    valid = FP32.encode(r20.features(_inputs(1)[0]))

    def rand_bytes(n: int) -> bytes:
        return bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())

    sent = 0
    with raw_connect(srv.url) as ws:
        for rid in range(1, 121):
            kind = rid % 4
            if kind == 0:  # mutate a valid bitstream
                body = bytearray(valid)
                for pos in torch.randint(0, len(body), (3,), generator=g).tolist():
                    body[pos] ^= 1 + pos % 255
                frame = P.encode_request(rid, "r20", bytes(body))
            elif kind == 1:  # truncated valid bitstream
                frame = P.encode_request(rid, "r20", valid[: rid * 37 % len(valid) + 1])
            elif kind == 2:  # random name and body after a valid prefix
                frame = b"SP\x01\x01" + rid.to_bytes(8, "little") + rand_bytes(rid % 50 + 1)
            else:  # random bitstream
                frame = P.encode_request(rid, "r20", rand_bytes(rid * 7))
            ws.send(frame)
            sent += 1
        answered = {}
        for _ in range(sent):
            resp = P.parse_response(ws.recv(timeout=10))
            answered[resp.request_id] = resp.code
    assert sorted(answered) == list(range(1, 121))
    assert all(code is not None for rid, code in answered.items() if rid % 4 != 0)
    with SplitClient(srv.url, r20.head, "fp32", "r20") as client:
        assert client.infer(_inputs(1)[0]).shape == (1, 10)


def test_a_retried_request_id_is_answered_once(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=4, max_wait_ms=100))
    frame = P.encode_request(7, "r20", FP32.encode(r20.features(_inputs(1)[0])))
    with raw_connect(srv.url, session="device-1") as ws:
        ws.send(frame)
        ws.send(frame)  # while the first is still waiting for its batch
        first, second = ws.recv(timeout=10), ws.recv(timeout=10)
    with raw_connect(srv.url, session="device-1") as ws:  # a reconnection of the same session
        ws.send(frame)
        third = ws.recv(timeout=10)
    with raw_connect(srv.url, session="device-2") as ws:  # another session: its own id space
        ws.send(frame)
        other = ws.recv(timeout=10)
    assert first == second == third and P.parse_response(first).ok
    assert P.parse_response(other).ok
    s = parse_prometheus(srv.metrics_text())
    assert total(s, "splitcomp_batch_size_sum") == 2  # device-1 once, device-2 once
    assert total(s, "splitcomp_results_total") == 2
    assert total(s, "splitcomp_dedup_hits_total") == 2


@pytest.mark.parametrize("grace_s", [5.0, 0.0], ids=["graceful", "abrupt"])
def test_server_restart_mid_run_client_finishes_every_request(r20, start_server,
                                                              grace_s: float) -> None:
    """20 requests in flight, the server stops once 10 are answered, 20 more are sent while
    nobody listens, then a new server starts on the same port. Graceful: queued requests are
    answered before the connections close. Abrupt (no grace): in-flight requests are lost and
    the client re-sends them, with the same ids, to the new server."""
    dep = Deployment("r20", DelayedTail(r20.tail, 0.05), max_batch_size=4, max_wait_ms=2)
    srv = start_server(dep)
    port = srv.port
    xs = _inputs(40, seed=3)
    seen: dict[str, int] = {}

    async def main() -> list:
        client = AsyncSplitClient(srv.url, r20.head, "fp32", "r20", timeout_s=30, retries=20,
                                  backoff_s=0.02, max_backoff_s=0.2)
        done = 0
        stopped = asyncio.Event()

        async def one(i: int):
            nonlocal done
            if i >= 20:
                await stopped.wait()
            r = await client.infer_detailed(xs[i])
            done += 1
            return r

        async def restart() -> None:
            while done < 10:
                await asyncio.sleep(0.002)
            await asyncio.to_thread(srv.stop, grace_s)
            stopped.set()
            await asyncio.sleep(0.2)  # the second wave finds nobody listening and backs off
            seen["done_at_restart"] = done
            await asyncio.to_thread(start_server, dep, port=port)

        try:
            results, _ = await asyncio.gather(asyncio.gather(*(one(i) for i in range(40))),
                                              restart())
        finally:
            await client.close()
        seen["reconnects"] = client.reconnects
        return results

    results = asyncio.run(main())
    assert len(results) == len(xs)
    assert seen["done_at_restart"] <= 20 and seen["reconnects"] >= 1
    if grace_s == 0.0:
        assert any(r.attempts > 1 for r in results[:20])  # lost in flight, re-sent, answered
    else:
        assert seen["done_at_restart"] == 20  # the first wave was drained, not lost
    for x, r in zip(xs, results, strict=True):
        assert torch.equal(r.output, r20.reference(r20.features(x), r.timing.batch_size))


def test_graceful_stop_answers_queued_requests_and_refuses_new_ones(start_server) -> None:
    srv = start_server(Deployment("slow", SlowTail(0.3), max_batch_size=1, max_wait_ms=0))
    data = FP32.encode(torch.ones(1, 4))
    with raw_connect(srv.url) as ws:
        ws.send(P.encode_request(1, "slow", data))
        time.sleep(0.1)  # request 1 is in the tail
        stopper = threading.Thread(target=srv.stop, args=(5.0,))
        stopper.start()
        time.sleep(0.05)
        ws.send(P.encode_request(2, "slow", data))
        got = {}
        for _ in range(2):
            resp = P.parse_response(ws.recv(timeout=5))
            got[resp.request_id] = resp.code
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.protocol.close_rcvd.code == P.CLOSE_GOING_AWAY
        stopper.join(10)
    assert got == {1: None, 2: ErrorCode.UNAVAILABLE}
    with pytest.raises(OSError):
        raw_connect(srv.url, open_timeout=1)


def test_inflight_limit_answers_overloaded(start_server) -> None:
    srv = start_server(Deployment("slow", SlowTail(0.2), max_batch_size=1, max_wait_ms=0),
                       max_inflight_per_client=2)
    data = FP32.encode(torch.ones(1, 4))
    with raw_connect(srv.url) as ws:
        for rid in range(1, 6):
            ws.send(P.encode_request(rid, "slow", data))
        codes = {}
        for _ in range(5):
            resp = P.parse_response(ws.recv(timeout=10))
            codes[resp.request_id] = resp.code
    assert codes == {1: None, 2: None, 3: ErrorCode.OVERLOADED, 4: ErrorCode.OVERLOADED,
                     5: ErrorCode.OVERLOADED}

    async def main() -> None:
        async with AsyncSplitClient(srv.url, None, "fp32", "slow") as client:
            outcomes = await asyncio.gather(*(client.infer(torch.ones(1, 4)) for _ in range(4)),
                                            return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, ServerError)]
        assert len(errors) == 2 and all(e.code is ErrorCode.OVERLOADED for e in errors)
        assert all(torch.equal(o, torch.tensor([[4.0]])) for o in outcomes
                   if not isinstance(o, Exception))

    asyncio.run(main())


def test_requests_queued_past_the_timeout_are_answered_timeout(start_server) -> None:
    srv = start_server(Deployment("slow", SlowTail(0.3), max_batch_size=1, max_wait_ms=0),
                       request_timeout_s=0.1)
    data = FP32.encode(torch.ones(1, 4))
    with raw_connect(srv.url) as ws:
        for rid in (1, 2):  # 2 waits 0.3 s behind 1: past the 0.1 s limit, never run
            ws.send(P.encode_request(rid, "slow", data))
        codes = {}
        for _ in range(2):
            resp = P.parse_response(ws.recv(timeout=10))
            codes[resp.request_id] = resp.code
    assert codes == {1: None, 2: ErrorCode.TIMEOUT}


def test_frame_too_large_closes_that_connection_only(start_server) -> None:
    srv = start_server(Deployment("slow", SlowTail(0.0), max_wait_ms=0), max_frame_bytes=4096)
    small, big = torch.ones(1, 16), torch.ones(1, 2048)
    with SplitClient(srv.url, None, "fp32", "slow") as client:
        assert client.infer(small).item() == 16
        with pytest.raises(ServerError) as info:  # refused before sending: limit from handshake
            client.infer(big)
        assert info.value.code is ErrorCode.TOO_LARGE
        with raw_connect(srv.url) as ws:
            ws.send(P.encode_request(1, "slow", FP32.encode(big)))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.protocol.close_sent.code == P.CLOSE_TOO_BIG
        assert client.infer(small).item() == 16


def test_client_timeout_raises_runtime_timeout(start_server) -> None:
    srv = start_server(Deployment("slow", SlowTail(1.0), max_wait_ms=0))
    with SplitClient(srv.url, None, "fp32", "slow", timeout_s=0.3) as client:
        t0 = time.monotonic()
        with pytest.raises(RuntimeTimeout, match="no answer within 0.3 s"):
            client.infer(torch.ones(1, 4))
        assert time.monotonic() - t0 < 0.95  # the tail takes 1 s: no waiting for it


def test_unreachable_server_times_out_or_fails_clearly() -> None:
    with SplitClient("ws://127.0.0.1:9", None, "fp32", "x", timeout_s=0.5) as client:
        with pytest.raises((RuntimeTimeout, ConnectionLost)):
            client.infer(torch.ones(1, 4))


def test_codec_restriction_and_several_deployments(r20, start_server) -> None:
    from splitcomp.partition import split

    head3, tail3 = split(r20.model, "layer3", (torch.zeros(1, 3, 32, 32),))
    srv = start_server([Deployment("r20-l2", r20.tail, codecs=["fp32"]),
                        Deployment("r20-l3", tail3, allowed_clients=["alice"])], tokens=TOKENS)
    x = _inputs(1)[0]
    with torch.inference_mode():
        want = r20.model(x)
    alice = dict(token=TOKENS["alice"], timeout_s=10)
    with SplitClient(srv.url, r20.head, "fp32", "r20-l2", **alice) as c2, \
            SplitClient(srv.url, head3, "fp32", "r20-l3", **alice) as c3:
        torch.testing.assert_close(c2.infer(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c3.infer(x), want, rtol=1e-4, atol=1e-5)
    with SplitClient(srv.url, r20.head, "fp16", "r20-l2", **alice) as client:
        with pytest.raises(ServerError) as info:
            client.infer(x)
        assert info.value.code is ErrorCode.CODEC_NOT_ALLOWED
    with SplitClient(srv.url, head3, "fp32", "r20-l3", token=TOKENS["bob"]) as client:
        with pytest.raises(ServerError) as info:
            client.infer(x)
        assert info.value.code is ErrorCode.UNAUTHORIZED
    with SplitClient(srv.url, r20.head, "fp32", "r20-l3", **alice) as client:  # wrong features
        with pytest.raises(ServerError) as info:
            client.infer(x)
        assert info.value.code is ErrorCode.BAD_INPUT


def test_metrics_endpoint_counts_match(r20, start_server) -> None:
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=4, max_wait_ms=5),
                       tokens=TOKENS)
    xs = _inputs(6, seed=4)
    with SplitClient(srv.url, r20.head, "fp32", "r20", token=TOKENS["alice"]) as client:
        results = [client.infer_detailed(x) for x in xs]
        bad = P.encode_request(999, "r20", b"not a bitstream")
        with raw_connect(srv.url, token=TOKENS["bob"]) as ws:
            ws.send(bad)
            assert P.parse_response(ws.recv(timeout=5)).code is ErrorCode.BAD_BITSTREAM
            ws.send(P.encode_request(1000, "zzz", b"x"))
            assert P.parse_response(ws.recv(timeout=5)).code is ErrorCode.UNKNOWN_DEPLOYMENT
    text = fetch_metrics(srv.url, token=TOKENS["bob"])
    s = parse_prometheus(text)
    assert total(s, "splitcomp_requests_total") == 8
    assert total(s, "splitcomp_requests_total", deployment="r20") == 7
    assert total(s, "splitcomp_results_total", deployment="r20") == 6
    assert total(s, "splitcomp_errors_total", code="BAD_BITSTREAM") == 1
    assert total(s, "splitcomp_errors_total", code="UNKNOWN_DEPLOYMENT") == 1
    assert total(s, "splitcomp_batch_size_sum") == 6
    assert total(s, "splitcomp_batch_requests_sum") == 7  # the bad bitstream was batched too
    assert total(s, "splitcomp_bytes_in_total", deployment="r20") == sum(
        r.bytes_sent for r in results) + len(bad)
    assert total(s, "splitcomp_bytes_out_total", deployment="r20") >= sum(
        r.bytes_received for r in results)
    assert total(s, "splitcomp_tail_seconds_total") > 0
    assert total(s, "splitcomp_decode_seconds_total") > 0
    assert total(s, "splitcomp_connections_total") == 2
    assert total(s, "splitcomp_request_seconds_count") == 6
    assert "# TYPE splitcomp_batch_size histogram" in text


def _self_signed(tmp_path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


def test_tls_round_trip(r20, start_server, tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=1), tls=(cert, key),
                       tokens=TOKENS)
    assert srv.url.startswith("wss://")
    x = _inputs(1)[0]
    with torch.inference_mode():
        want = r20.tail(*r20.head(x))
    with SplitClient(srv.url, r20.head, "fp32", "r20", token=TOKENS["alice"], ca=cert) as c:
        assert torch.equal(c.infer(x), want)
    with SplitClient(srv.url, r20.head, "fp32", "r20", token=TOKENS["alice"],
                     timeout_s=5) as c:  # the self-signed cert is not trusted by default
        with pytest.raises(OSError):
            c.infer(x)
    s = parse_prometheus(fetch_metrics(srv.url, token=TOKENS["bob"], ca=cert))
    assert total(s, "splitcomp_results_total") == 1

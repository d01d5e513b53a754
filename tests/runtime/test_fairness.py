"""Fair shares and bounded memory on a real server (127.0.0.1, ephemeral ports): a heavy
client does not starve a light one, per-client limits answer OVERLOADED, a client that never
reads its answers is paused (then closed) with the server's queued output bounded, and a
request id reused with another payload gets its own answer."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import pytest
import torch
from torch import nn
from websockets.frames import Frame, Opcode

from splitcomp import codecs
from splitcomp.runtime import Deployment, ErrorCode
from splitcomp.runtime import protocol as P
from splitcomp.runtime.stats import parse_prometheus, total

from .conftest import raw_connect

pytestmark = pytest.mark.timeout(120)
FP32 = codecs.get("fp32")
TOKENS = {"heavy": "heavy-token-0123456789", "good": "good-token-0123456789ab"}
HEAVY, GOOD = 1.0, 2.0  #: what the samples of each client carry (the tail logs it)


class Recorder(nn.Module):
    """Logs the marker of every sample it runs (in order) and takes 1 ms per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.001 * x.shape[0])
        self.log.extend(x[:, 0].tolist())
        return x.sum(1, keepdim=True)


def _request(rid: int, name: str, samples: int, value: float, width: int = 256) -> bytes:
    return P.encode_request(rid, name, FP32.encode(torch.full((samples, width), value)))


def _metric(srv, name: str, **labels: str) -> float:
    return total(parse_prometheus(srv.metrics_text()), name, **labels)


def test_a_heavy_client_does_not_starve_a_good_one(start_server) -> None:
    """One token keeps 48 requests of 16 samples in flight; another sends 12 one-sample
    requests one after the other. Fair shares by bytes: while the good client is served,
    the heavy one gets about its bytes' worth (12 KiB of 1 KiB requests: under one 16 KiB
    request per good one), not the 48-deep backlog a FIFO would run first."""
    tail = Recorder()
    srv = start_server(Deployment("rec", tail, max_batch_size=4, max_wait_ms=1),
                       tokens=TOKENS, fair_grace_ms=500)
    stop = threading.Event()
    heavy_answers: list[ErrorCode | None] = []

    def heavy() -> None:
        rid = 0
        with raw_connect(srv.url, token=TOKENS["heavy"]) as ws:
            for _ in range(48):
                rid += 1
                ws.send(_request(rid, "rec", 16, HEAVY))
            while not stop.is_set():
                heavy_answers.append(P.parse_response(ws.recv(timeout=30)).code)
                rid += 1
                ws.send(_request(rid, "rec", 16, HEAVY))

    t = threading.Thread(target=heavy)
    t.start()
    try:
        while not heavy_answers:  # the heavy backlog is queued
            time.sleep(0.01)
        good_codes = []
        with raw_connect(srv.url, token=TOKENS["good"]) as ws:
            for rid in range(1, 13):
                ws.send(_request(rid, "rec", 1, GOOD))
                good_codes.append(P.parse_response(ws.recv(timeout=30)).code)
    finally:
        stop.set()
        t.join(60)
    assert good_codes == [None] * 12
    log = list(tail.log)
    first, last = log.index(GOOD), len(log) - 1 - log[::-1].index(GOOD)
    heavy_between = sum(1 for v in log[first:last] if v == HEAVY) / 16
    assert heavy_between <= 12, heavy_between  # FIFO: 47 (the whole backlog) per good one
    assert None in heavy_answers  # the heavy client is served too, only not first


def test_limits_on_requests_and_bytes_in_flight_answer_overloaded(start_server) -> None:
    tail = Recorder()
    srv = start_server(Deployment("rec", tail, max_batch_size=1, max_wait_ms=0),
                       max_inflight_per_client=100, max_inflight_bytes_per_client=5000)
    with raw_connect(srv.url) as ws:
        big = _request(1, "rec", 8, HEAVY)  # 8 KiB: over the byte limit, alone: admitted
        ws.send(big)
        for rid in range(2, 5):
            ws.send(_request(rid, "rec", 1, GOOD))  # 1 KiB each: over the limit behind `big`
        codes = {}
        for _ in range(4):
            resp = P.parse_response(ws.recv(timeout=10))
            codes[resp.request_id] = (resp.code, resp.message)
    assert codes[1][0] is None
    for rid in (2, 3, 4):
        code, message = codes[rid]
        assert code is ErrorCode.OVERLOADED and "bytes in flight" in message
    assert _metric(srv, "splitcomp_inflight_bytes") == 0


class _NonReader:
    """A WebSocket client on a raw socket that sends request frames and never reads."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)  # the 101 response, byte by byte: nothing more is read
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock.settimeout(0.5)

    def send(self, frame: bytes) -> bool:
        """Send one frame; False once the server stopped reading (the socket is full)."""
        try:
            self.sock.sendall(Frame(Opcode.BINARY, frame).serialize(mask=True, extensions=[]))
        except (TimeoutError, OSError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def _flood(srv, client: _NonReader, n: int, samples: int) -> tuple[int, float]:
    """Send up to ``n`` requests (answers 8x their size); the most output the server held."""
    most = 0.0
    sent = 0
    for rid in range(1, n + 1):
        if not client.send(_request(rid, "wide", samples, 1.0, width=512)):
            break
        sent += 1
        if rid % 64 == 0:
            most = max(most, _metric(srv, "splitcomp_output_bytes"))
    for _ in range(20):  # in-flight answers land
        most = max(most, _metric(srv, "splitcomp_output_bytes"))
        time.sleep(0.05)
    return sent, most


def _wide() -> Deployment:
    class Wide(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat(1, 8)  # 2 KiB per sample in, 16 KiB out

    return Deployment("wide", Wide(), max_batch_size=8, max_wait_ms=0)


def test_a_client_that_never_reads_is_paused_with_output_bounded(start_server) -> None:
    pause, inflight = 256 << 10, 16
    srv = start_server(_wide(), output_pause_bytes=pause, max_output_bytes=16 << 20,
                       max_inflight_per_client=inflight, ping_interval=None)
    client = _NonReader(srv.url)
    try:
        sent, most = _flood(srv, client, 20000, 1)  # 40 MB: more than socket buffers hold
        assert sent < 20000  # the server stopped reading: the client's socket filled up
        assert _metric(srv, "splitcomp_reads_paused_total") >= 1
        assert _metric(srv, "splitcomp_output_overflows_total") == 0
        answer = 16 * 1024 + 100
        assert most <= pause + (inflight + 1) * answer  # the bound docs/protocol.md states
        with raw_connect(srv.url) as ws:  # everyone else is still served
            ws.send(_request(1, "wide", 1, 3.0, width=512))
            assert P.parse_response(ws.recv(timeout=10)).ok
    finally:
        client.close()


def test_a_client_that_never_reads_is_closed_past_the_output_bound(start_server) -> None:
    srv = start_server(_wide(), output_pause_bytes=64 << 10, max_output_bytes=256 << 10,
                       max_inflight_per_client=256, ping_interval=None)
    client = _NonReader(srv.url)
    try:
        _flood(srv, client, 3000, 4)  # 4 samples: 64 KiB answers
        deadline = time.monotonic() + 20
        while (_metric(srv, "splitcomp_output_overflows_total") < 1
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert _metric(srv, "splitcomp_output_overflows_total") == 1
        assert _metric(srv, "splitcomp_output_bytes") == 0  # its answers were dropped
    finally:
        client.close()


def test_a_reused_request_id_with_another_payload_gets_its_own_answer(start_server) -> None:
    """A client restarted with ids from 1 (same session) must not get the previous run's
    answers; a true retry (same bytes) still gets the remembered one, the tail running once."""
    tail = Recorder()
    srv = start_server(Deployment("rec", tail, max_batch_size=4, max_wait_ms=50))

    def answer(ws, rid: int, value: float) -> float:
        ws.send(_request(rid, "rec", 1, value, width=4))
        resp = P.parse_response(ws.recv(timeout=10))
        assert resp.request_id == rid and resp.ok
        return FP32.decode(resp.bitstream)[0].item()

    with raw_connect(srv.url, session="device-1") as ws:
        assert answer(ws, 1, 1.0) == 4.0
    with raw_connect(srv.url, session="device-1") as ws:  # restarted: id 1 again, new input
        assert answer(ws, 1, 5.0) == 20.0
        assert answer(ws, 1, 5.0) == 20.0  # a retry of it: remembered
        ws.send(_request(2, "rec", 1, 7.0, width=4))  # id 2 twice at once, other inputs
        ws.send(_request(2, "rec", 1, 8.0, width=4))
        got = sorted(FP32.decode(P.parse_response(ws.recv(timeout=10)).bitstream)[0].item()
                     for _ in range(2))
        assert got == [28.0, 32.0]
    assert sorted(tail.log) == [1.0, 5.0, 7.0, 8.0]  # each input ran once
    assert _metric(srv, "splitcomp_dedup_hits_total") == 1


def test_healthz_is_open_and_metrics_need_the_token(start_server) -> None:
    import urllib.error
    import urllib.request

    from splitcomp.runtime import fetch_metrics

    srv = start_server(_wide(), tokens=TOKENS)
    with urllib.request.urlopen(srv.url.replace("ws://", "http://") + "/healthz") as r:
        assert r.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch_metrics(srv.url)
    assert info.value.code == 401
    info.value.close()
    assert "splitcomp_output_bytes" in fetch_metrics(srv.url, token=TOKENS["good"])

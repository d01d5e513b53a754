"""Every server transport (``websockets``, ``picows``, ``asyncio``) on a real server
(127.0.0.1): the same answers to an unchanged ``websockets`` client, fragmented messages,
pings both ways, close codes, hostile bytes closing only their own connection, and the
server's choice of transport. (The whole runtime suite runs on one transport with
``SPLITCOMP_TRANSPORT=NAME``.)"""

from __future__ import annotations

import base64
import logging
import os
import random
import socket
import time

import pytest
import torch
from torch import nn
from websockets.exceptions import ConnectionClosed

from splitcomp import codecs
from splitcomp.runtime import Deployment, Server
from splitcomp.runtime import protocol as P
from splitcomp.runtime.transport import DEFAULT, TRANSPORTS, transport_class

from .conftest import raw_connect

pytestmark = pytest.mark.timeout(120)
FP32 = codecs.get("fp32")


def _available(name: str) -> str:
    try:
        transport_class(name)
    except ImportError as e:
        pytest.skip(f"transport {name} needs a library: {e}")
    return name


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    return _available(request.param)


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _dep(**kw) -> Deployment:
    return Deployment("d", Double(), max_wait_ms=0, **kw)


def _ask(ws, rid: int, x: torch.Tensor) -> torch.Tensor:
    ws.send(P.encode_request(rid, "d", FP32.encode(x)))
    resp = P.parse_response(ws.recv(timeout=10))
    assert resp.request_id == rid and resp.ok, resp
    return FP32.decode(resp.bitstream)[0]


class _Raw:
    """A client on a plain socket: a valid upgrade, then whatever bytes a test sends."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("ws://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                           f"Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.head = b""
        while b"\r\n\r\n" not in self.head:
            self.head += self.sock.recv(1)

    def read_all(self, timeout_s: float) -> bytes:
        """Everything the server sends until it closes the socket (or ``timeout_s``)."""
        self.sock.settimeout(timeout_s)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def test_every_transport_gives_the_same_answers(start_server) -> None:
    xs = [torch.randn(2, 300, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    got = {}
    for name in TRANSPORTS:
        srv = start_server(_dep(), transport=_available(name))
        with raw_connect(srv.url) as ws:
            assert ws.response.headers[P.HEADER_PROTOCOL] == str(P.VERSION)
            assert int(ws.response.headers[P.HEADER_MAX_FRAME]) == 16 << 20
            got[name] = [_ask(ws, i + 1, x) for i, x in enumerate(xs)]
    for outs in got.values():
        for x, y in zip(xs, outs, strict=True):
            assert torch.equal(y, x * 2)


def test_fragments_pings_and_close_codes(start_server, transport: str) -> None:
    srv = start_server(_dep(), transport=transport, max_frame_bytes=4096)
    x = torch.arange(8.0).reshape(1, 8)
    frame = P.encode_request(7, "d", FP32.encode(x))
    with raw_connect(srv.url) as ws:
        ws.send([frame[:5], frame[5:9], frame[9:]])  # one message in three fragments
        resp = P.parse_response(ws.recv(timeout=10))
        assert resp.request_id == 7 and torch.equal(FP32.decode(resp.bitstream)[0], x * 2)
        assert ws.ping(b"hi").wait(5)  # the server answers pings
        assert torch.equal(_ask(ws, 8, x), x * 2)
    with raw_connect(srv.url) as ws:  # fragments summing over the limit: 1009
        with pytest.raises(ConnectionClosed):
            ws.send([bytes(3000), bytes(3000)])  # the server may close while it is sent
            ws.recv(timeout=5)
        assert ws.protocol.close_rcvd.code == P.CLOSE_TOO_BIG
    with raw_connect(srv.url) as ws:  # text: 1003
        ws.send("text")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.protocol.close_rcvd.code == P.CLOSE_UNSUPPORTED_DATA
    with raw_connect(srv.url) as ws:  # the client closes: the server answers with its code
        ws.close(4001, "done")
        assert ws.protocol.close_rcvd.code == 4001


def test_a_peer_that_ignores_pings_is_closed_1011(start_server, transport: str) -> None:
    srv = start_server(_dep(), transport=transport, ping_interval=0.3)
    raw = _Raw(srv.url)
    t0 = time.monotonic()
    data = raw.read_all(10.0)
    assert time.monotonic() - t0 < 9.0  # closed, not left open (the interval is 0.3 s)
    frames, at = [], 0  # the server's frames: unmasked, control frames' payloads < 126 bytes
    while at + 2 <= len(data):
        n = data[at + 1] & 0x7F
        frames.append((data[at], data[at + 2:at + 2 + n]))
        at += 2 + n
    assert frames[0][0] == 0x89, data  # a ping first
    close = [payload for op, payload in frames if op == 0x88]  # then a close: ping timeout
    assert close and int.from_bytes(close[0][:2], "big") == 1011


@pytest.mark.parametrize("seed", range(6))
def test_hostile_bytes_close_only_their_connection(start_server, transport: str, seed: int,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    srv = start_server(_dep(), transport=transport, max_frame_bytes=1 << 16)
    rng = random.Random(seed)
    with raw_connect(srv.url) as good:
        assert torch.equal(_ask(good, 1, torch.ones(1, 4)), torch.full((1, 4), 2.0))
        for k in range(6):
            raw = _Raw(srv.url)
            if k % 3 == 0:  # random bytes after the upgrade
                raw.sock.sendall(rng.randbytes(rng.randrange(1, 3000)))
            elif k % 3 == 1:  # a frame header announcing a huge payload, then garbage
                raw.sock.sendall(bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big")
                                 + rng.randbytes(100))
            else:  # valid frame headers with random opcodes, flags and lengths
                for _ in range(5):
                    n = rng.randrange(0, 200)
                    raw.sock.sendall(bytes([rng.randrange(256), 0x80 | min(n, 125)])
                                     + rng.randbytes(4 + min(n, 125)))
            raw.read_all(3.0)  # the server closes it (or waits for more: either is fine)
            raw.sock.close()
            assert torch.equal(_ask(good, k + 2, torch.ones(1, 4)), torch.full((1, 4), 2.0))
        for head in (b"\r\n\r\n", rng.randbytes(500) + b"\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n",
                     b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"):  # broken upgrades
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(head)
                s.settimeout(5)
                try:
                    answer = s.recv(100)
                except (TimeoutError, ConnectionResetError):
                    answer = b""
                assert not answer.startswith(b"HTTP/1.1 101"), answer
        assert torch.equal(_ask(good, 99, torch.ones(1, 4)), torch.full((1, 4), 2.0))
    crashes = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and (
        r.name.startswith("splitcomp") or r.name == "asyncio"
        and ("protocol" in r.getMessage() or "callback" in r.getMessage()))]
    assert not crashes, crashes[0]  # typed closes, no exception in a callback


def test_the_transport_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import splitcomp.runtime.server as server

    # the fastest installed: picows with splitcomp[fast], else our own framing
    assert DEFAULT == ("picows" if importlib.util.find_spec("picows") else "asyncio")
    monkeypatch.setattr(server, "DEFAULT_TRANSPORT", DEFAULT)  # as without $SPLITCOMP_TRANSPORT
    assert Server(_dep()).transport_name == DEFAULT
    assert Server(_dep(), transport="websockets").transport_name == "websockets"
    with pytest.raises(ValueError, match="unknown transport 'nope'"):
        Server(_dep(), transport="nope")


@pytest.mark.parametrize("wire", [bytes([0xC2, 0x80, 1, 2, 3, 4]),  # RSV1, no extension
                                  bytes([0x83, 0x80, 1, 2, 3, 4]),  # reserved opcode
                                  bytes([0x82, 0x00])])  # unmasked
def test_frames_breaking_rfc6455_close_1002(start_server, transport: str, wire: bytes) -> None:
    srv = start_server(_dep(), transport=transport)
    raw = _Raw(srv.url)
    raw.sock.sendall(wire)
    data = raw.read_all(5.0)
    assert data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == 1002, data

"""The Service seam: a new kind of server work is one class, served unchanged by the embedded
server (over a real WebSocket on 127.0.0.1) and by the transport-free ``handle_frames``; and
the event loop in a thread that the synchronous clients share."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from splitcomp.runtime import BatchResult, ErrorCode, Server, Service, Work, handle_frames
from splitcomp.runtime import protocol as P
from splitcomp.runtime.errors import RequestError
from splitcomp.runtime.loop_thread import LoopThread
from splitcomp.runtime.service import SERVICE_KINDS, kind_of, register_service

from .conftest import raw_connect

pytestmark = pytest.mark.timeout(60)

ECHO_TYPE = 0x7E  # a frame type no built-in service takes
_HEAD = struct.Struct("<2sBBQB")  # magic, version, type, request id, name length


def echo_request(rid: int, name: str, text: bytes) -> bytes:
    return _HEAD.pack(P.MAGIC, P.VERSION, ECHO_TYPE, rid, len(name)) + name.encode() + text


class Echo(Service):
    """Answers each request with its text upper-cased, in a result frame (a toy service)."""

    frame_type = ECHO_TYPE

    def __init__(self, name: str, max_batch_size: int = 8) -> None:
        self.name, self.max_batch_size, self.max_wait_ms = name, max_batch_size, 20.0
        self.allowed_clients = None
        self.batches: list[int] = []
        self.settled: list[bool] = []
        self.threads: set[str] = set()

    @staticmethod
    def parse(frame: bytes | memoryview) -> Any:
        if len(frame) < _HEAD.size or bytes(frame[:2]) != P.MAGIC:
            raise P.FrameError("not an echo frame", None)
        _, _, _, rid, n = _HEAD.unpack_from(frame)
        name = bytes(frame[_HEAD.size:_HEAD.size + n]).decode()
        return type("EchoRequest", (), {"request_id": rid, "name": name,
                                        "text": bytes(frame[_HEAD.size + n:])})()

    @classmethod
    def route(cls, request: Any, services: Sequence[Service]) -> Service | RequestError:
        for s in services:
            if s.name == request.name:
                return s
        return RequestError(ErrorCode.UNKNOWN_DEPLOYMENT, f"no echo {request.name!r}")

    @classmethod
    def dedup_scope(cls, request: Any) -> str:
        return f"echo:{request.name}"

    def admit(self, client_id: str, request: Any, check_queue: Any) -> Any:
        if request.text == b"now":
            return P.encode_result(request.request_id, b"NOW")  # answered on the loop
        if not request.text:
            raise RequestError(ErrorCode.BAD_INPUT, "empty text")
        check_queue()
        return [request.text]  # any payload but bytes (bytes are an answer frame)

    def run(self, batch: Sequence[Work], start: float) -> BatchResult:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(batch))
        return BatchResult([P.encode_result(w.request_id, w.payload[0].upper(), len(batch))
                            for w in batch], [None] * len(batch), [len(batch)])

    def settle(self, work: Work, ok: bool) -> None:
        self.settled.append(ok)


@pytest.fixture
def echo_kind() -> Iterator[type[Echo]]:
    register_service(Echo)
    yield Echo
    del SERVICE_KINDS[ECHO_TYPE]


def test_register_service_refuses_a_taken_frame_type(echo_kind) -> None:
    class Other(Echo):
        pass

    with pytest.raises(ValueError, match="taken"):
        register_service(Other)
    assert register_service(Echo) is Echo  # registering the same class again is harmless
    assert kind_of(echo_request(1, "e", b"x"), P.TYPE_REQUEST) is Echo
    assert kind_of(b"\x00", P.TYPE_REQUEST) is SERVICE_KINDS[P.TYPE_REQUEST]


def test_a_new_service_kind_on_the_real_server(echo_kind) -> None:
    echo = Echo("e")
    bg = Server([echo]).start_in_thread()
    try:
        with raw_connect(bg.url) as ws:
            for i in range(6):
                ws.send(echo_request(i + 1, "e", b"abc%d" % i))
            answers = {}
            for _ in range(6):
                r = P.parse_response(ws.recv(timeout=10))
                answers[r.request_id] = bytes(r.bitstream)
            assert answers == {i + 1: b"ABC%d" % i for i in range(6)}
            ws.send(echo_request(7, "e", b"now"))
            assert bytes(P.parse_response(ws.recv(timeout=10)).bitstream) == b"NOW"
            ws.send(echo_request(8, "e", b""))
            assert P.parse_response(ws.recv(timeout=10)).code is ErrorCode.BAD_INPUT
            ws.send(echo_request(9, "nope", b"x"))
            assert P.parse_response(ws.recv(timeout=10)).code is ErrorCode.UNKNOWN_DEPLOYMENT
            ws.send(echo_request(1, "e", b"abc0"))  # a retried id: the remembered answer
            assert bytes(P.parse_response(ws.recv(timeout=10)).bitstream) == b"ABC0"
    finally:
        bg.stop(grace_s=2.0)
    assert sum(echo.batches) == 6 and max(echo.batches) > 1  # batched by the scheduler
    assert echo.settled == [True] * 6
    assert all(t.startswith("svc-e") for t in echo.threads)  # run in its worker thread


def test_a_new_service_kind_without_a_transport(echo_kind) -> None:
    echo = Echo("e")
    frames = [echo_request(1, "e", b"a"), echo_request(2, "e", b"b"), b"SP\x01",
              echo_request(3, "x", b"c"), echo_request(4, "e", b"now")]
    got = [P.parse_response(f) for f in handle_frames([echo], frames)]
    assert [bytes(r.bitstream) for r in (got[0], got[1], got[4])] == [b"A", b"B", b"NOW"]
    assert got[2].code is ErrorCode.BAD_FRAME and got[3].code is ErrorCode.UNKNOWN_DEPLOYMENT
    assert echo.batches == [2] and echo.settled == [True, True]


def test_loop_thread_runs_calls_and_times_out() -> None:
    lt = LoopThread("test-loop", timeout_s=5.0)
    try:
        assert lt.run(asyncio.sleep(0, result=7)) == 7
        assert lt.call(threading.current_thread) is not threading.current_thread()
        with pytest.raises(TimeoutError):
            lt.run(asyncio.sleep(10), timeout_s=0.05)
        with pytest.raises(ZeroDivisionError):
            lt.call(lambda: 1 / 0)
    finally:
        lt.stop()
    assert not lt.alive
    lt.stop(asyncio.sleep(0))  # stopping twice is harmless, and closes the coroutine

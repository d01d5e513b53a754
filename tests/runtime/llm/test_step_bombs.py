"""STEP frames cannot make the server do more work than they could legitimately ask for:
more bitstreams than tokens, headers claiming other shapes than the declared tokens at the
model's hidden size, or a tiny frame declaring a long prefill are refused with typed errors
before any payload is decoded, whatever codecs the deployment accepts."""

from __future__ import annotations

import resource
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
import torch
from websockets.sync.client import connect

from splitcomp import codecs
from splitcomp.codecs.bytes_io import put_varint
from splitcomp.codecs.container import template
from splitcomp.llm import ServerHalf, greedy_unsplit
from splitcomp.runtime import BackgroundServer, ErrorCode, Server
from splitcomp.runtime import protocol as P
from splitcomp.runtime.errors import RequestError
from splitcomp.runtime.llm.client import RemoteLM
from splitcomp.runtime.llm.service import LLMDeployment, StepItem

pytestmark = pytest.mark.timeout(60)
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
SPLIT = 2
H = 64  # the tiny models' hidden size


def forged(shape: tuple[int, ...], codec: str = "rans") -> bytes:
    """A well-formed container (CRC right) whose header claims ``shape``, with the tiny payload
    of one zero token: what a hostile client sends to make the server allocate ``shape``."""
    c = codecs.get(codec)
    real = c.encode(torch.zeros(1, 1, H))
    payload = real[codecs.peek(real).header_bytes : -4]
    body = bytearray(template(c, shape))
    put_varint(body, len(payload))
    body += payload
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.fixture
def dep(tiny_models) -> Iterator[LLMDeployment]:
    d = LLMDeployment("lm", ServerHalf(tiny_models["llama_tiny"], SPLIT))
    yield d
    d.close()


@pytest.fixture
def srv(tiny_models) -> Iterator[BackgroundServer]:
    dep = LLMDeployment("lm", ServerHalf(tiny_models["llama_tiny"], SPLIT))
    bg = Server(llm=[dep], tokens=TOKENS).start_in_thread()
    yield bg
    bg.stop(grace_s=2.0)


def _run(dep: LLMDeployment, tokens: int, blobs: list[bytes], monkeypatch) -> ErrorCode | None:
    """Run one STEP through the worker's path; returns its error code (None: answered).
    Fails if any payload is decoded for a step that is then refused."""
    decoded = []
    real = LLMDeployment._decode_one

    def counting(self, item, blob):
        decoded.append(len(blob))
        return real(self, item, blob)

    monkeypatch.setattr(LLMDeployment, "_decode_one", counting)
    session = dep.sessions.open("alice")
    try:
        report = dep.run_steps([StepItem(1, session, tokens, blobs)])
    finally:
        dep.sessions.close("alice", session.id)
    if report.errors[0] is not None:
        assert not decoded, "a refused step had payloads decoded"
    return report.errors[0]


def test_more_bitstreams_than_tokens_is_a_bad_frame(dep, srv) -> None:
    """65535 one-byte bitstreams for one token: refused at admission, none read."""
    s = dep.sessions.open("alice")
    frame = P.encode_llm_step(1, s.id, 1, [b"x"] * 65535)
    with pytest.raises(RequestError) as info:
        dep.admit("alice", P.parse_llm_request(frame), lambda: None)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert "65535 bitstreams for 1 tokens" in info.value.message
    assert not s.busy and dep.sessions.reserved_bytes == 0
    with connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                 compression=None, proxy=None, open_timeout=5) as ws:
        ws.send(P.encode_llm_open(1, "lm"))
        sid = P.parse_response(ws.recv(timeout=10)).llm.session
        ws.send(P.encode_llm_step(2, sid, 2, [b"x" * 64] * 3))
        assert P.parse_response(ws.recv(timeout=10)).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("case, code", [
    ("huge shape", ErrorCode.BAD_BITSTREAM),  # more elements than any step may carry
    ("more tokens than declared", ErrorCode.BAD_INPUT),
    ("the last of many", ErrorCode.BAD_INPUT),
    ("fewer tokens than declared", ErrorCode.BAD_INPUT),
    ("an empty stream", ErrorCode.BAD_INPUT),
    ("wrong hidden size", ErrorCode.BAD_INPUT),
    ("wrong rank", ErrorCode.BAD_INPUT),
    ("integer tensor", ErrorCode.BAD_INPUT),
    ("corrupt", ErrorCode.BAD_BITSTREAM),
])
def test_headers_are_checked_before_any_payload(dep, monkeypatch, case, code) -> None:
    one = codecs.get("fp32").encode(torch.randn(1, 1, H))
    tokens, blobs = {
        "huge shape": (1, [forged((1, 1 << 22, H))]),
        "more tokens than declared": (2, [forged((1, 3, H))]),
        "the last of many": (4, [one, one, one, forged((1, 2, H))]),
        "fewer tokens than declared": (4, [one, one]),
        "an empty stream": (1, [one, forged((1, 0, H))]),
        "wrong hidden size": (1, [forged((1, 1, H + 1))]),
        "wrong rank": (1, [forged((1, H))]),
        "integer tensor": (1, [codecs.get("fp32").encode(torch.zeros(1, 1, H,
                                                                     dtype=torch.int32))]),
        "corrupt": (1, [one[:-1] + bytes([one[-1] ^ 1])]),
    }[case]
    assert _run(dep, tokens, blobs, monkeypatch) is code


def test_good_steps_still_decode(dep, monkeypatch) -> None:
    x = torch.randn(1, 5, H)
    fp32 = codecs.get("fp32")
    per_token = [fp32.encode(x[:, i : i + 1]) for i in range(5)]
    mixed = [fp32.encode(x[:, :2]), fp32.encode(x[:, 2:])]
    for blobs in (per_token, mixed, [fp32.encode(x)]):
        assert _run(dep, 5, blobs, monkeypatch) is None
        s = dep.sessions.open("alice")
        torch.testing.assert_close(dep.decode(StepItem(1, s, 5, blobs)), x, rtol=0, atol=0)


def test_a_small_frame_cannot_ask_for_a_long_prefill(dep) -> None:
    """A constant hidden state codes to ~35 bytes at any length (rans): 4096 tokens in one
    tiny frame are refused at admission (nothing queued, nothing reserved)."""
    s = dep.sessions.open("alice")
    rans = codecs.get("rans")
    tiny = rans.encode(torch.zeros(1, 4096, H))
    assert len(tiny) < 100

    def admit(tokens: int, blobs: list[bytes]) -> ErrorCode | None:
        req = P.parse_llm_request(P.encode_llm_step(1, s.id, tokens, blobs))
        try:
            dep.admit("alice", req, lambda: None)
        except RequestError as e:
            return e.code
        dep.sessions.finish(s, tokens, ok=False)
        return None

    assert admit(4096, [tiny]) is ErrorCode.BAD_BITSTREAM
    assert admit(4097, [tiny]) is ErrorCode.TOO_LARGE
    assert dep.sessions.reserved_bytes == 0 and not s.busy
    assert admit(4, [rans.encode(torch.zeros(1, 4, H))]) is None  # 8 bytes a token: fine


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_costliest_small_frames_are_cheap_on_a_live_server(tiny_models, srv,
                                                               prompt) -> None:
    """The issue's bomb (a ~150-byte frame whose two streams claim 2**28 elements each, 6.5 GB
    and 10 s before) and the costliest sub-KB frames that pass every check (as many tokens as
    the byte floor allows, each stream a constant) cost little; others are served meanwhile."""
    rans = codecs.get("rans")
    model = tiny_models["llama_tiny"]
    want, _ = greedy_unsplit(model, prompt, 4)
    with connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                 compression=None, proxy=None, open_timeout=5) as ws, \
            RemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["bob"]) as other:
        gen = other.generate(prompt, 4)
        got = [next(gen).token]
        ws.send(P.encode_llm_open(1, "lm"))
        sid = P.parse_response(ws.recv(timeout=10)).llm.session
        bomb = [forged((1, (1 << 28) // H, H)), forged((1, (1 << 28) // H, H))]
        frames = {"bomb": P.encode_llm_step(2, sid, 2, bomb)}
        t = len(rans.encode(torch.zeros(1, 4, H))) // 8  # tokens a ~35-byte stream may carry
        blob = rans.encode(torch.zeros(1, t, H))
        n = (1024 - 40) // (len(blob) + 4)
        frames["costliest"] = P.encode_llm_step(3, sid, t * n, [blob] * n)
        over = rans.encode(torch.zeros(1, t + 1, H))
        frames["over the floor"] = P.encode_llm_step(4, sid, (t + 1) * n, [over] * n)
        rss0, t0, c0 = _rss_mb(), time.perf_counter(), time.process_time()
        answers = {}
        for label, frame in frames.items():
            assert len(frame) < 1024, label
            ws.send(frame)
            answers[label] = P.parse_response(ws.recv(timeout=10))
            got.append(next(gen).token)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert answers["bomb"].code is ErrorCode.BAD_BITSTREAM
        assert answers["over the floor"].code is ErrorCode.BAD_BITSTREAM
        assert answers["costliest"].ok and answers["costliest"].llm.position == t * n
        assert wall < 5 and cpu < 5 and _rss_mb() - rss0 < 200
    assert got == want

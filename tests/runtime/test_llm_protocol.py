"""The LLM frames (types 0x02 / 0x83) are pinned byte for byte, as docs/protocol.md shows them;
the vision frames are pinned in test_protocol.py and do not change."""

from __future__ import annotations

import pytest

from splitcomp.runtime import protocol as P

SID = bytes(range(16))


def test_llm_request_bytes_are_pinned() -> None:
    frame = P.encode_llm_open(5, "lm", P.Sampling(temperature=0.5, top_k=40, seed=7, logprobs=2))
    assert frame.hex() == ("5350" "01" "02" "0500000000000000" "01" "01" "02" "6c6d"
                           "0000003f" "28000000" "0700000000000000" "02")
    req = P.parse_llm_request(frame)
    assert (req.op, req.deployment, req.sampling) == (P.LLMOp.OPEN, "lm",
                                                      P.Sampling(0.5, 40, 7, 2))
    frame = P.encode_llm_step(6, SID, 1, [b"\xaa\xbb"])
    assert frame.hex() == ("5350" "01" "02" "0600000000000000" "01" "02" + SID.hex()
                           + "0100" "0100" "02000000" "aabb")
    req = P.parse_llm_request(frame)
    assert (req.session, req.tokens, [bytes(b) for b in req.bitstreams]) == (SID, 1,
                                                                             [b"\xaa\xbb"])
    frame = P.encode_llm_step(6, SID, 3, [b"a", b"bc", b"d"])
    assert [bytes(b) for b in P.parse_llm_request(frame).bitstreams] == [b"a", b"bc", b"d"]
    frame = P.encode_llm_close(7, SID)
    assert frame.hex() == "5350" "01" "02" "0700000000000000" "01" "03" + SID.hex()
    assert P.parse_llm_request(frame).op is P.LLMOp.CLOSE


def test_open_with_a_codec_context_is_pinned() -> None:
    """An OPEN carrying a codec context is LLM version 2; without one it stays version 1."""
    digest = bytes(range(32))
    frame = P.encode_llm_open(5, "lm", context=P.CodecContext(9, digest, b"\x01\x02\x03"))
    assert frame.hex() == ("5350" "01" "02" "0500000000000000" "02" "01" "02" "6c6d"
                           "00000000" "00000000" "0000000000000000" "00"
                           "09" + digest.hex() + "03000000" "010203")
    req = P.parse_llm_request(frame)
    assert (req.deployment, req.sampling, req.context.codec_id, req.context.digest,
            bytes(req.context.data)) == ("lm", P.Sampling(), 9, digest, b"\x01\x02\x03")
    named = P.encode_llm_open(6, "lm", context=P.CodecContext.of(9, b"ctx", send=False))
    assert named[12] == 2 and named.endswith(P.CodecContext.of(9, b"ctx").digest + bytes(4))
    req = P.parse_llm_request(named)
    assert req.context.id_only and req.context.digest == P.CodecContext.of(9, b"ctx").digest
    assert P.parse_llm_request(P.encode_llm_open(7, "lm")).context is None
    assert P.encode_llm_open(7, "lm")[12] == 1
    bad = {
        "short header": frame[:40],
        "short data": frame[:-1],
        "long data": frame + b"z",
        "codec 0": frame[:34] + b"\x00" + frame[35:],
        "v1 with context": frame[:12] + b"\x01" + frame[13:],
        "v2 step": STEP[:12] + b"\x02" + STEP[13:],
    }
    for label, raw in bad.items():
        with pytest.raises(P.FrameError) as info:
            P.parse_llm_request(raw)
        assert info.value.request_id in (5, 9), label
    with pytest.raises(ValueError):
        P.CodecContext(9, b"short")
    assert P.ErrorCode.CONTEXT_UNKNOWN == 15


def test_llm_result_bytes_are_pinned() -> None:
    opened = P.LLMOpened(SID, 15, 576, 49152, 23040)
    frame = P.encode_llm_opened(5, opened)
    assert frame.hex() == ("5350" "01" "83" "0500000000000000" "01" "01" + SID.hex()
                           + "0f00" "40020000" "00c00000" "005a0000")
    assert P.parse_response(frame).llm == opened
    frame = P.encode_llm_token(6, 42, -0.5, 8, [(42, -0.5)], batch_size=3, queue_s=1e-6,
                               decode_s=2e-6, tail_s=3e-6)
    assert frame.hex() == ("5350" "01" "83" "0600000000000000" "01" "02" "0300" "01000000"
                           "02000000" "03000000" "08000000" "2a000000" "000000bf" "01"
                           "2a000000" "000000bf")
    resp = P.parse_response(frame)
    assert resp.ok and resp.timing == P.Timing(3, 1, 2, 3)
    assert resp.llm == P.LLMToken(42, -0.5, ((42, -0.5),), 8, P.Timing(3, 1, 2, 3))
    frame = P.encode_llm_closed(7, 9)
    assert frame.hex() == "5350" "01" "83" "0700000000000000" "01" "03" "09000000"
    assert P.parse_response(frame).llm == P.LLMClosed(9)


def test_a_vision_server_path_rejects_llm_frames_and_vice_versa() -> None:
    with pytest.raises(P.FrameError, match="not a request") as info:
        P.parse_request(P.encode_llm_close(7, SID))
    assert info.value.request_id == 7
    with pytest.raises(P.FrameError, match="not an LLM request"):
        P.parse_llm_request(P.encode_request(7, "a", b"x"))


STEP = P.encode_llm_step(9, SID, 1, [b"xy"])


@pytest.mark.parametrize(("frame", "has_id"), [
    (b"SP\x01\x02", False),
    (b"SP\x01\x02" + bytes(8) + b"\x01\x03" + SID, False),  # id 0
    (STEP[:13], True),  # no op
    (STEP[:12] + b"\x02" + STEP[13:], True),  # LLM version 2
    (STEP[:13] + b"\x04" + STEP[14:], True),  # unknown op
    (STEP[:20], True),  # short session id
    (STEP[:32], True),  # no step header
    (STEP[:30] + b"\x00\x00" + STEP[32:], True),  # zero tokens
    (STEP[:-1], True),  # bitstream shorter than its length
    (STEP + b"z", True),  # longer
    (P.encode_llm_close(9, SID) + b"z", True),
    (P.encode_llm_open(9, "lm")[:-1], True),
    (P.encode_llm_open(9, "lm")[:14] + b"\x00" + P.encode_llm_open(9, "lm")[15:], True),
], ids=["short", "id0", "no-op", "version", "op", "session", "step-head", "no-tokens",
        "short-blob", "long-blob", "long-close", "short-open", "empty-name"])
def test_malformed_llm_requests_raise(frame: bytes, has_id: bool) -> None:
    with pytest.raises(P.FrameError) as info:
        P.parse_llm_request(frame)
    assert (info.value.request_id == 9) if has_id else info.value.request_id is None


def test_sampling_and_sizes_are_checked() -> None:
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-1),
                dict(logprobs=P.MAX_TOP_K_LOGPROBS + 1), dict(seed=1 << 64)):
        with pytest.raises(ValueError):
            P.Sampling(**bad)
    with pytest.raises(ValueError):
        P.encode_llm_close(1, b"short")
    with pytest.raises(ValueError):
        P.encode_llm_step(1, SID, 0, [b"x"])
    nan = P.encode_llm_open(9, "lm")[:-17] + bytes.fromhex("0000c07f") + bytes(13)
    with pytest.raises(P.FrameError, match="sampling"):
        P.parse_llm_request(nan)

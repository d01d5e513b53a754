"""The frame layout is pinned byte for byte (it is what docs/protocol.md describes)."""

from __future__ import annotations

import pytest

from splitcomp.runtime import protocol as P


def test_request_bytes_are_pinned() -> None:
    frame = P.encode_request(0x0102030405060708, "r20", b"\xaa\xbb")
    assert frame.hex() == "5350" "01" "01" "0807060504030201" "03" "723230" "aabb"
    req = P.parse_request(frame)
    assert (req.request_id, req.deployment, bytes(req.bitstream)) == (
        0x0102030405060708, "r20", b"\xaa\xbb")


def test_result_and_error_bytes_are_pinned() -> None:
    frame = P.encode_result(5, b"\x01\x02", batch_size=3, queue_s=1e-6, decode_s=2e-6,
                            tail_s=0.5)
    assert frame.hex() == ("5350" "01" "81" "0500000000000000" "0300" "01000000" "02000000"
                           "20a10700" "0102")
    resp = P.parse_response(frame)
    assert resp.ok and bytes(resp.bitstream) == b"\x01\x02"
    assert resp.timing == P.Timing(3, 1, 2, 500000)
    err = P.encode_error(9, P.ErrorCode.OVERLOADED, "busy")
    assert err.hex() == "5350" "01" "82" "0900000000000000" "06" "0400" "62757379"
    resp = P.parse_response(err)
    assert not resp.ok and resp.code is P.ErrorCode.OVERLOADED and resp.message == "busy"


@pytest.mark.parametrize(("frame", "has_id"), [
    (b"", False),
    (b"hello world!!", False),  # bad magic
    (b"SP\x02\x01" + bytes(8) + b"\x01a\x00", False),  # unknown version
    (b"SP\x01\x01" + bytes(8) + b"\x01a\x00", False),  # id 0 is reserved
    (b"SP\x01\x02" + (7).to_bytes(8, "little") + b"\x01a\x00", True),  # not a request type
    (b"SP\x01\x01" + (7).to_bytes(8, "little"), True),  # no name
    (b"SP\x01\x01" + (7).to_bytes(8, "little") + b"\x00", True),  # empty name
    (b"SP\x01\x01" + (7).to_bytes(8, "little") + b"\x05ab", True),  # truncated name
    (b"SP\x01\x01" + (7).to_bytes(8, "little") + b"\x02ab", True),  # no bitstream
    (b"SP\x01\x01" + (7).to_bytes(8, "little") + b"\x02\xff\xfe\x00", True),  # not ASCII
], ids=["empty", "magic", "version", "id0", "type", "no-name", "empty-name", "short-name",
        "no-bitstream", "non-ascii"])
def test_malformed_requests_raise_with_id_when_readable(frame: bytes, has_id: bool) -> None:
    with pytest.raises(P.FrameError) as info:
        P.parse_request(frame)
    assert (info.value.request_id == 7) if has_id else info.value.request_id is None


def test_malformed_responses_raise() -> None:
    ok = P.encode_error(3, P.ErrorCode.INTERNAL, "x")
    for bad in (ok[:-1], ok[:12] + b"\xff\x00\x00", P.encode_request(3, "a", b"z"),
                P.encode_result(3, b"")[:20]):
        with pytest.raises(P.FrameError):
            P.parse_response(bad)


def test_names_and_ids_are_checked_when_encoding() -> None:
    for name in ("", "a" * 65, "has space", "é"):
        with pytest.raises(ValueError):
            P.check_name(name)
    with pytest.raises(ValueError):
        P.encode_request(0, "a", b"x")
    with pytest.raises(ValueError):
        P.encode_request(1 << 64, "a", b"x")


def test_long_error_messages_are_cut_on_a_character_boundary() -> None:
    resp = P.parse_response(P.encode_error(1, P.ErrorCode.INTERNAL, "é" * 2000))
    assert len(resp.message.encode()) <= P.MAX_MESSAGE_BYTES and set(resp.message) == {"é"}


def test_timing_saturates() -> None:
    resp = P.parse_response(P.encode_result(1, b"", batch_size=10**6, tail_s=1e9, queue_s=-1))
    assert resp.timing == P.Timing(0xFFFF, 0, 0, 0xFFFFFFFF)

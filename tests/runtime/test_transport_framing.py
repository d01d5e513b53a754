"""The ``asyncio`` transport's own RFC 6455 server framing, without sockets: client frames
(masked, fragmented, control), the message size limit (1009 before the payload is
buffered), the upgrade request, and hostile bytes ending only in typed errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from splitcomp.runtime.transport import rfc6455 as W


def _client(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


def _any_frame(opcode: int, data: bytes, fin: bool, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A masked frame as a client might send it, valid or not (no checks)."""
    n = len(data)
    size = (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big")
            if n < 65536 else bytes([0xFF]) + n.to_bytes(8, "big"))
    return bytes([(0x80 if fin else 0) | opcode]) + size + mask + W.unmask(data, mask)


def _all(reader: W.Reader, data: bytes, chunk: int = 0) -> list[tuple[int, bytes]]:
    out = []
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in pieces:
        reader.feed(piece)
        while (item := reader.next()) is not None:
            out.append(item)
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70001])
@pytest.mark.parametrize("chunk", [0, 1, 7, 4096])
def test_masked_binary_messages_of_every_length_form(size: int, chunk: int) -> None:
    if chunk == 1 and size > 2000:
        pytest.skip("byte by byte: the small sizes cover it")
    data = os.urandom(size)
    wire = _client(Opcode.BINARY, data) + _client(Opcode.BINARY, b"next")
    assert _all(W.Reader(1 << 20), wire, chunk) == [(W.OP_BINARY, data), (W.OP_BINARY, b"next")]


def test_fragments_are_joined_and_control_frames_pass_between_them() -> None:
    wire = (_client(Opcode.BINARY, b"ab", fin=False) + _client(Opcode.PING, b"p")
            + _client(Opcode.CONT, b"cd", fin=False) + _client(Opcode.CONT, b"ef"))
    assert _all(W.Reader(100), wire, 3) == [(W.OP_PING, b"p"), (W.OP_BINARY, b"abcdef")]


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    r = W.Reader(1000)
    r.feed(_client(Opcode.BINARY, bytes(1001))[:8])  # the header only: no payload yet
    with pytest.raises(W.ProtocolError) as info:
        r.next()
    assert info.value.code == 1009
    r = W.Reader(1000)  # the limit holds for the fragments' sum
    with pytest.raises(W.ProtocolError) as info:
        _all(r, _client(Opcode.BINARY, bytes(600), fin=False) + _client(Opcode.CONT, bytes(600)))
    assert info.value.code == 1009
    assert _all(W.Reader(1000), _client(Opcode.BINARY, bytes(1000))) == [(2, bytes(1000))]
    r = W.Reader(1000)  # empty fragments count too: their list cannot grow without bound
    with pytest.raises(W.ProtocolError) as info:
        _all(r, _client(Opcode.BINARY, b"", fin=False)
             + _client(Opcode.CONT, b"", fin=False) * 2000)
    assert info.value.code == 1009 and len(r.frags) <= 1000


@pytest.mark.parametrize("wire", [
    Frame(Opcode.BINARY, b"x").serialize(mask=False, extensions=[]),  # unmasked
    _client(Opcode.CONT, b"x"),  # continuation of nothing
    _client(Opcode.BINARY, b"a", fin=False) + _client(Opcode.BINARY, b"b"),  # no continuation
    bytes([0x83, 0x80, 0, 0, 0, 0]),  # reserved opcode 3
    bytes([0x8B, 0x80, 0, 0, 0, 0]),  # reserved control opcode 0xB
    bytes([0xC2, 0x80, 0, 0, 0, 0]),  # RSV1 without an extension
    bytes([0x09, 0x80, 0, 0, 0, 0]),  # fragmented ping
    bytes([0x89, 0xFE, 0, 126, 0, 0, 0, 0]) + bytes(126),  # ping over 125 bytes
    bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]),  # 64-bit length with its top bit set
])
def test_frames_breaking_rfc6455_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(W.ProtocolError) as info:
        _all(W.Reader(1 << 20), wire)
    assert info.value.code == 1002


def test_close_payloads() -> None:
    assert W.parse_close(b"") == (None, "")
    assert W.parse_close((1000).to_bytes(2, "big") + b"bye") == (1000, "bye")
    assert W.parse_close((4001).to_bytes(2, "big")) == (4001, "")
    for bad, code in [(b"\x03", 1002), ((999).to_bytes(2, "big"), 1002),
                      ((1005).to_bytes(2, "big"), 1002), (b"\x03\xe8\xff", 1007)]:
        with pytest.raises(W.ProtocolError) as info:
            W.parse_close(bad)
        assert info.value.code == code


def test_server_frames_are_what_a_websockets_client_parses() -> None:
    from websockets.frames import Frame as F
    from websockets.streams import StreamReader

    for size in (0, 125, 126, 65536):
        data = os.urandom(size)
        stream = StreamReader()
        stream.feed_data(W.frame(W.OP_BINARY, data))
        gen = F.parse(stream.read_exact, mask=False)
        try:
            next(gen)
        except StopIteration as done:
            assert done.value.data == data and done.value.opcode is Opcode.BINARY


def test_upgrade_request_and_accept_key() -> None:
    head = (b"GET /x?y HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, "
            b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer t")
    method, path, headers = W.parse_request(head)
    assert (method, path, headers["authorization"]) == ("GET", "/x?y", "Bearer t")
    assert W.accept_key(headers) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example
    for broken, status in [(b"GET / HTTP/1.0", 505), (b"GET /", 400), (b"GET x HTTP/1.1", 400),
                           (b"GET / HTTP/1.1\r\nno colon", 400),
                           (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 200, 431)]:
        with pytest.raises(W.HttpError) as info:
            W.parse_request(broken.removesuffix(b"\r\n"))
        assert info.value.status == status
    for missing in ("upgrade", "connection", "sec-websocket-version", "sec-websocket-key"):
        with pytest.raises(W.HttpError):
            W.accept_key({k: v for k, v in headers.items() if k != missing})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_end_in_messages_or_a_protocol_error(data: bytes, chunk: int) -> None:
    try:
        _all(W.Reader(256), data, chunk)
    except W.ProtocolError as e:
        assert e.code in (1002, 1009)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.binary(max_size=200), st.booleans()),
                max_size=6), st.integers(1, 50))
def test_any_frame_sequence_ends_in_messages_or_a_protocol_error(frames, chunk: int) -> None:
    wire = b"".join(_any_frame(op, data, fin) for op, data, fin in frames)
    try:
        _all(W.Reader(300), wire, chunk)
    except W.ProtocolError as e:
        assert e.code in (1002, 1009)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_request_head_is_parsed_or_an_http_error(head: bytes) -> None:
    try:
        _, _, headers = W.parse_request(head)
        W.accept_key(headers)
    except W.HttpError as e:
        assert 400 <= e.status < 600

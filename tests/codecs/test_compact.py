"""Compact streams: the header as a registered template, 9 bytes of overhead, same payload."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, compact
from splitcomp.codecs.container import template

from .registries import emptied

NAMES = [n for n in codecs.available() if not codecs.codec_class(n).has_session_context]


@pytest.mark.parametrize("name", NAMES)
def test_compact_round_trip_equals_the_full_stream(name: str) -> None:
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1)).relu()
    codec = codecs.get(name)
    full, small = codec.encode(x), codec.encode(x, compact=True)
    head = codecs.peek(full)
    assert len(small) == compact.PREFIX_BYTES + head.tensors[0].payload_bytes + 4
    assert len(full) - len(small) == head.header_bytes - compact.PREFIX_BYTES
    assert torch.equal(codecs.decode(small)[0], codecs.decode(full)[0])
    peeked = codecs.peek(small)
    assert peeked.codec_name == name and peeked.tensors == head.tensors
    assert peeked.total_bytes == len(small) and peeked.header_bytes == compact.PREFIX_BYTES


def test_unknown_template_and_shapes() -> None:
    codec = codecs.get("int8")
    a = template(codec, (1, 16, 8, 8))
    assert compact.template_id(a) != compact.template_id(template(codec, (2, 16, 8, 8)))
    data = codec.encode(torch.ones(1, 3), compact=True)
    with emptied(compact.TEMPLATES):
        with pytest.raises(BitstreamError, match="template .*: not registered here"):
            codecs.decode(data)
    with pytest.raises(ValueError, match="one tensor"):
        codec.encode([torch.ones(2), torch.ones(2)], compact=True)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 7))
def test_corrupt_compact_streams_raise_bitstream_error(where: int, bit: int) -> None:
    codec = codecs.get("rans")
    data = bytearray(codec.encode(torch.linspace(-3, 3, 256).reshape(1, 4, 8, 8), compact=True))
    data[where % len(data)] ^= 1 << bit
    with pytest.raises(BitstreamError):
        codecs.decode(bytes(data))
    with pytest.raises(BitstreamError):
        codecs.decode(bytes(data[: where % len(data)]))


# -- session streams: the template implied by the decoder's session, found by the CRC ----------
def _session(*streams: bytes) -> dict:
    """A session scope that learned the templates of these full streams."""
    scope: dict = {}
    for s in streams:
        assert codecs.container.learn_template(scope, s)
    return scope


@pytest.mark.parametrize("name", NAMES)
def test_session_streams_round_trip_in_their_session(name: str) -> None:
    x = torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(2))
    codec = codecs.get(name)
    full, small = codec.encode(x), codec.encode(x, compact=True)
    if small[:2] != compact.COMPACT_MAGIC:  # resilient codecs keep their own compact form
        with pytest.raises(ValueError, match="not a compact stream"):
            compact.session_stream(small)
        return
    short = compact.session_stream(small)
    assert short[:1] == compact.SESSION_MAGIC
    assert len(short) == len(small) - compact.PREFIX_BYTES + compact.SESSION_PREFIX_BYTES
    scope = _session(full)
    assert not codecs.container.learn_template(scope, full)  # known: not learned twice
    assert not codecs.container.learn_template(scope, small)  # compact streams teach nothing
    assert torch.equal(codecs.decode(short, contexts=scope)[0], codecs.decode(full)[0])
    head = codecs.peek(short, contexts=scope)
    assert head.header_bytes == 1 and head.total_bytes == len(short)


def test_a_session_stream_picks_its_template_and_refuses_others() -> None:
    """Of the session's templates, the CRC takes the one it was written under; outside a
    session, in another one, or corrupted: BitstreamError, never another header's decode."""
    x = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(3))
    fp16, int8 = codecs.get("fp16"), codecs.get("int8")
    short = compact.session_stream(int8.encode(x, compact=True))
    scope = _session(fp16.encode(x), int8.encode(x), fp16.encode(x[:, :, :16]))
    assert codecs.peek(short, contexts=scope).codec_name == "int8"
    assert torch.equal(codecs.decode(short, contexts=scope)[0],
                       codecs.decode(int8.encode(x))[0])
    for where in (None, _session(fp16.encode(x))):  # the process registry is not tried
        with pytest.raises(BitstreamError, match="CRC mismatch under every template"):
            codecs.decode(short, contexts=where)
    for i in range(len(short)):
        bad = bytearray(short)
        bad[i] ^= 0x10
        if i == 0:  # no longer a session stream
            with pytest.raises(BitstreamError, match="magic"):
                codecs.decode(bytes(bad), contexts=scope)
            continue
        with pytest.raises(BitstreamError, match="CRC mismatch"):
            codecs.decode(bytes(bad), contexts=scope)
    for cut in range(len(compact.SESSION_MAGIC) + 4):
        with pytest.raises(BitstreamError, match="truncated"):
            codecs.decode(short[:cut], contexts=scope)

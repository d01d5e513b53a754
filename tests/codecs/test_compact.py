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

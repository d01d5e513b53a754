"""The bitstreams' CRC-32 (zlib-ng's when installed) is zlib's, value for value."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from splitcomp.codecs import crc32


@given(data=st.binary(max_size=70_000), start=st.integers(0, (1 << 32) - 1),
       cut=st.integers(0, 64))
def test_crc32_is_zlibs(data: bytes, start: int, cut: int) -> None:
    view = memoryview(data)[cut:]
    assert crc32(view) == zlib.crc32(view)
    assert crc32(view, start) == zlib.crc32(view, start)

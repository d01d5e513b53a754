"""Hostile image files for an image-input deployment: any bytes, and damaged JPEG/WebP files,
give the pixels of the expected size or a typed ``RequestError`` (``BAD_BITSTREAM`` or
``BAD_INPUT``), never another exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from splitcomp.runtime.errors import RequestError
from splitcomp.runtime.fulloffload import decode_image_file
from splitcomp.runtime.protocol import ErrorCode

SIZE = (3, 32, 32)


def _file(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt, quality=80)
    return buf.getvalue()


FILES = {"jpeg": _file("JPEG"), "webp": _file("WEBP")}


def _decode_or_typed_error(data: bytes, fmt: str) -> None:
    try:
        pixels = decode_image_file(data, (fmt,), SIZE)
    except RequestError as e:
        assert e.code in (ErrorCode.BAD_BITSTREAM, ErrorCode.BAD_INPUT)
        return
    assert tuple(pixels.shape) == SIZE and str(pixels.dtype) == "torch.uint8"


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_a_good_file_decodes(fmt: str) -> None:
    assert tuple(decode_image_file(FILES[fmt], (fmt,), SIZE).shape) == SIZE


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048), fmt=st.sampled_from(sorted(FILES)))
def test_any_bytes_decode_or_raise_a_typed_error(data: bytes, fmt: str) -> None:
    _decode_or_typed_error(data, fmt)


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(sorted(FILES)), cut=st.integers(0, 4096),
       flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), max_size=8))
def test_damaged_files_decode_or_raise_a_typed_error(fmt: str, cut: int,
                                                     flips: list[tuple[int, int]]) -> None:
    data = bytearray(FILES[fmt][:cut] if cut < len(FILES[fmt]) else FILES[fmt])
    for pos, xor in flips:
        if data:
            data[pos % len(data)] ^= xor
    _decode_or_typed_error(bytes(data), fmt)

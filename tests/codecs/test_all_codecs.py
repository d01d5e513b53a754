"""Every registered codec passes these tests by being registered (timm-style)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits

NAMES = codecs.available()


def features(shape: tuple[int, ...], seed: int = 0, relu: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + 0.2
    return x.relu() if relu else x


def check_close(codec: codecs.Codec, x: torch.Tensor, y: torch.Tensor) -> None:
    assert y.shape == x.shape and y.dtype == x.dtype
    if codec.lossless:
        assert torch.equal(y, x)
        return
    if x.numel() == 0:
        return
    bound = codec.error_bound(x.float().numpy())
    err = (y.float() - x.float()).abs().max().item()
    # the output dtype adds its own rounding on top of the codec's error
    slack = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}.get(x.dtype, 0.0)
    assert err <= bound + slack * x.float().abs().max().item() + 1e-6, (err, bound)


def test_registry_lists_every_codec() -> None:
    for name in ("fp32", "fp16", "bf16", "int8", "blockwise8", "zstd"):
        assert name in NAMES
    ids = [codecs.codec_class(n).codec_id for n in NAMES]
    assert len(set(ids)) == len(ids)
    with pytest.raises(KeyError, match="available"):
        codecs.get("no-such-codec")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "shape", [(2, 16, 8, 8), (1, 32, 16, 16), (3, 7, 5), (1,), (0,), (4, 0, 3), (), (1, 12, 64)]
)
def test_round_trip_shapes(name: str, shape: tuple[int, ...]) -> None:
    codec = codecs.get(name)
    x = features(shape, relu=len(shape) != 3)
    data = codec.encode(x)
    (y,) = codec.decode(data)
    check_close(codec, x, y)
    (z,) = codecs.decode(data)  # the generic decoder needs nothing but the bytes
    assert torch.equal(y, z)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_preserved(name: str, dtype: torch.dtype) -> None:
    codec = codecs.get(name)
    x = features((2, 8, 6, 6), seed=3).to(dtype)
    (y,) = codec.decode(codec.encode(x))
    if dtype == torch.float64 and codec.lossless:
        assert y.dtype == dtype  # fp32 path: lossless for fp32-representable values only
        return
    check_close(codec, x, y)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_multi_tensor(name: str) -> None:
    codec = codecs.get(name)
    a = features((2, 8, 8, 8), seed=1).permute(0, 2, 3, 1)  # non-contiguous
    b = features((2, 16, 4, 4), seed=2, relu=False)[:, ::2]
    idx = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert not a.is_contiguous() and not b.is_contiguous()
    out = codec.decode(codec.encode([a, b, idx]))
    assert len(out) == 3
    check_close(codec, a, out[0])
    check_close(codec, b, out[1])
    assert torch.equal(out[2], idx)  # integer tensors always cross losslessly


@pytest.mark.parametrize("name", NAMES)
def test_constant_and_zero_inputs(name: str) -> None:
    codec = codecs.get(name)
    for x in (torch.zeros(2, 4, 8, 8), torch.full((3, 50), 0.75), torch.full((3, 50), -2.0)):
        (y,) = codec.decode(codec.encode(x))
        check_close(codec, x, y)


@pytest.mark.parametrize("name", NAMES)
def test_params_travel_in_the_bitstream(name: str) -> None:
    codec = codecs.get(name)
    header = codecs.peek(codec.encode(features((1, 4, 4, 4))))
    assert header.codec_name == name
    assert header.params == codec.params
    assert header.tensors[0].shape == (1, 4, 4, 4)
    assert header.total_bytes == len(codec.encode(features((1, 4, 4, 4))))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_codec_rejected(name: str) -> None:
    other = "fp16" if name != "fp16" else "fp32"
    data = codecs.get(other).encode(features((1, 4, 4, 4)))
    with pytest.raises(BitstreamError, match="made by"):
        codecs.get(name).decode(data)


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _assert_rejected_or_valid(data: bytes, shape: tuple[int, ...]) -> None:
    """A mangled stream must raise BitstreamError or decode to sane tensors - nothing else."""
    limits = DecodeLimits(max_elements=1 << 16, max_tensors=4, max_bytes=1 << 20)
    try:
        out = codecs.decode(data, limits=limits)
    except BitstreamError:
        return
    assert all(isinstance(t, torch.Tensor) for t in out)
    assert sum(t.numel() for t in out) <= limits.max_elements


@pytest.mark.parametrize("name", NAMES)
def test_truncation_and_corruption_raise(name: str) -> None:
    data = codecs.get(name).encode(features((1, 8, 8, 8), seed=5))
    for cut in range(0, len(data), max(1, len(data) // 40)):
        with pytest.raises(BitstreamError):
            codecs.decode(data[:cut])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC"):
        codecs.decode(bytes(flipped))
    with pytest.raises(BitstreamError):
        codecs.decode(data + b"\0")


def test_limits_checked_before_allocation() -> None:
    # a well-formed header claiming 2**40 elements must be refused, not allocated
    body = bytearray(b"SC\x01\x01\x01\x01\x02")  # fp32, 1 tensor, float32, ndim 2
    body += b"\x80\x80\x80\x80\x80\x01" * 1 + b"\x80\x80\x80\x80\x80\x01"  # 2**35 x 2**35
    body += b"\x00"
    with pytest.raises(BitstreamError, match="exceeds limit"):
        codecs.decode(_refresh_crc(bytes(body)))
    small = DecodeLimits(max_elements=10)
    with pytest.raises(BitstreamError, match="exceeds limit"):
        codecs.decode(codecs.get("fp16").encode(torch.zeros(11)), limits=small)


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_fuzz_mangled_payload_with_valid_crc(name: str, data: st.DataObject) -> None:
    """Corrupt bytes *behind* a recomputed CRC so the codec's own parser is exercised."""
    shape = data.draw(st.sampled_from([(1, 4, 6, 6), (2, 33), (5,)]))
    clean = codecs.get(name).encode(features(shape, seed=7))
    body = bytearray(clean[:-4])
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    _assert_rejected_or_valid(_refresh_crc(bytes(body)), shape)


@FUZZ
@given(blob=st.binary(max_size=300), fix_crc=st.booleans(), codec_id=st.sampled_from(
    [codecs.codec_class(n).codec_id for n in NAMES]))
def test_fuzz_random_bytes(blob: bytes, fix_crc: bool, codec_id: int) -> None:
    body = b"SC\x01" + bytes([codec_id]) + blob
    data = _refresh_crc(body) if fix_crc else body
    _assert_rejected_or_valid(data, ())


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_property_round_trip(name: str, shape: tuple[int, ...], scale: float, seed: int) -> None:
    codec = codecs.get(name)
    x = features(shape, seed=seed, relu=seed % 2 == 0) * scale
    (y,) = codec.decode(codec.encode(x))
    check_close(codec, x, y)


@pytest.mark.parametrize("name", [n for n in NAMES if codecs.codec_class(n).quality_param])
def test_quality_grid_is_usable(name: str) -> None:
    cls = codecs.codec_class(name)
    assert len(cls.quality_grid) >= 2
    x = features((1, 16, 16, 16), seed=11)
    sizes = [len(codecs.get(name, **{cls.quality_param: q}).encode(x)) for q in cls.quality_grid]
    assert sizes[0] <= sizes[-1], "quality_grid must go from lowest rate to highest"


def test_non_finite_or_bad_params() -> None:
    with pytest.raises(TypeError):
        codecs.get("int8", no_such=1)
    with pytest.raises(ValueError):
        codecs.get("blockwise8", block=0)
    assert np.isfinite(codecs.get("fp16").error_bound(np.zeros(3, np.float32)))

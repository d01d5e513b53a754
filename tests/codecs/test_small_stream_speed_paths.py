"""The per-call shortcuts of small streams change no byte and no outcome: headers parsed before
(``compact.PARSED``), cached codec heads, the self-contained tokenwise rows' one-partition
median and scalar token path all give what the plain computation gives, for hostile input too."""

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
from splitcomp.codecs import _container_memo as memo
from splitcomp.codecs import _slicer_jit as jit
from splitcomp.codecs import compact as compact_module
from splitcomp.codecs import container as ct
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.entropy import decode_symbol_indices, encode_symbols
from splitcomp.codecs.errors import require

from .jit_paths import jit_path

pytestmark = pytest.mark.timeout(300)


def fresh_parse(fn):
    """``fn()`` with no header remembered (as before any stream), the memos restored after."""
    saved, sizes = dict(compact_module.PARSED), list(compact_module.PARSED_SIZES)
    last = memo._LAST
    compact_module.PARSED.clear()
    compact_module.PARSED_SIZES.clear()
    memo._LAST = None
    try:
        return outcome(fn)
    finally:
        compact_module.PARSED.clear()
        compact_module.PARSED.update(saved)
        compact_module.PARSED_SIZES[:] = sizes
        memo._LAST = last


def outcome(fn):
    """What ``fn()`` returns, or the type and message of what it raises."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - compared, not handled
        return type(e), str(e)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# -- tokenwise, self-contained rows: the reference computation, as it was written ----------------
def reference_steps(codec: tw.TokenwiseCodec, x2: np.ndarray) -> np.ndarray:
    a = np.abs(x2)
    top = a.max(axis=1) if x2.shape[1] else np.zeros(x2.shape[0], np.float32)
    med = np.median(a, axis=1) if x2.shape[1] else top
    s = np.maximum(med, top * 2.0**-20).astype(np.float64) * codec.step
    s[~(s > 0)] = 1.0
    out = np.minimum(s, 3e38).astype(np.float32)
    out[out == 0] = np.finfo(np.float32).smallest_subnormal  # the one change since
    return out


def reference_encode(codec: tw.TokenwiseCodec, x2: np.ndarray) -> bytes:
    if not np.all(np.isfinite(x2)):
        raise ValueError("tokenwise: input contains NaN or inf")
    steps = reference_steps(codec, x2)
    q = np.rint(x2 / steps[:, None]).astype(np.int64)
    u = np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.int64)
    return steps.astype("<f4").tobytes() + encode_symbols(u.reshape(-1))


def reference_decode(payload: memoryview, r: int, c: int) -> np.ndarray:
    require(len(payload) >= 4 * r, "tokenwise: truncated steps")
    steps = np.frombuffer(payload[: 4 * r], "<f4").astype(np.float32)
    require(bool(np.all(np.isfinite(steps) & (steps > 0))), "tokenwise: bad step")
    alphabet, idx = decode_symbol_indices(payload[4 * r:], r * c, max_symbol=2 * tw.Q_MAX)
    u = alphabet.astype(np.int64)
    levels = np.where(u & 1, -((u + 1) >> 1), u >> 1).astype(np.float32)
    out = levels[idx].reshape(r, c) * steps[:, None]
    f32_max = np.finfo(np.float32).max
    return np.clip(out, -f32_max, f32_max)  # an overflow saturates


def on_both_paths(fn):
    """``outcome(fn)`` with the numpy path, then with the compiled path (where numba is)."""
    out = []
    for compiled in (False, True):
        with jit_path(compiled and jit.ENABLED):
            out.append(outcome(fn))
    return out


def same_array(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b


FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1.0, -1.0])


@st.composite
def rows(draw) -> np.ndarray:
    r = draw(st.integers(1, 4))
    c = draw(st.integers(1, 40))
    if draw(st.booleans()):
        vals = draw(st.lists(FLOATS, min_size=r * c, max_size=r * c))
        return np.array(vals, np.float32).reshape(r, c)
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.standard_normal((r, c)) * scale).astype(np.float32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x2=rows(), level=st.integers(-64, 64))
def test_plain_rows_encode_and_decode_as_the_reference(x2: np.ndarray, level: int) -> None:
    with np.errstate(all="ignore"):  # subnormal rows overflow float32 quotients to inf
        check_plain_rows(x2, level)


def check_plain_rows(x2: np.ndarray, level: int) -> None:
    codec = tw.TokenwiseCodec(level=level)
    assert np.array_equal(codec._row_steps(x2), reference_steps(codec, x2))
    wants = on_both_paths(lambda: reference_encode(codec, x2))
    assert wants[0] == wants[1]
    assert on_both_paths(lambda: codec.encode_array(x2)) == wants
    x64 = x2.astype(np.float64)  # not the container's input, but the same computation
    assert on_both_paths(lambda: codec.encode_array(x64)) == on_both_paths(
        lambda: reference_encode(codec, x64))
    want = wants[0]
    if not isinstance(want, bytes):
        return
    r, c = x2.shape
    for payload in (want, want[:-1], want[:4 * r] + want[4 * r + 1:], want[:-4] + bytes(4)):
        view = memoryview(payload)
        got = on_both_paths(lambda v=view: codec.decode_array(v, (r, c), DecodeLimits()))
        ref = on_both_paths(lambda v=view: reference_decode(v, r, c))
        assert all(same_array(g, f) for g, f in zip(got, ref, strict=True)), (got, ref)
        if payload is want:  # every stream written decodes (a row of subnormals too)
            assert not isinstance(ref[0], tuple), ref


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 8), (2, 1, 5)])
def test_plain_rows_refuse_nan_and_inf(bad: float, shape: tuple[int, ...]) -> None:
    x = np.ones(shape, np.float32)
    x.reshape(-1)[-2 if x.size > 1 else 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        tw.TokenwiseCodec().encode_array(x)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(tw.TokenwiseCodec()._row_steps(x.reshape(-1, shape[-1])),
                              reference_steps(tw.TokenwiseCodec(), x.reshape(-1, shape[-1])))


@pytest.mark.parametrize("step", [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("r", [1, 2])
def test_plain_steps_checked(step: float, r: int) -> None:
    codec = tw.TokenwiseCodec()
    payload = bytearray(codec.encode_array(np.linspace(-1, 1, 16 * r, dtype=np.float32)
                                           .reshape(r, 16)))
    payload[4 * r - 4 : 4 * r] = struct.pack("<f", step)
    with pytest.raises(BitstreamError, match="bad step"):
        codec.decode_array(memoryview(bytes(payload)), (r, 16), DecodeLimits())
    with pytest.raises(BitstreamError, match="truncated steps"):
        codec.decode_array(memoryview(bytes(payload[: 4 * r - 1])), (r, 16), DecodeLimits())


# -- headers parsed before -----------------------------------------------------------------
STREAMS = {
    "tokenwise": lambda: codecs.get("tokenwise", level=3).encode(torch.randn(1, 1, 96)),
    "rans": lambda: codecs.get("rans").encode(torch.randn(1, 4, 6, 6)),
    "slicer": lambda: codecs.get("slicer").encode(torch.randn(2, 3, 5)),
    "fp16": lambda: codecs.get("fp16").encode(torch.randn(7, 3)),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_remembered_header_reads_as_a_parsed_one(name: str) -> None:
    data = STREAMS[name]()
    first = fresh_parse(lambda: ct.read_header(data))
    ct.read_header(data)  # remembered now
    assert (len(data) - 4 - first[0].header_bytes) in {i.payload_bytes for i in first[0].tensors}
    again = ct.read_header(data)
    assert again[0] == first[0] and again[2] == first[2]
    assert type(again[1]) is type(first[1]) and again[1].params == first[1].params
    assert same(codecs.decode(data), fresh_parse(lambda: codecs.decode(data)))


def test_context_codecs_are_not_remembered() -> None:
    assert tw.TokenwiseCodec.reusable_for({"context": 0, "level": 0})
    assert not tw.TokenwiseCodec.reusable_for({"context": 5, "level": 0})
    assert not codecs.codec_class("resilient").reusable_for({"inner": "rans"})
    assert codecs.codec_class("rans").reusable_for({})


def same(a, b) -> bool:
    """Equal outcomes: the same error, or tensors of the same dtypes, shapes and bits."""
    if isinstance(a, tuple) and a and isinstance(a[0], type):
        return a == b
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and _bits(x) == _bits(y)
        for x, y in zip(a, b, strict=True))


def _bits(t) -> bytes:
    """A tensor's bytes (bfloat16 too, which numpy does not hold)."""
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(STREAMS)), at=st.integers(0, 1 << 16),
       value=st.integers(0, 255), grow=st.integers(-3, 3), crc=st.booleans(),
       limits=st.sampled_from([DecodeLimits(), DecodeLimits(max_elements=100),
                               DecodeLimits(max_ndim=2), DecodeLimits(max_bytes=64)]))
def test_altered_streams_read_as_without_memory(name: str, at: int, value: int, grow: int,
                                                crc: bool, limits: DecodeLimits) -> None:
    """A stream with one byte changed (its CRC fixed or not), bytes added or cut before the
    CRC: read with its header's parse remembered, it gives what a fresh parse gives."""
    data = STREAMS[name]()
    body = bytearray(data[:-4])
    at %= len(body)
    body[at] = value
    if grow > 0:
        body[at:at] = bytes(grow)
    elif grow < 0:
        del body[at : at - grow]
    altered = with_crc(bytes(body)) if crc else bytes(body) + data[-4:]
    want = fresh_parse(lambda: ct.read_header(altered, limits))
    for stream in (data, altered):  # the original's header remembered, then the altered's
        outcome(lambda s=stream: ct.read_header(s, limits))
        got = outcome(lambda: ct.read_header(altered, limits))
        if isinstance(want, tuple) and isinstance(want[0], type):
            assert got == want
        else:
            assert got[0] == want[0] and got[2] == want[2]
            ref = fresh_parse(lambda: codecs.decode(altered, limits))
            assert same(outcome(lambda: codecs.decode(altered, limits)), ref)


def test_payload_length_field_checked_on_a_remembered_header() -> None:
    data = STREAMS["tokenwise"]()
    header = ct.read_header(data)[0]
    size_at = header.header_bytes - 1  # a one-byte payload length
    body = bytearray(data[:-4])
    assert body[size_at] == header.tensors[0].payload_bytes
    for size in (0, body[size_at] - 1, body[size_at] + 1, 127):
        body[size_at] = size
        with pytest.raises(BitstreamError, match="payload"):
            codecs.decode(with_crc(bytes(body)))
    body[size_at] |= 0x80  # a longer varint: not the same header, parsed
    with pytest.raises(BitstreamError):
        codecs.decode(with_crc(bytes(body)))


def test_limits_apply_to_remembered_headers() -> None:
    data = codecs.get("tokenwise").encode(torch.randn(1, 1, 96))
    codecs.decode(data)
    for limits, what in ((DecodeLimits(max_elements=95), "elements"),
                         (DecodeLimits(max_ndim=2), "ndim"),
                         (DecodeLimits(max_bytes=len(data) - 1), "exceeds limit")):
        with pytest.raises(BitstreamError, match=what):
            codecs.decode(data, limits)


def test_compact_streams_remembered() -> None:
    codec = codecs.get("tokenwise", level=-2)
    x = torch.randn(1, 1, 64)
    data = codec.encode(x, compact=True)
    want = fresh_parse(lambda: codecs.decode(data))
    assert torch.equal(codecs.decode(data)[0], want[0])
    assert torch.equal(codecs.decode(data)[0], want[0])
    header = ct.read_header(data)[0]
    assert header.tensors[0].payload_bytes == len(data) - 9 and header.header_bytes == 5
    with pytest.raises(BitstreamError, match="elements"):
        codecs.decode(data, DecodeLimits(max_elements=63))


def test_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(1, 2 * compact_module.MAX_PARSED):
        codecs.decode(codecs.get("fp16").encode(torch.zeros(1, n)))
        assert len(compact_module.PARSED) <= compact_module.MAX_PARSED
        assert len(compact_module.PARSED_SIZES) <= compact_module.MAX_PARSED_SIZES
    monkeypatch.setattr(memo, "MAX_HEADERS", 3)
    codec = codecs.get("slicer")
    for n in range(1, 40):  # one header, payloads of many lengths
        x = torch.randn(1, 4, 6, 6) * (torch.rand(1, 4, 6, 6) < n / 40)
        data = codec.encode(x)
        with pytest.raises(BitstreamError):  # lengths that do not add up: refused, not kept
            codecs.decode(with_crc(data[:-4] + bytes(1 + n % 3)))
        assert same(codecs.decode(data), fresh_parse(lambda d=data: codecs.decode(d)))
        assert memo._LAST is not None and len(memo._LAST[4]) <= 3


def test_the_last_header_is_the_one_remembered() -> None:
    """A stream starting as the last one parsed, under the same limits object, reads as
    parsed; another limits object, or another head, is not taken from the memo."""
    a, b = STREAMS["slicer"](), STREAMS["rans"]()
    limits = DecodeLimits()
    for data in (a, b, a):
        want = fresh_parse(lambda d=data: ct.read_header(d, limits))
        compact_module.PARSED.clear()  # parsed again, so remembered last
        compact_module.PARSED_SIZES.clear()
        ct.read_header(data, limits)
        hit = memo.lookup(memoryview(data), len(data) - 4, limits)
        assert hit is not None and hit[0] == want[0] and hit[2] == want[2]
        got = ct.read_header(data, limits)
        assert got[0] == want[0] and got[2] == want[2] and got[1] is hit[1]
    assert memo.lookup(memoryview(a), len(a) - 4, DecodeLimits()) is None  # equal, not same
    assert memo.lookup(memoryview(b), len(b) - 4, limits) is None


# -- codec heads written before --------------------------------------------------------------
def test_codec_heads_are_fresh_and_per_parameters() -> None:
    ct._HEADS.clear()
    a = ct._codec_head(codecs.get("tokenwise", level=1), 1)
    a.append(0)  # a caller's bytearray: the cache keeps its own
    assert ct._codec_head(codecs.get("tokenwise", level=1), 1) == a[:-1]
    assert ct._codec_head(codecs.get("tokenwise", level=2), 1) != a[:-1]
    assert ct._codec_head(codecs.get("tokenwise", level=1), 2) != a[:-1]
    x = torch.randn(1, 1, 32)
    assert codecs.get("tokenwise", level=1).encode(x) == codecs.get("tokenwise", level=1).encode(x)


def test_compiled_quotients_round_as_numpy() -> None:
    """Ties (half-way quotients), signed zeros, steps that are not positive and finite."""
    from splitcomp.codecs.entropy import tables

    kern = tables.rows_kernels()
    if kern is None:
        pytest.skip("no compiled path")
    x = np.array([[-2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 3.5, 4096.5, 7.25, -7.75]],
                 np.float32)
    for step in (1.0, 0.5, 0.25, 3.0, 0.75):
        steps = np.array([step], np.float32)
        q = np.rint(x / steps[:, None]).astype(np.int64)
        want = encode_symbols(((q << 1) ^ (q >> 63)).reshape(-1))
        status, data = kern.encode_scaled(x, steps, 4 * x.size + (1 << 16),
                                          tables._log2_table(x.size + 1))
        assert status == 0 and data.tobytes() == want
    for step in (0.0, -1.0, np.inf, np.nan, 1e-45):
        status, _ = kern.encode_scaled(x * 1e30, np.array([step], np.float32), 1 << 16,
                                       tables._log2_table(x.size + 1))
        assert status != 0


@pytest.mark.parametrize("r", [1, 3])
def test_rows_of_subnormals_round_trip(r: int) -> None:
    """A row whose step rounds to 0 in float32 (subnormal values, a low level) used to be
    refused at encode time, or written with a step of 0 that no decoder takes."""
    x = np.full((r, 8), 1e-45, np.float32)
    x[:, 0] = 3e-45
    for level in (-64, -8, 0):
        codec = tw.TokenwiseCodec(level=level)
        for compiled in on_both_paths(lambda c=codec: c.encode_array(x)):
            assert isinstance(compiled, bytes), compiled
            out = codec.decode_array(memoryview(compiled), x.shape, DecodeLimits())
            assert np.all(np.abs(out - x) <= codec.error_bound(x))

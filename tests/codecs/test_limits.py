"""Decode limits against hostile streams: small streams claiming huge shapes, symbol counts and
decompressed sizes (``splitcomp.codecs.hostile``) are refused before anything is allocated, and
what a decoder accepts costs it what the claimed shape justifies, never more."""

from __future__ import annotations

import math
import struct
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits, context_scope
from splitcomp.codecs import _slicer_mask as mk
from splitcomp.codecs import _tokenwise_context as twc
from splitcomp.codecs.entropy import decode_symbol_indices, decode_symbols, encode_symbols
from splitcomp.codecs.hostile import MAX_BOMB_BYTES, bombs, stream, tokenwise_codes_bomb

pytestmark = pytest.mark.timeout(120)
NAMES = codecs.available()
#: a deployment's limits: what 8 samples of a (32, 16, 16) feature map hold
LIMITS = DecodeLimits(max_elements=8 * 32 * 16 * 16, max_tensors=1, max_ndim=4)
HUGE = [(1 << 15, 32, 16, 16), (1, 1 << 28), (1 << 28,), (1, 1, 1 << 14, 1 << 14)]


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes (numpy included) allocated while ``fn`` runs; what it raises propagates."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def decode_or_reject(data: bytes, limits: DecodeLimits) -> tuple[torch.Tensor, ...] | None:
    """A hostile stream decodes to tensors within the limits or raises BitstreamError."""
    try:
        out = codecs.decode(data, limits)
    except BitstreamError:
        return None
    assert sum(t.numel() for t in out) <= limits.max_elements
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_codec_has_small_bombs(name: str) -> None:
    kinds = bombs(name, (8, 32, 16, 16))
    assert {"relabeled", "short"} <= set(kinds)
    assert all(len(b) < MAX_BOMB_BYTES for b in kinds.values())
    for data in kinds.values():  # well-formed containers: the codec's own parser is reached
        assert codecs.peek(data).tensors[0].shape == (8, 32, 16, 16)


@pytest.mark.parametrize("shape", HUGE, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_huge_claims_are_refused_before_allocation(name: str, shape: tuple[int, ...]) -> None:
    for kind, data in bombs(name, shape).items():
        with pytest.raises(BitstreamError, match="exceeds limit"):
            codecs.decode(data, LIMITS)
        peak = traced_peak(lambda d=data: decode_or_reject(d, LIMITS))
        assert peak < 1 << 20, (kind, peak)


@pytest.mark.parametrize("name", NAMES)
def test_default_limits_refuse_more_than_two_to_the_28(name: str) -> None:
    for data in bombs(name, (1 << 16, 1 << 13)).values():
        peak = traced_peak(lambda d=data: decode_or_reject(d, codecs.DEFAULT_LIMITS))
        assert peak < 1 << 20


#: bytes an element a decoder may allocate at the peak (numpy's, as tracemalloc sees them):
#: the output and an int32 symbol each; slicer's mask contexts and plane geometry take more
PER_ELEMENT = {"slicer": 40}


@pytest.mark.parametrize("shape", [(32, 32, 16, 16), (1, 1 << 18), (1, 1, 512, 512)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_claims_within_limits_cost_what_the_shape_justifies(
        name: str, shape: tuple[int, ...]) -> None:
    """The largest shape the limits allow: a bomb decodes (all-zero tensors are cheap to
    send) or is refused, and allocates no more than a few bytes an element of the shape."""
    n = math.prod(shape)
    limits = DecodeLimits(max_elements=n)
    for kind, data in bombs(name, shape).items():
        out: list = []
        peak = traced_peak(lambda d=data, o=out: o.append(decode_or_reject(d, limits)))
        assert peak <= PER_ELEMENT.get(name, 12) * n + (1 << 18), (kind, peak / n)
        if out[0] is not None:
            assert out[0][0].shape == shape
        if kind == "zeros":  # valid for any shape: the whole claimed work is done
            assert out[0] is not None and not out[0][0].any()


@pytest.mark.parametrize("name", ["rans", "slicer", "tokenwise", "bottleneck"])
def test_zero_streams_are_tiny_whatever_the_shape(name: str) -> None:
    """Why a shape must be bounded by limits, not by the payload: an all-zero tensor's
    entropy-coded symbols cost no bits, so a few bytes validly claim any size."""
    for shape in [(1, 4), (1, 1 << 12), (1, 1 << 16)]:
        data = bombs(name, shape)["zeros"]
        assert len(data) < 64
        (x,) = codecs.decode(data, DecodeLimits(max_elements=1 << 16))
        assert x.shape == shape and not x.any()


def test_zstd_output_is_bounded_by_the_payload() -> None:
    n = 1 << 22  # 8 MB of fp16 declared by a 35-byte frame
    data = bombs("zstd", (1, n))["zstd_lying"]
    limits = DecodeLimits(max_elements=n)
    with pytest.raises(BitstreamError, match="cannot hold"):
        codecs.decode(data, limits)
    assert traced_peak(lambda: decode_or_reject(data, limits)) < 1 << 16
    # a real stream at zstd's best ratio (run blocks of zeros) still decodes
    x = torch.zeros(1, n)
    for level in (-7, 3, 22):
        assert torch.equal(codecs.decode(codecs.get("zstd", level=level).encode(x), limits)[0], x)


def test_blockwise8_does_not_expand_a_block_for_one_value() -> None:
    data = bombs("blockwise8", (1,))["wide_block"]  # block of 2**20 values, one sent
    (x,) = codecs.decode(data)
    assert x.shape == (1,)
    assert traced_peak(lambda: codecs.decode(data)) < 1 << 16


@pytest.mark.parametrize("shape", [(3, 5), (2, 128), (1, 1 << 20 | 3)])
def test_blockwise8_in_place_scaling_matches_the_reference(shape: tuple[int, ...]) -> None:
    c = codecs.get("blockwise8", block=64)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    payload = c.encode_array(x)
    y = c.decode_array(memoryview(payload), shape, codecs.DEFAULT_LIMITS)
    n_blocks = -(-x.size // 64)
    absmax = np.frombuffer(payload[: 4 * n_blocks], "<f4").astype(np.float32)
    q = np.frombuffer(payload[4 * n_blocks :], np.int8).astype(np.float32)
    ref = (q * np.repeat(absmax / 127.0, 64)[: x.size]).reshape(shape)  # the old decoder
    assert np.array_equal(y, ref)


def test_counts_in_a_payload_beyond_the_shape_are_refused_early() -> None:
    rans = codecs.get("rans")
    runs = bytes([1]) + struct.pack("<f", 1.0) + b"\x00" + bytes([65])  # 65 runs of 64
    with pytest.raises(BitstreamError, match="65 runs for 64 elements"):
        codecs.decode(stream(rans, (1, 64), runs))
    # a self-contained table claiming 2**20 symbols for a stream of 4
    table = bytes([0]) + bytes([0x80, 0x80, 0x40]) + b"\x00\x00" + bytes([2])
    bottleneck = codecs.get("bottleneck")
    data = stream(bottleneck, (1, 4), table)
    with pytest.raises(BitstreamError, match="alphabet of 1048576 symbols"):
        codecs.decode(data)
    assert traced_peak(lambda: decode_or_reject(data, LIMITS)) < 1 << 16


def test_symbol_indices_match_symbols() -> None:
    rng = np.random.default_rng(1)
    u = rng.geometric(0.3, 5000).astype(np.int64) * 3
    data = encode_symbols(u)
    alphabet, idx = decode_symbol_indices(data, u.size)
    assert idx.dtype == np.int32 and alphabet.size < 200
    assert np.array_equal(alphabet[idx], u) and np.array_equal(decode_symbols(data, u.size), u)


def test_large_slicer_planes_are_not_cached() -> None:
    """A stream claiming big planes must not leave index arrays in the geometry cache."""
    before = mk._cached_phases.cache_info().currsize
    x = torch.randn(1, 1, 300, 300)  # a plane of 90000 positions
    y = codecs.decode(codecs.get("slicer").encode(x))[0]
    assert y.shape == x.shape
    assert mk._cached_phases.cache_info().currsize == before
    small = mk.geometry((1, 2, 7, 9), 1)
    big = mk._build_phases(7, 9)
    for a, b in zip((small.phase_a, small.phase_b, small.neighbours, small.context_base), big,
                    strict=True):
        assert np.array_equal(a, b)


def test_slicer_geometry_matches_a_direct_construction() -> None:
    for h, w in [(1, 1), (1, 6), (5, 1), (4, 4), (7, 9), (16, 16)]:
        idx_a, idx_b, nbr, base = mk._build_phases(h, w)
        yy, xx = np.divmod(np.arange(h * w), w)
        assert np.array_equal(idx_a, np.flatnonzero((yy + xx) % 2 == 0))
        assert np.array_equal(idx_b, np.flatnonzero((yy + xx) % 2 == 1))
        rank = {int(p): i for i, p in enumerate(idx_a)}
        for k, p in enumerate(idx_b.tolist()):
            y, x = divmod(p, w)
            want = [rank[p - w] if y > 0 else idx_a.size, rank[p + w] if y < h - 1 else idx_a.size,
                    rank[p - 1] if x > 0 else idx_a.size, rank[p + 1] if x < w - 1 else idx_a.size]
            assert nbr[:, k].tolist() == want
            assert base[k] == 5 * sum(v != idx_a.size for v in want)


def test_a_stream_made_for_a_small_tensor_claiming_a_large_one() -> None:
    """A real stream relabeled to a larger shape: refused, or decoded to that shape."""
    for name in NAMES:
        small = codecs.get(name).encode(torch.rand(2, 4, 4, 4))
        payload = small[codecs.peek(small).header_bytes : -4]
        data = stream(codecs.get(name), (8, 32, 16, 16), bytes(payload))
        out = decode_or_reject(data, LIMITS)
        assert out is None or out[0].shape == (8, 32, 16, 16)


@pytest.mark.parametrize("spread", [True, False], ids=["many_codes", "one_code"])
def test_tokenwise_scale_codes_cannot_buy_table_work(spread: bool) -> None:
    """A 1 KB stream under a client's context (4096 channels, every table as wide as the
    format allows) whose rows name scale codes at random (each a 16 MB table set to build:
    ~10 s and ~800 MB before the bound) or one code again and again (each row reads 16 MB of
    tables): refused after the work its bytes pay for (one build, a few dozen reads)."""
    ctx_bytes, data = tokenwise_codes_bomb(4096, spread=spread)
    assert len(data) < MAX_BOMB_BYTES
    ctx = twc.TokenwiseContext.from_bytes(ctx_bytes)
    built: list[int] = []
    build = ctx._build_tables
    ctx._build_tables = lambda width: built.append(width) or build(width)  # type: ignore
    t0 = time.process_time()
    with context_scope({ctx.context_id: ctx}):
        peak = traced_peak(lambda: decode_or_reject(data, codecs.DEFAULT_LIMITS))
        with pytest.raises(BitstreamError, match="decoding work"):
            codecs.decode(data)
    assert len(built) == 1, built  # the second decode found its one table set cached
    assert peak < 96 << 20, peak
    assert time.process_time() - t0 < 3.0
    assert ctx._table_bytes <= twc.TABLE_CACHE_BYTES


def test_tokenwise_table_cache_is_bounded_in_bytes() -> None:
    ctx = twc.TokenwiseContext.from_bytes(tokenwise_codes_bomb(512)[0])
    for code in range(0, twc.CODE_MAX + 1, 4):
        ctx.tables_at(ctx.table_key(0, code))
        assert ctx._table_bytes <= twc.TABLE_CACHE_BYTES
        assert len(ctx._tables) <= twc.TABLE_CACHE
    assert ctx._table_bytes == sum(twc._nbytes(t) for t in ctx._tables.values())
    key = ctx.table_key(0, 7)
    assert ctx.cells_at(key) == sum(t.probs.size for t in ctx.tables_at(key))


_DIMS = st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), dims=_DIMS)
def test_hypothesis_any_claimed_shape_is_refused_or_bounded(name: str, dims: list[int]) -> None:
    limits = DecodeLimits(max_elements=1 << 14, max_tensors=1, max_ndim=4)
    n = math.prod(dims)
    for data in bombs(name, tuple(dims)).values():
        peak = traced_peak(lambda d=data: decode_or_reject(d, limits))
        assert peak <= 32 * min(n, limits.max_elements) + (1 << 20)

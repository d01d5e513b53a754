"""Trellis-coded quantization in the tokenwise codec (context flags bit 1): the context bytes,
the encoder's search (numpy reference and compiled kernel), the payload and its decoder."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp.codecs import BitstreamError, DecodeLimits, _slicer_jit
from splitcomp.codecs import _tokenwise_context as twc
from splitcomp.codecs import _tokenwise_trellis as tm
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.entropy import AnsReader, AnsWriter

from .jit_paths import jit_path
from .test_tokenwise import C, fuzz_decode, hidden, mutate
from .test_tokenwise_alloc import traces
from .test_tokenwise_predict import correlated
from .test_tokenwise_shaping import anisotropic_fisher

KINDS = ("plain", "predict", "shaped", "alloc")


@functools.cache
def trellis_context(kind: str) -> tw.TokenwiseContext:
    """A trellis context of one of :data:`KINDS` (one per process: tests only read it)."""
    x = correlated(800, seed=1)
    ctx = tw.calibrate(x, predict=kind != "plain", trellis=True,
                       fisher=anisotropic_fisher() if kind in ("shaped", "alloc") else None)
    if kind == "alloc":
        ctx.alloc = tw.fit_allocation(x, traces(x), ctx.token_codes(x))
        ctx.clear_tables()
    return ctx


@pytest.fixture(scope="module", params=KINDS)
def ctx(request) -> tw.TokenwiseContext:
    return trellis_context(request.param)


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def encoder_values(codec: tw.TokenwiseCodec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's own search over ``x``: its indices and decoded values (float64)."""
    ctx = codec.context
    codes, offsets, d = codec._steps(x)
    lvs = codec.params["level"] + (np.zeros(len(x), np.int64) if offsets is None else offsets)
    keys = [tw._key(ctx, int(lv), int(c)) for lv, c in zip(lvs, codes, strict=True)]
    uniq = list(dict.fromkeys(keys))
    tab = np.array([uniq.index(k) for k in keys])
    bits = [np.stack([-np.log2(ctx.tables_at(k)[i].probs) for k in uniq]) for i in (0, 1)]
    k, xh = tm.search((x - ctx.mu).astype(np.float64), d, ctx.pred, ctx.shaping, *bits, tab)
    return k, ctx.mu + xh


def test_context_bytes_round_trip(ctx: tw.TokenwiseContext) -> None:
    data = ctx.to_bytes()
    assert data[4] == twc.VERSION_ALLOC and data[5] == 2 | int(ctx.pred is not None)
    assert data[6] == (0 if ctx.alloc is None else ctx.alloc.max_offset)
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.trellis and again.to_bytes() == data and again.context_id == ctx.context_id
    off = tw.TokenwiseContext.from_bytes(data)
    off.trellis = False  # without the flag: the bytes of before, unchanged
    old = off.to_bytes()
    if ctx.alloc is None:
        assert old[4] == (twc.VERSION if ctx.pred is None else twc.VERSION_PREDICT)
        assert old[5:-4] == data[7:-4]
    else:
        assert old[:-4] == data[:5] + bytes([data[5] & 1]) + data[6:-4]


def test_flags_are_checked() -> None:
    ctx = trellis_context("plain")
    body = bytearray(ctx.to_bytes()[:-4])
    for flags, bound, ok in ((2, 0, True), (0, 0, False), (1, 0, False), (6, 0, False),
                             (4, 1, False)):
        body[5], body[6] = flags, bound
        if ok:
            assert tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body))).trellis
        else:
            with pytest.raises(BitstreamError):
                tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body)))


def test_quantizers_follow_the_state_machine() -> None:
    k = np.random.default_rng(0).integers(-40, 40, (5, 37))
    h = tm.quantizers(k)
    for row, hrow in zip(k, h, strict=True):
        s = 0
        for kj, hj in zip(row, hrow, strict=True):
            assert hj == tm.QUANT[s]
            s = tm.NEXT[s, kj & 1]


def test_table_cells_partition_the_line() -> None:
    e0, e1 = tm.cells()
    assert np.all(np.diff(e0) > 0) and np.all(np.diff(e1) > 0)
    k = np.arange(-tm.KT, tm.KT + 1)
    for q, e in ((0, e0), (1, e1)):  # each point inside its own cell
        pts = tm.points(np.full(k.size, q), k)
        assert np.all((e[:-1] <= pts) & (pts < e[1:]))
    p0, p1 = tm.build_tables(np.sort(np.random.default_rng(1).laplace(size=(3, twc.P_GRID.size))),
                             twc.P_GRID, 0.7)
    assert p0.shape == p1.shape == (3, tm.N_SYM)
    np.testing.assert_allclose(p0.sum(1), 1.0)
    np.testing.assert_allclose(p1[:, -2], p1[:, -1])  # the escapes share the tail's mass


@pytest.mark.parametrize("level", [0, 8])
def test_decoder_gives_the_encoders_values(ctx: tw.TokenwiseContext, level: int) -> None:
    x = correlated(30, seed=2, sink=True)
    codec = tw.TokenwiseCodec.with_context(ctx, level=level)
    streams = {}
    for compiled in (False, True):
        with jit_path(compiled):
            k, want = encoder_values(codec, x)
            streams[compiled] = codec.encode_array(x)
            got = codec.decode_array(memoryview(streams[compiled]), x.shape, DecodeLimits())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(x).max()))
        assert np.abs(got - x).max() <= codec.error_bound(x)
    assert streams[False] == streams[True]  # the same symbols, the same rANS words


def test_numpy_and_compiled_searches_agree(ctx: tw.TokenwiseContext) -> None:
    if not _slicer_jit.active():
        pytest.skip("numba is not installed: the numpy path is the only one")
    x = correlated(60, seed=4, sink=True)
    codec = tw.TokenwiseCodec.with_context(ctx, level=4)
    out = {}
    for compiled in (False, True):
        with jit_path(compiled):
            out[compiled] = encoder_values(codec, x)
    assert np.array_equal(out[False][0], out[True][0])
    np.testing.assert_allclose(out[False][1], out[True][1], rtol=1e-9, atol=1e-9)


def test_trellis_beats_scalar_on_error_at_its_rate() -> None:
    """The search's point: fewer bytes and less squared error than scalar coding."""
    x = correlated(200, seed=5)
    plain = tw.calibrate(correlated(800, seed=1), predict=True)
    ctx = trellis_context("predict")
    res = {}
    for name, c, lv in (("scalar", plain, 4), ("trellis", ctx, 8)):
        codec = tw.TokenwiseCodec.with_context(c, level=lv)
        payload = codec.encode_array(x)
        y = codec.decode_array(memoryview(payload), x.shape, DecodeLimits())
        res[name] = len(payload), float(((y - x) ** 2).mean())
    assert res["trellis"][0] < res["scalar"][0]  # fewer bytes and less error (measured:
    assert res["trellis"][1] < res["scalar"][1]  # 1.33 bits 1.69 against 1.38 bits 1.76)


def test_escapes_round_trip() -> None:
    ctx = trellis_context("predict")
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    x = correlated(4, seed=6, sink=True)
    x[1, 7], x[2, 9], x[3, 3] = 5000.0, -4321.0, 777.0
    k, want = encoder_values(codec, x)
    assert (np.abs(k) > tm.KT).sum() >= 4 and np.any(k[np.abs(k) > tm.KT] % 2 == 0) \
        and np.any(k[np.abs(k) > tm.KT] % 2 == 1)
    for compiled in (False, True):
        with jit_path(compiled):
            payload = codec.encode_array(x)
            got = codec.decode_array(memoryview(payload), x.shape, DecodeLimits())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-2)
        assert np.abs(got - x).max() <= codec.error_bound(x)
        # the rANS words end the payload, their last zero bytes dropped: a stream that ends in
        # 0 is not one the encoder writes, and one cut short runs out of escaped values
        assert payload[-1] != 0
        for bad in (payload + b"\0", payload + b"\1", payload[:-1]):
            with jit_path(compiled), pytest.raises(BitstreamError):
                codec.decode_array(memoryview(bad), x.shape, DecodeLimits())


def test_reader_follows_the_state_through_escapes() -> None:
    """:meth:`AnsReader.read_rows_trellis` (compiled and constriction) picks each symbol's
    table by the state the earlier symbols' parities reached."""
    rng = np.random.default_rng(7)
    p0, p1 = rng.random((2, 50, tm.N_SYM)) + 0.01
    sym = rng.integers(0, tm.N_SYM, 50)
    sym[:6] = [2 * tm.KT + 1, 2 * tm.KT + 2, 0, 2 * tm.KT + 2, 5, 2 * tm.KT + 1]
    k = np.where(sym <= 2 * tm.KT, sym - tm.KT, 100 + (sym - 2 * tm.KT - 1))  # 100 even
    h = tm.quantizers(k[None])[0]
    for compiled in (False, True):
        with jit_path(compiled):
            w = AnsWriter()
            w.add_rows(sym.astype(np.int32), tm.row_model(p0, p1, h))
            got = AnsReader(w.finish()).read_rows_trellis(p0, p1, tm.KT)
        assert np.array_equal(got, sym)


def test_stream_work_counts_the_table_pairs(ctx: tw.TokenwiseContext) -> None:
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    x = correlated(3, seed=8)
    codes, offsets, _ = codec._steps(x)
    key = tw._key(ctx, int(0 if offsets is None else offsets[0]), int(codes[0]))
    assert key[0] == "tcq" and ctx.cells_at(key) == 2 * C * tm.N_SYM
    work = tw.stream_work(ctx, 0, codes, offsets)
    assert work >= tw.BUILD_CELL * 2 * C * tm.N_SYM
    assert work <= tw.work_budget(len(codec.encode_array(x)))


@pytest.mark.parametrize("compiled", [False, True])
def test_corrupt_payloads_are_typed_errors(compiled: bool) -> None:
    """Every truncation and a few bit flips of a payload: BitstreamError or finite values."""
    ctx = trellis_context("predict")
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    x = correlated(2, seed=9, sink=True)
    x[1, 5] = 3000.0  # an escape tail too
    with jit_path(compiled):
        payload = codec.encode_array(x)
        bad = [payload[:cut] for cut in range(len(payload))]
        rng = np.random.default_rng(10)
        for _ in range(40):
            b = bytearray(payload)
            for pos in rng.integers(0, len(b), rng.integers(1, 4)):
                b[pos] ^= 1 << int(rng.integers(8))
            bad.append(bytes(b))
        for b in bad:
            try:
                y = codec.decode_array(memoryview(b), x.shape, DecodeLimits())
            except BitstreamError:
                continue
            assert np.all(np.isfinite(y))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_streams(data: st.DataObject) -> None:
    ctx = trellis_context("shaped")
    codec = tw.TokenwiseCodec.with_context(ctx, level=data.draw(st.integers(-4, 8)))
    rows = data.draw(st.integers(1, 3))
    fuzz_decode(codec.encode(torch.from_numpy(correlated(rows, seed=11, sink=True))), data)


def test_trellis_bytes_are_pinned() -> None:
    """A trellis context and stream, pinned: the format cannot drift silently."""
    ctx = tw.calibrate(hidden(600, seed=1), trellis=True)
    data = ctx.to_bytes()
    plain = tw.calibrate(hidden(600, seed=1)).to_bytes()
    assert data[:4] + data[7:-4] == plain[:4] + plain[5:-4]  # version 3, flags 2, A 0
    assert data[4:7] == bytes([3, 2, 0])
    stream = tw.TokenwiseCodec.with_context(ctx).encode(
        torch.from_numpy(hidden(3, seed=12, sink=True)))
    # 160 bytes before the escaped values moved into the rANS stack (2026-11-29)
    assert (ctx.context_id, len(data), len(stream)) == (519884, 5601, 154)
    assert hashlib.sha256(stream).hexdigest()[:16] == "e3325d1809751844"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_hostile_predictor_is_refused(compiled: bool) -> None:
    """Huge coefficients: the encoder refuses (ValueError) or writes a stream that its decoder
    refuses, typed, or decodes to finite values; an honest stream decoded with them overflows
    the reconstruction: refused, typed."""
    ctx = trellis_context("predict")
    data = bytearray(ctx.to_bytes()[:-4])
    tri = C * (C - 1)
    data[-tri:] = np.full(tri // 2, 60000.0, "<f2").tobytes()
    hostile = tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(data)))
    assert hostile.trellis
    x = correlated(2, seed=12)
    with jit_path(compiled):
        bad = tw.TokenwiseCodec.with_context(hostile, level=0)
        try:
            y = bad.decode_array(memoryview(bad.encode_array(x)), x.shape, DecodeLimits())
            assert np.all(np.isfinite(y))
        except (ValueError, BitstreamError) as e:
            assert isinstance(e, BitstreamError) or "too large" in str(e)
        payload = tw.TokenwiseCodec.with_context(ctx, level=0).encode_array(x)
        with pytest.raises(BitstreamError, match="not finite"):
            tw.TokenwiseCodec.with_context(hostile, level=0).decode_array(
                memoryview(payload), x.shape, DecodeLimits())


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_context_bytes(data: st.DataObject) -> None:
    """Corrupt trellis contexts (valid CRC) parse to one that codes and decodes (or whose
    encoder refuses the values), or raise BitstreamError."""
    body = mutate(trellis_context("alloc").to_bytes()[:-4], data, 4, cut=False)
    try:
        parsed = tw.TokenwiseContext.from_bytes(_refresh_crc(body))
    except BitstreamError:
        return
    x = correlated(2, seed=13, sink=True)[:, : parsed.channels]
    codec = tw.TokenwiseCodec.with_context(parsed, level=0)
    try:
        payload = codec.encode_array(x)
    except ValueError:
        return  # the encoder refuses what this context cannot code
    try:
        y = codec.decode_array(memoryview(payload), x.shape, DecodeLimits())
    except BitstreamError:
        return
    assert np.all(np.isfinite(y))

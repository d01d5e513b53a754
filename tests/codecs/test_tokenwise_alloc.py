"""Per-token step allocation in the tokenwise codec: a context version 3 carrying the offset model
and the encoder's regression, one offset symbol per row, rows at ``level + o``; old contexts and
their streams unchanged."""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError
from splitcomp.codecs import _tokenwise_alloc as alloc_mod
from splitcomp.codecs import _tokenwise_context as twc
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.errors import DecodeLimits

from .jit_paths import jit_path
from .test_tokenwise import C, fuzz_decode, hidden, mutate
from .test_tokenwise_predict import correlated
from .test_tokenwise_shaping import anisotropic_fisher


def traces(x: np.ndarray) -> np.ndarray:
    """A made-up log Fisher trace that a token's own values predict (as an LLM's do, R^2 ~0.4):
    tokens large in channel 3 matter less."""
    rng = np.random.default_rng(2)
    return -0.8 * np.abs(x[:, 3]) + 0.3 * x[:, 5] + rng.normal(0.0, 0.5, len(x))


def allocated(predict: bool = True, fisher: bool = False, **kw) -> tw.TokenwiseContext:
    x = correlated(800, seed=1)
    ctx = tw.calibrate(x, predict=predict, fisher=anisotropic_fisher() if fisher else None)
    ctx.alloc = tw.fit_allocation(x, traces(x), ctx.token_codes(x), **kw)
    ctx.clear_tables()
    return ctx


@pytest.fixture(scope="module", params=[True, False], ids=["predict", "plain"])
def ctx(request) -> tw.TokenwiseContext:
    return allocated(request.param)


def test_context_bytes_round_trip(ctx) -> None:
    data = ctx.to_bytes()
    assert data[4] == twc.VERSION_ALLOC and data[5] == int(ctx.pred is not None)
    assert data[6] == ctx.alloc.max_offset == alloc_mod.MAX_OFFSET
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.to_bytes() == data and again.context_id == ctx.context_id
    assert np.array_equal(again.alloc.counts, ctx.alloc.counts)
    assert np.array_equal(again.alloc.weights, ctx.alloc.weights)
    plain = tw.TokenwiseContext.from_bytes(data)
    plain.alloc = None  # without it: the version 1 or 2 bytes of before, unchanged
    assert plain.to_bytes()[4] in (twc.VERSION, twc.VERSION_PREDICT)
    assert len(data) - len(plain.to_bytes()) == 2 + alloc_mod.Allocation.tail_size(C, 6)


def test_offsets_follow_the_predicted_trace(ctx) -> None:
    x = correlated(400, seed=9)
    o = ctx.alloc.offsets(x, ctx.token_codes(x))
    assert o.min() >= -6 and o.max() <= 6 and len(np.unique(o)) >= 5
    # a token that matters less (lower trace) gets a coarser step (a larger level)
    assert np.corrcoef(o, -traces(x))[0, 1] > 0.5
    sink = x[:1] * 0 + 60.0  # a far scale code keeps offset 0
    assert ctx.alloc.offsets(sink, ctx.token_codes(sink))[0] == 0


def test_each_row_is_coded_at_its_own_level(ctx) -> None:
    """A stream's rows decode as if each had been coded alone at ``level + o`` by the same
    context without allocation (same steps, same symbols), so within that level's bound."""
    x = correlated(40, seed=4, sink=True)
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    out = codec.decode_array(memoryview(codec.encode_array(x)), x.shape, DecodeLimits())
    offsets = ctx.alloc.offsets(x, ctx.token_codes(x))
    d = ctx.steps(ctx.row_steps(0, offsets), ctx.token_codes(x))
    assert np.all(np.abs(out - x) <= d * 0.5 * (1 + 1e-5) + 1e-6)
    assert float(np.abs(out - x).max()) <= codec.error_bound(x)
    ratio = d[:, 0] / ctx.steps(1.0, ctx.token_codes(x))[:, 0]
    np.testing.assert_allclose(ratio, np.exp2(offsets / 8.0), rtol=1e-6)


def test_per_token_streams_decode_from_the_wire_context(ctx) -> None:
    """A server holds only the wire bytes; every per-token stream decodes there, alike."""
    server_ctx = tw.TokenwiseContext.from_bytes(ctx.to_bytes())
    enc = tw.TokenwiseCodec.with_context(ctx, level=2)
    x = correlated(60, seed=5)
    with codecs.context_scope({ctx.context_id: server_ctx}):
        for row in x:
            data = enc.encode(torch.from_numpy(row[None, None]), compact=True)
            (got,) = codecs.decode(data)
            assert float((got[0, 0].numpy() - row).__abs__().max()) <= enc.error_bound(row[None])


def test_allocation_spends_bits_where_the_trace_is_high() -> None:
    """With fewer bits, less trace-weighted squared error (what KL measures)."""
    x = correlated(800, seed=1)
    plain = tw.calibrate(x, predict=True)
    alloc = allocated(True, gain=1.0)
    held = correlated(300, seed=8)
    weight = np.exp(traces(held))

    def cost(c: tw.TokenwiseContext, level: int) -> tuple[float, float]:
        codec = tw.TokenwiseCodec.with_context(c, level=level)
        nbytes, err = 0, 0.0
        for row, wt in zip(held, weight, strict=True):
            data = codec.encode_array(row[None])
            nbytes += len(data)
            out = codec.decode_array(memoryview(data), (1, C), DecodeLimits())
            err += wt * float(((out[0] - row) ** 2).sum())
        return 8 * nbytes / held.size, err / len(held)

    b1, e1 = cost(alloc, 0)
    b0, e0 = cost(plain, -2)  # finer: more bits than with allocation
    assert b0 > b1 and e1 < 0.5 * e0, (b0, e0, b1, e1)


def test_rows_that_give_the_same_step_share_tables(ctx) -> None:
    """With allocation, tables follow ``level + o`` against the scale code (alpha 0): the
    key is one integer, so a level one up and a code one up name one table set."""
    assert ctx.table_key(3, 70) == ctx.table_key(4, 71)
    assert ctx.table_key(3, 70) != ctx.table_key(3, 71)
    assert ctx.tables_at(ctx.table_key(3, 70)) is ctx.tables_at(ctx.table_key(4, 71))


def test_compiled_and_numpy_paths_write_the_same_bytes() -> None:
    shaped = allocated(True, fisher=True)
    x = correlated(25, seed=6, sink=True)
    codec = tw.TokenwiseCodec.with_context(shaped, level=-2)
    got = {}
    for compiled in (True, False):
        with jit_path(compiled):
            got[compiled] = [codec.encode_array(x), codec.encode_array(x[3:4])]
    assert got[True] == got[False]


def test_work_budget_counts_table_sets_at_both_ends(ctx, monkeypatch) -> None:
    codec = tw.TokenwiseCodec.with_context(ctx, level=-8)
    x = correlated(40, seed=5, sink=True)
    x *= np.exp2(np.linspace(-3, 3, 40, dtype=np.float32))[:, None]
    data = codec.encode(torch.from_numpy(x))
    payload = codecs.peek(data).tensors[0].payload_bytes
    codes = ctx.token_codes(x)
    work = tw.stream_work(ctx, -8, codes, ctx.alloc.offsets(x, codes))
    monkeypatch.setattr(tw, "FREE_WORK", work - tw.WORK_PER_BYTE * payload)
    assert codecs.decode(data)[0].shape == x.shape
    monkeypatch.setattr(tw, "FREE_WORK", work - tw.WORK_PER_BYTE * payload - 1)
    with pytest.raises(BitstreamError, match="decoding work"):
        codecs.decode(data)
    with pytest.raises(ValueError, match="fewer rows per stream"):
        codec.encode(torch.from_numpy(x))


def test_context_files_carry_allocation_and_shaping(tmp_path) -> None:
    shaped = allocated(True, fisher=True)
    path = tw.save_context(shaped, tmp_path)
    back = tw.TokenwiseContext.from_file_bytes(path.read_bytes())
    assert back.alloc is not None and back.shaping is not None
    assert back.to_bytes() == shaped.to_bytes()


def test_fit_allocation_refuses_mistakes() -> None:
    x = correlated(100)
    codes = np.full(len(x), 64)
    with pytest.raises(ValueError, match="max_offset"):
        tw.fit_allocation(x, traces(x), codes, max_offset=17)
    with pytest.raises(ValueError, match="two typical rows"):
        tw.fit_allocation(x, np.full(len(x), np.nan), codes)


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("pos,value", [(5, 4), (6, 0), (6, 17)], ids=["flags", "A=0", "A=17"])
def test_bad_header_fields_are_refused(ctx, pos, value) -> None:
    body = bytearray(ctx.to_bytes()[:-4])
    body[pos] = value
    with pytest.raises(BitstreamError):
        tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body)))


def test_non_finite_weights_are_refused(ctx) -> None:
    body = bytearray(ctx.to_bytes()[:-4])
    body[-4:] = struct.pack("<f", float("nan"))
    with pytest.raises(BitstreamError, match="not finite"):
        tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body)))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_allocated_payloads(ctx, data) -> None:
    codec = tw.TokenwiseCodec.with_context(ctx, level=data.draw(st.integers(-8, 8)))
    rows = data.draw(st.integers(1, 3))
    fuzz_decode(codec.encode(torch.from_numpy(correlated(rows, seed=11, sink=True))), data)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_allocated_context_bytes(ctx, data) -> None:
    """Corrupt version 3 bytes with a valid CRC parse to a context that codes and decodes,
    or raise BitstreamError."""
    body = mutate(ctx.to_bytes()[:-4], data, 4, cut=False)
    try:
        parsed = tw.TokenwiseContext.from_bytes(_refresh_crc(body))
    except BitstreamError:
        return
    x = correlated(2, seed=3)
    codec = tw.TokenwiseCodec.with_context(parsed, level=0)
    try:
        data_ = codec.encode_array(x)
    except ValueError:  # a context whose encoder refuses these rows: the documented error
        return
    out = codec.decode_array(memoryview(data_), x.shape, DecodeLimits())
    assert np.all(np.isfinite(out))


def test_version_3_bytes_are_pinned() -> None:
    """A version 3 context (allocation weights set by hand, not fitted: no solver in the
    figure) and a stream under it: the format, byte for byte."""
    ctx = tw.calibrate(hidden(600, seed=1))
    weights = np.zeros(2 * C + 1, np.float32)
    weights[C + 2], weights[-1] = 1.5, -2.0  # o = round(1.5 |x_2| - 2)
    ctx.alloc = tw.Allocation(np.arange(1, 14, dtype=np.int64) * 7, weights, 64)
    data = ctx.to_bytes()
    assert hashlib.sha256(data).hexdigest()[:16] == "d4df8d23afbc3850"
    x = hidden(3, seed=12, sink=True)
    assert ctx.alloc.offsets(x, ctx.token_codes(x)).tolist() == [0, -1, 2]  # the sink keeps 0
    stream = tw.TokenwiseCodec.with_context(ctx).encode(torch.from_numpy(x))
    assert hashlib.sha256(stream).hexdigest()[:16] == "6b26c4d80729a50d"  # escapes in rANS

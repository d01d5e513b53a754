"""The tokenwise codec in context mode (the registry-wide tests cover its self-contained mode)."""

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
from splitcomp.codecs import BitstreamError, DecodeLimits, context_scope
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.container import encode_params

from .jit_paths import jit_path
from .registries import unregistered

C = 64
OUTLIERS = (5, 40)


def hidden(n: int, seed: int = 0, sink: bool = False) -> np.ndarray:
    """LLM-like hidden states (n, C): Laplacian channels of varied scale, two outlier channels
    with large offsets and spread; optionally a first "attention sink" row."""
    rng = np.random.default_rng(seed)
    scales = np.exp(np.linspace(-0.5, 0.8, C))
    x = rng.laplace(0.0, 1.0, (n, C)) * scales
    x[:, OUTLIERS[0]] = 40.0 + 8.0 * rng.standard_normal(n)
    x[:, OUTLIERS[1]] = -25.0 + 5.0 * rng.standard_normal(n)
    if sink:
        x[0] = rng.standard_normal(C) * 30.0
        x[0, OUTLIERS[0]] = 3000.0
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ctx() -> tw.TokenwiseContext:
    return tw.calibrate(hidden(600, seed=1))


@pytest.fixture(scope="module")
def codec(ctx: tw.TokenwiseContext) -> tw.TokenwiseCodec:
    return tw.TokenwiseCodec.with_context(ctx, level=0)


def test_context_bytes_round_trip(ctx: tw.TokenwiseContext) -> None:
    data = ctx.to_bytes()
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.to_bytes() == data
    assert again.context_id == ctx.context_id == tw.context_id(data)
    assert 0 < ctx.context_id < 1 << 20
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(BitstreamError, match="CRC"):
        tw.TokenwiseContext.from_bytes(bytes(bad))
    for cut in (0, 3, 10, len(data) - 1):
        with pytest.raises(BitstreamError):
            tw.TokenwiseContext.from_bytes(data[:cut])


def test_per_token_round_trip_within_bound(codec: tw.TokenwiseCodec) -> None:
    x = hidden(50, seed=2, sink=True)
    for t in range(x.shape[0]):
        tok = torch.from_numpy(x[t]).reshape(1, 1, C)
        (y,) = codecs.decode(codec.encode(tok))
        assert y.shape == tok.shape
        err = (y - tok).abs().max().item()
        assert err <= codec.error_bound(tok.numpy()) + 1e-6


def test_outlier_channels_and_sink_preserved(codec: tw.TokenwiseCodec,
                                             ctx: tw.TokenwiseContext) -> None:
    x = hidden(20, seed=3, sink=True)
    (y,) = codecs.decode(codec.encode(torch.from_numpy(x)))
    y = y.numpy()
    step = float(ctx.steps(codec.step, ctx.token_codes(x)).max())
    for j in OUTLIERS:  # large offsets and spread: kept to half a step, like every channel
        assert np.abs(y[:, j] - x[:, j]).max() <= 0.5 * step * 1.001
    assert abs(y[0, OUTLIERS[0]] - 3000.0) <= 0.5 * step * 1.001  # an escape, not clipped
    rel = np.linalg.norm(y - x) / np.linalg.norm(x)
    assert rel < 0.05


def test_rows_are_coded_alike_in_one_stream(codec: tw.TokenwiseCodec) -> None:
    x = hidden(12, seed=4, sink=True)
    whole = codecs.decode(codec.encode(torch.from_numpy(x).reshape(1, 12, C)))[0][0]
    one_by_one = torch.cat([codecs.decode(codec.encode(torch.from_numpy(x[t : t + 1])))[0]
                            for t in range(12)])
    assert torch.equal(whole, one_by_one)


def test_header_is_small(codec: tw.TokenwiseCodec) -> None:
    tok = torch.from_numpy(hidden(3, seed=5)[1]).reshape(1, 1, C)
    data = codec.encode(tok)
    head = codecs.peek(data)
    assert head.params == {"context": codec.params["context"], "level": 0}
    overhead = head.total_bytes - head.tensors[0].payload_bytes
    assert overhead <= 20  # magic, version, id, 4 bytes of params, shape, length, CRC
    assert head.tensors[0].payload_bytes < C  # under 8 bits an element, all included


def test_levels_trade_rate(ctx: tw.TokenwiseContext) -> None:
    x = torch.from_numpy(hidden(40, seed=6))
    sizes = [len(tw.TokenwiseCodec.with_context(ctx, level=lv).encode(x)) for lv in (16, 0, -16)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_unknown_context_is_a_typed_error(codec: tw.TokenwiseCodec) -> None:
    data = codec.encode(torch.from_numpy(hidden(2, seed=7)))
    cid = codec.params["context"]
    with unregistered(tw.CONTEXTS, cid):
        with pytest.raises(BitstreamError, match="not registered"):
            codecs.decode(data)
        with pytest.raises(ValueError):
            codecs.get("tokenwise", context=cid)


def test_context_mismatch_is_a_typed_error(codec: tw.TokenwiseCodec) -> None:
    other = tw.calibrate(hidden(300, seed=8)[:, :32])
    other_codec = tw.TokenwiseCodec.with_context(other)
    with pytest.raises(ValueError, match="last dim"):
        other_codec.encode(torch.from_numpy(hidden(2, seed=9)))
    # a 64-channel stream made to name the 32-channel context (CRC recomputed)
    data = codec.encode(torch.from_numpy(hidden(2, seed=9)))
    old = encode_params(codec.params_spec, codec.params)
    new = encode_params(other_codec.params_spec, other_codec.params)
    assert data[4 : 4 + len(old)] == old
    body = data[:4] + new + data[4 + len(old) : -4]
    with pytest.raises(BitstreamError, match="channels"):
        codecs.decode(_refresh_crc(body))


def test_non_finite_input_refused(codec: tw.TokenwiseCodec) -> None:
    x = hidden(2, seed=10)
    x[1, 3] = np.nan
    with pytest.raises(ValueError):
        codec.encode(torch.from_numpy(x))


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_context_payloads(codec: tw.TokenwiseCodec, data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 3))
    fuzz_decode(codec.encode(torch.from_numpy(hidden(rows, seed=11, sink=True))), data)


def mutate(body: bytes, data: st.DataObject, first: int, changes: int = 4,
           cut: bool = True) -> bytes:
    """``body`` with 1 .. ``changes`` of its bytes from ``first`` on set to drawn values, then
    (with ``cut``) maybe truncated: what the fuzz tests hand the parsers."""
    out = bytearray(body)
    for _ in range(data.draw(st.integers(1, changes))):
        pos = data.draw(st.integers(first, len(out) - 1))
        out[pos] = data.draw(st.integers(0, 255))
    if cut and data.draw(st.booleans()):
        out = out[: data.draw(st.integers(0, len(out)))]
    return bytes(out)


def fuzz_decode(clean: bytes, data: st.DataObject) -> None:
    """A few bytes of ``clean``'s body changed (and maybe cut), the CRC made valid again: the
    stream decodes to finite values or raises BitstreamError."""
    body = mutate(clean[:-4], data, 10)
    limits = DecodeLimits(max_elements=1 << 16, max_tensors=4, max_bytes=1 << 20)
    try:
        out = codecs.decode(_refresh_crc(body), limits=limits)
    except BitstreamError:
        return
    assert all(torch.isfinite(t).all() for t in out)


def test_context_mode_bytes_are_pinned() -> None:
    """The golden file covers the self-contained mode; this pins a context and a stream."""
    ctx = tw.calibrate(hidden(600, seed=1))
    data = ctx.to_bytes()
    assert (ctx.context_id, len(data)) == (135163, 5599)
    assert hashlib.sha256(data).hexdigest().startswith("fb0f7269d8c240fb")
    stream = tw.TokenwiseCodec.with_context(ctx).encode(
        torch.from_numpy(hidden(3, seed=12, sink=True)))
    assert len(stream) == 135  # 143 before escapes moved into the rANS stack (2026-11-29)
    assert hashlib.sha256(stream).hexdigest().startswith("8e22ec8834658c12")


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_context_bytes(ctx: tw.TokenwiseContext, data: st.DataObject) -> None:
    """Context bytes come from clients (LLM OPEN): corrupt ones, with a valid CRC, parse to a
    context that codes and decodes, or raise BitstreamError."""
    body = bytearray(ctx.to_bytes()[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(4, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    try:
        parsed = tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body)))
    except BitstreamError:
        return
    x = np.zeros((1, parsed.channels), np.float32)
    cid = parsed.context_id
    with context_scope({cid: parsed}):  # not registered: the process registry stays as it is
        stream = tw.TokenwiseCodec(context=cid).encode(torch.from_numpy(x))
        assert codecs.decode(stream)[0].shape == (1, parsed.channels)


def test_work_budget_is_the_same_at_both_ends(ctx: tw.TokenwiseContext,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder refuses a stream whose decoding work passes the budget of its bytes, and
    the decoder refuses it with the same figure: a stream one encoder writes always decodes."""
    codec = tw.TokenwiseCodec.with_context(ctx, level=-8)
    x = hidden(40, seed=5, sink=True)
    x *= np.exp2(np.linspace(-3, 3, 40, dtype=np.float32))[:, None]  # 30 scale codes
    data = codec.encode(torch.from_numpy(x))
    payload = codecs.peek(data).tensors[0].payload_bytes
    work = tw.stream_work(ctx, codec.params["level"], ctx.token_codes(x))
    assert len(np.unique(ctx.token_codes(x))) >= 30
    monkeypatch.setattr(tw, "FREE_WORK", work - tw.WORK_PER_BYTE * payload)
    assert codecs.decode(data)[0].shape == x.shape
    assert codec.encode(torch.from_numpy(x)) == data
    monkeypatch.setattr(tw, "FREE_WORK", work - tw.WORK_PER_BYTE * payload - 1)
    with pytest.raises(BitstreamError, match="decoding work"):
        codecs.decode(data)
    with pytest.raises(ValueError, match="fewer rows per stream"):
        codec.encode(torch.from_numpy(x))


@pytest.mark.parametrize("rows", [1, 2])
def test_self_contained_overflow_saturates(rows: int) -> None:
    """A hostile step times a large symbol overflows float32: the decoder returns float32's
    largest, never inf (as it does for a real value rounded up past it)."""
    x = np.zeros((rows, 8), np.float32)
    x[:, 0], x[:, 1] = 1.0, 1000.0
    data = bytearray(tw.TokenwiseCodec(level=-64).encode(torch.from_numpy(x)))
    head = codecs.peek(bytes(data)).header_bytes
    for row in range(rows):
        data[head + 4 * row : head + 4 * row + 4] = struct.pack("<f", 3e38)
    for compiled in (True, False):
        with jit_path(compiled):
            (out,) = codecs.decode(_refresh_crc(bytes(data[:-4])))
        assert torch.isfinite(out).all() and out[:, :2].eq(np.finfo(np.float32).max).all()
    top = np.full((1, 1), np.finfo(np.float32).max, np.float32)  # a real value, rounded up
    (out,) = codecs.decode(tw.TokenwiseCodec(level=-5).encode(torch.from_numpy(top)))
    assert out.item() == top.item()

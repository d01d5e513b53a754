"""The tokenwise codec with a predictor across channels (context version 2)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, _slicer_jit, context_scope
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs._tokenwise_context import PREDICT_MAX_CHANNELS, VERSION_PREDICT
from splitcomp.codecs._tokenwise_predict import fit_predictor, quantize_closed_loop

from .test_tokenwise import C, fuzz_decode, hidden, mutate


def correlated(n: int, seed: int = 0, sink: bool = False) -> np.ndarray:
    """Hidden-state-like rows whose channels share a few latent factors (as an LLM's do)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((6, C)) * 1.5
    x = hidden(n, seed, sink) + (rng.laplace(0.0, 1.0, (n, 6)) @ mix).astype(np.float32)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ctx() -> tw.TokenwiseContext:
    return tw.calibrate(correlated(800, seed=1), predict=True)


@pytest.fixture(scope="module")
def codec(ctx: tw.TokenwiseContext) -> tw.TokenwiseCodec:
    return tw.TokenwiseCodec.with_context(ctx, level=0)


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_context_bytes_round_trip(ctx: tw.TokenwiseContext) -> None:
    data = ctx.to_bytes()
    assert data[4] == VERSION_PREDICT
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.to_bytes() == data and again.pred is not None
    assert np.array_equal(again.pred, ctx.pred)
    assert np.all(np.triu(ctx.pred) == 0)  # strictly lower: a channel sees earlier ones only
    plain = tw.calibrate(correlated(800, seed=1))
    assert plain.to_bytes()[4] == 1 and plain.pred is None  # no predictor: version 1 as before
    assert len(data) == len(plain.to_bytes()) + C * (C - 1)


def test_round_trip_within_the_same_bound(codec: tw.TokenwiseCodec) -> None:
    """Closed loop: every channel's error is its own residual's, at most half a step."""
    x = correlated(40, seed=2, sink=True)
    for rows in (x[:1], x[1:2], x):
        t = torch.from_numpy(rows)[None]
        (y,) = codecs.decode(codec.encode(t))
        assert (y - t).abs().max().item() <= codec.error_bound(rows) + 1e-5


def test_prediction_codes_correlated_channels_in_fewer_bytes(ctx: tw.TokenwiseContext) -> None:
    plain = tw.calibrate(correlated(800, seed=1))
    x = torch.from_numpy(correlated(200, seed=3))
    err = {}
    size = {}
    for name, c in (("plain", plain), ("predict", ctx)):
        codec = tw.TokenwiseCodec.with_context(c, level=0)
        blobs = [codec.encode(x[t : t + 1][None]) for t in range(200)]
        size[name] = sum(map(len, blobs))
        y = torch.cat([codecs.decode(b)[0][0] for b in blobs])
        err[name] = float(((y - x) ** 2).mean())
    assert size["predict"] < 0.9 * size["plain"]
    assert err["predict"] < 1.1 * err["plain"]  # the same step: about the same error


def test_compiled_and_numpy_encoders_agree(ctx: tw.TokenwiseContext,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    x = correlated(30, seed=4, sink=True)
    d = ctx.steps(1.0, ctx.token_codes(x))
    e = (x - ctx.mu).astype(np.float64)
    out = {}
    for on in (False, True):
        monkeypatch.setattr(_slicer_jit, "ENABLED", on)
        out[on] = quantize_closed_loop(e, d, ctx.pred, ctx.theta, ctx.delta)
    if not _slicer_jit.active():
        pytest.skip("numba is not installed: the numpy path is the only one")
    # the same arithmetic; only a residual within float rounding of a cell edge could differ
    assert (out[False] != out[True]).mean() < 1e-3


def test_fit_predictor_is_the_least_squares_predictor() -> None:
    """With no quantization noise and no shrinkage, the coefficients are each channel's
    least-squares regression on the earlier ones (checked on a 3-channel case)."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4000, 3))
    e = z @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 1.0]])
    a = fit_predictor(e, np.zeros(3), shrink=0.0)
    coef, *_ = np.linalg.lstsq(e[:, :2], e[:, 2], rcond=None)
    np.testing.assert_allclose(a[2, :2], coef, rtol=1e-2, atol=1e-3)
    assert np.all(np.triu(a) == 0)


def test_refuses_wide_predictors() -> None:
    with pytest.raises(ValueError, match="at most"):
        tw.calibrate(np.zeros((4, PREDICT_MAX_CHANNELS + 1), np.float32), predict=True)
    ctx = tw.calibrate(np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32),
                       predict=True)
    body = bytearray(ctx.to_bytes()[:-4])
    body[5] = 0x81  # the channel count's varint -> 4097: refused before any allocation
    body[6:6] = b"\x20"
    with pytest.raises(BitstreamError):
        tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(body)))


def test_a_hostile_predictor_cannot_make_values_unbounded(ctx: tw.TokenwiseContext) -> None:
    """Huge coefficients overflow the reconstruction: the decoder refuses, typed."""
    data = bytearray(ctx.to_bytes()[:-4])
    tri = C * (C - 1)
    data[-tri:] = np.full(tri // 2, 60000.0, "<f2").tobytes()
    hostile = tw.TokenwiseContext.from_bytes(_refresh_crc(bytes(data)))
    honest = tw.TokenwiseCodec.with_context(ctx, level=0)
    stream = honest.encode(torch.from_numpy(correlated(2, seed=6)))
    cid = honest.params["context"]
    with context_scope({cid: hostile}):
        with pytest.raises(BitstreamError, match="not finite"):
            codecs.decode(stream)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_payloads(codec: tw.TokenwiseCodec, data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 3))
    fuzz_decode(codec.encode(torch.from_numpy(correlated(rows, seed=7, sink=True))), data)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_context_bytes(ctx: tw.TokenwiseContext, data: st.DataObject) -> None:
    """Corrupt predictor contexts (valid CRC) parse to one that codes and decodes (or whose
    encoder refuses the values), or raise BitstreamError."""
    body = mutate(ctx.to_bytes()[:-4], data, 4, cut=False)
    try:
        parsed = tw.TokenwiseContext.from_bytes(_refresh_crc(body))
    except BitstreamError:
        return
    x = correlated(1, seed=8)[:, : parsed.channels]
    cid = parsed.context_id
    with context_scope({cid: parsed}):
        try:
            stream = tw.TokenwiseCodec(context=cid).encode(torch.from_numpy(x))
        except ValueError:
            return  # the encoder refuses what this context cannot code
        try:
            (y,) = codecs.decode(stream)
        except BitstreamError:
            return
        assert torch.isfinite(y).all()


def test_reconstruction_work_is_bounded_by_the_bytes(ctx: tw.TokenwiseContext) -> None:
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    x = correlated(4, seed=9)
    work = tw.stream_work(ctx, codec.params["level"], ctx.token_codes(x))
    assert work >= ctx.reconstruction_work(4) == 4 * C * C // 16
    stream = codec.encode(torch.from_numpy(x))
    payload = codecs.peek(stream).tensors[0].payload_bytes
    assert work <= tw.work_budget(payload)

"""The bottleneck codec with trained tables (the registry-wide tests cover its self-contained
mode): tables bytes, exact round trips with escapes, contexts in scope or registered, sizes."""

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
from splitcomp.codecs import bottleneck as bn
from splitcomp.codecs.container import encode_params

from .registries import emptied, unregistered

C = 8
SCALES = np.linspace(0.5, 4.0, C)
#: training steps of the torch entropy model in the agreement test
TRAIN_STEPS = 200


def laplace_tables(channels: int = C, reach: int = 40, seed: int = 0) -> bn.BottleneckTables:
    """Tables as a trained factorized prior gives them: discretized Laplacians of varied scale
    around per-channel medians, frequencies >= 1 summing to below 2**16."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in np.linspace(0.5, 4.0, channels):
        k = np.arange(-reach, reach + 1)
        p = np.exp(-np.abs(k) / s)
        p /= p.sum()
        rows.append(np.floor(p * ((1 << 16) - 2 * k.size)).astype(np.int64) + 1)
    medians = rng.normal(size=channels).astype(np.float32)
    return bn.BottleneckTables.from_model_tables(medians, np.full(channels, -reach), rows)


def latent(tables: bn.BottleneckTables, shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """A latent (B, C, ...) distributed as the tables say."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 4.0, tables.channels).reshape(1, -1, *([1] * (len(shape) - 2)))
    med = tables.medians.reshape(scales.shape)
    return (rng.laplace(size=shape) * scales + med).astype(np.float32)


def quantized(tables: bn.BottleneckTables, y: np.ndarray) -> np.ndarray:
    """What the decoder must give back exactly: ``round(y - m_c) + m_c`` in float32."""
    med = tables.medians.reshape(1, -1, *([1] * (y.ndim - 2)))
    return (np.rint(y - med) + med).astype(np.float32)


@pytest.fixture(scope="module")
def tables() -> bn.BottleneckTables:
    return laplace_tables()


@pytest.fixture(scope="module")
def codec(tables: bn.BottleneckTables) -> bn.BottleneckCodec:
    return bn.BottleneckCodec.with_tables(tables)


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# -- tables ------------------------------------------------------------------------------
def test_tables_bytes_round_trip(tables: bn.BottleneckTables) -> None:
    data = tables.to_bytes()
    again = bn.BottleneckTables.from_bytes(data)
    assert again.to_bytes() == data
    assert np.array_equal(again.medians, tables.medians)
    assert np.array_equal(again.offsets, tables.offsets)
    assert all(np.array_equal(a, b) for a, b in zip(again.rows, tables.rows, strict=True))
    assert again.table_id == tables.table_id == bn.tables_id(data)
    assert 0 < tables.table_id < 1 << 20
    assert data[:4] == b"SBNT"
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(BitstreamError, match="CRC"):
        bn.BottleneckTables.from_bytes(bytes(bad))
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            bn.BottleneckTables.from_bytes(data[:cut])
    with pytest.raises(BitstreamError):
        bn.BottleneckTables.from_bytes(data + b"\0")


def test_tables_refuse_out_of_bounds_model_tables() -> None:
    med, off, rows = np.zeros(2, np.float32), np.array([-1, 0]), [np.ones(3), np.ones(2)]
    rows = [r.astype(np.int64) for r in rows]
    bn.BottleneckTables.from_model_tables(med, off, rows)
    bad = [
        (med, off, [rows[0], np.array([1, 0])]),  # a zero frequency
        (med, off, [rows[0], np.array([40000, 30000])]),  # sum >= 2**16
        (med, off, rows[:1]),  # one row for two channels
        (np.array([0.0, np.nan], np.float32), off, rows),
        (med, np.array([-1.5, 0.0]), rows),  # offsets not integers
        (med, np.array([-1, 1 << 40]), rows),
        (med, off, [rows[0], np.ones((2, 2), np.int64)]),
        (np.zeros(0, np.float32), np.zeros(0, np.int64), []),
    ]
    for m, o, r in bad:
        with pytest.raises(ValueError):
            bn.BottleneckTables.from_model_tables(m, o, r)


def _mangle(data: bytes, draw, start: int = 4) -> bytes:
    body = bytearray(data[:-4])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(start, len(body) - 1))
        body[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return _refresh_crc(bytes(body))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_tables_bytes(tables: bn.BottleneckTables, data: st.DataObject) -> None:
    """Tables come from peers: corrupt ones with a valid CRC raise BitstreamError (nothing
    else), or parse to tables that are exactly those bytes and code a stream."""
    mangled = _mangle(laplace_tables(channels=3, reach=6).to_bytes(), data.draw)
    try:
        parsed = bn.BottleneckTables.from_bytes(mangled)
    except BitstreamError:
        return
    assert parsed.to_bytes() == mangled
    tid = parsed.table_id
    x = torch.zeros(1, parsed.channels, 2)
    with context_scope({tid: parsed}):  # not registered: the registry stays as it is
        stream = bn.BottleneckCodec(tables=tid).encode(x)
        assert codecs.decode(stream)[0].shape == x.shape


def test_tables_registry(tables: bn.BottleneckTables) -> None:
    """Files, scope and the registry's bounds: ``test_session_contexts``; here, tables."""
    data = tables.to_bytes()
    tid = bn.tables_id(data)
    with emptied(bn.TABLES):
        with pytest.raises(BitstreamError, match="bottleneck tables .*not registered"):
            bn.get_tables(tid)
        assert bn.register_tables(data) == tid  # bytes: parsed
        assert bn.register_tables(tables) == tid  # the same tables again: fine
        assert bn.registered_tables(tid).to_bytes() == data
        bn.TABLES.max_items = 3
        others = [bn.register_tables(laplace_tables(channels=2, seed=s)) for s in range(4)]
        assert bn.TABLES.keys() == others[1:]  # the least recently used forgotten
        assert bn.registered_tables(tid) is None


# -- streams -----------------------------------------------------------------------------
def test_exact_round_trip_with_escapes(codec: bn.BottleneckCodec,
                                       tables: bn.BottleneckTables) -> None:
    y = latent(tables, (2, C, 6, 5), seed=2)
    y[0, 0, 0, 0] = 1e6  # far beyond the rows: escapes, never clipped
    y[1, 3, 2, 2] = -3e4
    y[0, 7, 1, 1] = tables.medians[7] + 40.4  # the last symbol of the row
    y[0, 7, 1, 2] = tables.medians[7] + 41.0  # one past it: escaped
    y[1, 2, 0, 0] = tables.medians[2] - 41.0  # one before the row
    y[1, 5] = tables.medians[5] + 2.0**37  # a whole channel of huge values
    data = codec.encode(torch.from_numpy(y))
    (z,) = codecs.decode(data)
    assert np.array_equal(z.numpy(), quantized(tables, y))
    assert np.abs(z.numpy() - y).max() <= codec.error_bound(y)
    with pytest.raises(ValueError, match="too large"):
        codec.encode(torch.full((1, C, 1), 1e30))
    y[0, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.from_numpy(y))


def test_channel_axis_and_shapes(codec: bn.BottleneckCodec,
                                 tables: bn.BottleneckTables) -> None:
    for shape in ((1, C), (3, C, 4), (2, C, 3, 4, 2), (0, C, 5), (2, C, 0)):
        y = latent(tables, shape, seed=3)
        (z,) = codecs.decode(codec.encode(torch.from_numpy(y)))
        assert z.shape == shape and np.array_equal(z.numpy(), quantized(tables, y))
    for shape in ((2, C + 1, 4), (C,), (), (1, 4, C)):
        with pytest.raises(ValueError, match="channels"):
            codec.encode(torch.zeros(shape))


def test_stream_naming_other_tables(codec: bn.BottleneckCodec) -> None:
    """A C-channel stream made to name 4-channel tables (CRC recomputed) is a typed error."""
    other = bn.BottleneckCodec.with_tables(laplace_tables(channels=4, seed=5))
    data = codec.encode(torch.zeros(1, C, 3))
    old = encode_params(codec.params_spec, codec.params)
    new = encode_params(other.params_spec, other.params)
    assert data[4 : 4 + len(old)] == old
    with pytest.raises(BitstreamError, match="channels"):
        codecs.decode(_refresh_crc(data[:4] + new + data[4 + len(old) : -4]))


def test_unknown_tables_are_a_typed_error(codec: bn.BottleneckCodec) -> None:
    data = codec.encode(torch.zeros(1, C, 2))
    tid = codec.params["tables"]
    with unregistered(bn.TABLES, tid):
        with pytest.raises(BitstreamError, match="not registered"):
            codecs.decode(data)
        with pytest.raises(ValueError, match="not registered"):
            codecs.get("bottleneck", tables=tid)


def test_payload_is_the_ideal_code_length(codec: bn.BottleneckCodec,
                                          tables: bn.BottleneckTables) -> None:
    """No side information: the payload is the rANS words (within 2 % + a few bytes of the
    ideal code length) plus a byte; escapes cost their symbol and their varints."""
    y = latent(tables, (4, C, 16, 16), seed=8)
    med = tables.medians[None, :, None, None]
    y = np.clip(y, med - 30, med + 30)  # no escapes
    stream = codec.encode(torch.from_numpy(y))
    head = codecs.peek(stream)
    assert head.total_bytes - head.tensors[0].payload_bytes <= 20  # container + params
    payload = head.tensors[0].payload_bytes
    ideal = codec.estimate_bits(y) / 8
    assert ideal <= payload <= ideal * 1.02 + 9, (payload, ideal)
    y[0, :, 0, :4] = 5e3  # 32 escapes of 3 varint bytes
    payload = codecs.peek(codec.encode(torch.from_numpy(y))).tensors[0].payload_bytes
    ideal = codec.estimate_bits(y) / 8
    assert ideal <= payload <= ideal * 1.02 + 10, (payload, ideal)


def test_stream_bytes_are_pinned(tables: bn.BottleneckTables) -> None:
    """The golden file covers the self-contained mode; this pins tables and a stream."""
    data = tables.to_bytes()
    assert (tables.table_id, len(data)) == (688172, 873)
    assert hashlib.sha256(data).hexdigest().startswith("2c800ae037e435cf")
    y = latent(tables, (1, C, 3, 3), seed=9)
    y[0, 2, 1, 1] = -1e4
    stream = bn.BottleneckCodec.with_tables(tables).encode(torch.from_numpy(y))
    assert len(stream) == 63
    assert hashlib.sha256(stream).hexdigest().startswith("ce327c0ff75b666d")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_payloads(codec: bn.BottleneckCodec, tables: bn.BottleneckTables,
                       data: st.DataObject) -> None:
    y = latent(tables, (1, C, 3, 3), seed=10)
    y[0, 1, 0, 0] = 1e5
    clean = codec.encode(torch.from_numpy(y))
    limits = DecodeLimits(max_elements=1 << 16, max_tensors=4, max_bytes=1 << 20)
    try:
        out = codecs.decode(_mangle(clean, data.draw, start=10), limits=limits)
    except BitstreamError:
        return
    assert all(torch.isfinite(t).all() for t in out)


@st.composite
def tables_and_latent(draw) -> tuple[bn.BottleneckTables, np.ndarray]:
    c = draw(st.integers(1, 5))
    rows, offsets = [], []
    for _ in range(c):
        n = draw(st.integers(1, 30))
        rows.append(np.array(draw(st.lists(st.integers(1, 2000), min_size=n, max_size=n))))
        offsets.append(draw(st.integers(-40, 10)))
    medians = np.array(draw(st.lists(st.floats(-50, 50, width=32), min_size=c, max_size=c)),
                       np.float32)
    tables = bn.BottleneckTables.from_model_tables(medians, np.array(offsets), rows)
    shape = (draw(st.integers(0, 3)), c, *draw(st.lists(st.integers(0, 5), max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([0.5, 5.0, 50.0, 1e4]))
    y = (rng.laplace(size=shape) * scale + rng.normal(size=shape) * 20).astype(np.float32)
    return tables, y


@settings(max_examples=80, deadline=None, derandomize=True)
@given(case=tables_and_latent())
def test_property_exact_round_trip(case: tuple[bn.BottleneckTables, np.ndarray]) -> None:
    tables, y = case
    assert bn.BottleneckTables.from_bytes(tables.to_bytes()).to_bytes() == tables.to_bytes()
    tid = tables.table_id
    with context_scope({tid: tables}):
        codec = bn.BottleneckCodec(tables=tid)
        stream = codec.encode(torch.from_numpy(y))
        (z,) = codecs.decode(stream)
    assert np.array_equal(z.numpy(), quantized(tables, y))
    if y.size:
        payload = codecs.peek(stream, contexts={tid: tables}).tensors[0].payload_bytes
        assert payload <= codec.estimate_bits(y) / 8 * 1.02 + 10


# -- against the training side -----------------------------------------------------------
def test_agrees_with_the_torch_entropy_model() -> None:
    """A briefly trained EntropyBottleneck: the codec decodes exactly the model's quantized
    latent, and its payload is what the model's likelihoods say it costs (within 2 %)."""
    em = pytest.importorskip("splitcomp.train.entropy_model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    try:
        _check_against_trained_model(em)
    finally:
        torch.set_num_threads(threads)


def _check_against_trained_model(em) -> None:
    torch.manual_seed(0)
    scales = torch.tensor(SCALES, dtype=torch.float32).reshape(1, C, 1, 1)
    means = torch.linspace(-2, 2, C).reshape(1, C, 1, 1)
    laplace = torch.distributions.Laplace(0.0, 1.0)
    model = em.EntropyBottleneck(C)
    main = [p for n, p in model.named_parameters() if n != "quantiles"]
    opt = torch.optim.Adam(main, lr=1e-2)
    aux = torch.optim.Adam([model.quantiles], lr=0.3)
    for _ in range(TRAIN_STEPS):
        _, lik = model(laplace.sample((1, C, 8, 8)) * scales + means, training=True)
        opt.zero_grad()
        (model.bits(lik) / lik.numel()).backward()
        opt.step()
        aux.zero_grad()
        model.aux_loss().backward()
        aux.step()
    model.eval()
    y = laplace.sample((2, C, 32, 32)) * scales + means
    with torch.no_grad():
        _, lik = model(y)
        want_bits = float(model.bits(lik))
        med = model.medians.reshape(1, C, 1, 1)
        y_hat = torch.round(y - med) + med
    tables = bn.BottleneckTables.from_model_tables(*model.frequency_tables())
    codec = bn.BottleneckCodec.with_tables(tables)
    stream = codec.encode(y)
    (z,) = codecs.decode(stream)
    assert torch.equal(z, y_hat)
    payload = codecs.peek(stream).tensors[0].payload_bytes
    assert abs(payload * 8 - want_bits) <= 0.02 * want_bits + 64, (payload * 8, want_bits)
    assert abs(codec.estimate_bits(y.numpy()) - want_bits) <= 0.02 * want_bits

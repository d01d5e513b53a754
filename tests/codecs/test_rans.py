"""The rans codec: error bound, zeros, cost-model choices, rate sanity and hostile payloads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits
from splitcomp.codecs.rans import MODE_DENSE, MODE_RUNS, RansCodec

LIMITS = DecodeLimits(max_elements=1 << 20)


def relu_map(shape: tuple[int, ...], seed: int = 0, zeros: float = 0.3) -> np.ndarray:
    """Half-normal values with a fraction of exact zeros clustered in horizontal runs."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(shape)).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size == 0:
        return x
    starts = rng.integers(0, flat.size, max(1, int(flat.size * zeros / 6)))
    for d in range(6):
        flat[np.minimum(starts + d, flat.size - 1)] = 0.0
    return x


def llm_state(tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((1, tokens, 576)).astype(np.float32)
    h[..., [7, 101, 333]] *= 100.0
    return h


def round_trip(codec: RansCodec, x: np.ndarray) -> tuple[np.ndarray, bytes]:
    payload = codec.encode_array(np.ascontiguousarray(x, np.float32))
    y = codec.decode_array(memoryview(payload), x.shape, LIMITS)
    assert y.shape == x.shape and y.dtype == np.float32
    return y, payload


def flags(payload: bytes) -> tuple[int, int]:
    return payload[0] & 1, payload[0] >> 4


@pytest.mark.parametrize("coder", ["ans", "pco"])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("clip", [1.0, 0.99, 0.5])
@pytest.mark.parametrize(
    "shape", [(0,), (1,), (7,), (3, 5), (2, 3, 5, 7), (1, 16, 8, 8), (4, 1, 9), (1, 1, 1, 1)]
)
def test_error_bound_and_exact_zeros(
    coder: str, bits: int, clip: float, shape: tuple[int, ...]
) -> None:
    codec = RansCodec(bits=bits, clip=clip, coder=coder)
    for x in (relu_map(shape, seed=bits), np.random.default_rng(bits).normal(size=shape) * 3):
        x = x.astype(np.float32)
        y, _ = round_trip(codec, x)
        if x.size:
            assert np.abs(y - x).max() <= codec.error_bound(x)
        assert (y[x == 0] == 0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.integers(2, 16),
    st.floats(0.5, 1.0),
    st.floats(1e-6, 1e6),
    st.integers(0, 2**31),
    st.sampled_from(["ans", "pco"]),
)
def test_property_round_trip(
    dims: list[int], bits: int, clip: float, scale: float, seed: int, coder: str
) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(dims) * scale).astype(np.float32)
    x[rng.random(dims) < 0.3] = 0
    if x.size > 2:
        x.reshape(-1)[0] *= 1000  # an outlier
    codec = RansCodec(bits=bits, clip=clip, coder=coder)
    y, _ = round_trip(codec, x)
    assert np.abs(y - x).max() <= codec.error_bound(x)


def test_error_bound_is_half_the_step_in_the_payload() -> None:
    x = relu_map((1, 8, 8, 8))
    codec = RansCodec(bits=5, clip=1.0)
    payload = codec.encode_array(x)
    (delta,) = struct.unpack("<f", payload[1:5])
    assert delta == pytest.approx(float(x.max()) / 31, rel=1e-6)
    assert codec.error_bound(x) == pytest.approx(delta / 2, rel=1e-4)


@pytest.mark.parametrize(
    "x",
    [np.zeros((2, 4, 8, 8)), np.full((3, 50), 0.75), np.full((3, 50), -2.0), np.full((1,), 1e-42)],
)
def test_constant_inputs(x: np.ndarray) -> None:
    x = x.astype(np.float32)
    codec = RansCodec()
    y, payload = round_trip(codec, x)
    assert np.abs(y - x).max() <= codec.error_bound(x)
    assert len(payload) <= 16  # one symbol: nothing but the header and a one-entry table


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad: float) -> None:
    x = np.ones((4, 4), np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        RansCodec().encode_array(x)
    with pytest.raises(ValueError):
        codecs.get("rans").encode(torch.from_numpy(x))


def test_extreme_ranges_stay_finite() -> None:
    x = np.array([3e38, -3e38, 1e-30, 0.0, 5.0], np.float32)
    for bits in (2, 16):
        codec = RansCodec(bits=bits)
        y, _ = round_trip(codec, x)
        assert np.isfinite(y).all() and np.abs(y - x).max() <= codec.error_bound(x)


def test_relu_features_compress_below_bits() -> None:
    x = relu_map((1, 32, 16, 16), seed=3)
    for bits in (2, 4, 8):
        data = codecs.get("rans", bits=bits).encode(torch.from_numpy(x))
        assert len(data) * 8 / x.size < bits  # header included


def test_runs_chosen_for_clustered_zeros_dense_for_none() -> None:
    _, payload = round_trip(RansCodec(bits=4), relu_map((1, 16, 16, 16), zeros=0.5))
    assert flags(payload)[0] == MODE_RUNS
    noisy = np.random.default_rng(0).normal(5, 1, (1, 16, 16, 16)).astype(np.float32)
    _, payload = round_trip(RansCodec(bits=4), noisy)
    assert flags(payload)[0] == MODE_DENSE


def test_runs_cost_less_than_dense_on_clustered_zeros() -> None:
    x = relu_map((1, 32, 16, 16), zeros=0.4, seed=5)
    codec = RansCodec(bits=6)
    _, payload = round_trip(codec, x)
    assert flags(payload)[0] == MODE_RUNS
    # the same values with the zeros scattered at random cost more
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(x.reshape(-1)).reshape(x.shape)
    assert len(payload) < len(codec.encode_array(shuffled))


def test_blocking_follows_the_statistics() -> None:
    """Channels with disjoint value ranges get one frequency row each; iid data gets one."""
    rng = np.random.default_rng(0)
    levels = rng.permutation(16)[:, None, None].astype(np.float32)
    x = (levels + rng.integers(0, 2, (16, 32, 32))).astype(np.float32)[None]
    y, payload = round_trip(RansCodec(bits=4, clip=1.0), x)
    assert flags(payload)[1] == 2  # blocks of shape[2:] = one per channel
    assert len(payload) * 8 / x.size < 1.2  # ~1 bit of entropy per element
    iid = rng.normal(size=(1, 16, 32, 32)).astype(np.float32)
    _, payload = round_trip(RansCodec(bits=4), iid)
    assert flags(payload)[1] == 0


def test_outlier_channels_keep_the_bulk_precise() -> None:
    for tokens in (1, 32):
        x = llm_state(tokens)
        bulk = np.ones(576, bool)
        bulk[[7, 101, 333]] = False
        for bits in (4, 8):
            y, payload = round_trip(RansCodec(bits=bits), x)
            err = np.abs(y - x)[..., bulk].max()
            assert err <= 6.0 / 2**bits  # ~ range of the bulk / levels, not of the outliers
            assert np.abs(y - x).max() <= RansCodec(bits=bits).error_bound(x)
        # min/max scaling (clip=1) flattens the bulk: the reason clip exists
        y, _ = round_trip(RansCodec(bits=4, clip=1.0), x)
        assert np.abs(y - x)[..., bulk].max() > 1.0


def test_deterministic_bytes() -> None:
    x = relu_map((2, 8, 6, 6), seed=9)
    a = RansCodec(bits=6).encode_array(x)
    assert a == RansCodec(bits=6).encode_array(x.copy())


def test_container_round_trip_and_params() -> None:
    for coder in ("ans", "pco"):
        codec = codecs.get("rans", bits=3, clip=0.95, coder=coder)
        x = torch.from_numpy(relu_map((2, 8, 8, 8)))
        data = codec.encode(x)
        header = codecs.peek(data)
        assert header.codec_name == "rans"
        assert header.params == {"bits": 3, "clip": codec.params["clip"], "coder": coder}
        (y,) = codecs.decode(data)
        assert (y - x).abs().max().item() <= codec.error_bound(x.numpy())


def test_pco_streams_are_unblocked_and_flagged() -> None:
    x = relu_map((1, 16, 32, 32), zeros=0.4)
    payload = RansCodec(bits=4, coder="pco").encode_array(x)
    assert payload[0] & 4 and flags(payload) == (MODE_RUNS, 0)
    ans = RansCodec(bits=4).encode_array(x)
    assert len(payload) < 1.15 * len(ans)


# -- hostile payloads ---------------------------------------------------------------------
def _sane(payload: bytes, shape: tuple[int, ...]) -> None:
    try:
        y = RansCodec().decode_array(memoryview(payload), shape, LIMITS)
    except BitstreamError:
        return
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == np.float32


@pytest.mark.parametrize("coder", ["ans", "pco"])
@pytest.mark.parametrize("bits", [2, 8])
def test_truncated_and_flipped_payloads(bits: int, coder: str) -> None:
    rng = np.random.default_rng(bits)
    samples = [relu_map((1, 8, 8, 8), seed=1), llm_state(2)[:, :, :64].copy(), np.zeros((5, 5))]
    for x in samples:
        x = x.astype(np.float32)
        payload = RansCodec(bits=bits, coder=coder).encode_array(x)
        for cut in range(len(payload)):
            _sane(payload[:cut], x.shape)
        _sane(payload + b"\0\0\0\0", x.shape)
        for _ in range(200):
            b = bytearray(payload)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
            _sane(bytes(b), x.shape)
        _sane(payload, tuple(reversed(x.shape)))  # right bytes, wrong shape
        _sane(payload, (x.size + 1,))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([(1,), (4, 4), (2, 3, 8, 8), (0, 5), (1000,)]))
def test_random_payloads(payload: bytes, shape: tuple[int, ...]) -> None:
    _sane(payload, shape)


def test_hostile_counts_refused() -> None:
    head = bytes([MODE_RUNS]) + struct.pack("<f", 0.1) + b"\x00"
    with pytest.raises(BitstreamError, match="runs"):  # 2**40 runs for 16 elements
        RansCodec().decode_array(memoryview(head + b"\x80\x80\x80\x80\x80\x20"), (16,), LIMITS)
    with pytest.raises(BitstreamError):  # a step of inf
        RansCodec().decode_array(memoryview(b"\x00" + struct.pack("<f", np.inf)), (4,), LIMITS)
    with pytest.raises(BitstreamError):  # blocking index beyond the shape
        bad = bytes([0x70]) + struct.pack("<f", 0.1) + b"\x00"
        RansCodec().decode_array(memoryview(bad), (4, 4), LIMITS)
    with pytest.raises(BitstreamError):
        RansCodec().decode_array(memoryview(b"\x00"), (0,), LIMITS)

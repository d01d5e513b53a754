"""SLICER-specific behaviour: bounds, keep budgets, rate monotonicity, hostile payloads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits
from splitcomp.codecs._slicer_quant import kth_largest

LIMITS = DecodeLimits(max_elements=1 << 16, max_bytes=1 << 20)


def relu_map(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Spatially smooth ReLU features with per-channel offsets (like a CNN's)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if len(shape) == 4:
        x = torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 2.5
        x = x + torch.randn(1, shape[1], 1, 1, generator=g) * 0.7
    return x.relu().numpy()


def signed(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def llm_hidden(tokens: int = 32, width: int = 576, seed: int = 0) -> np.ndarray:
    """Hidden states with three outlier channels ~100x larger than the rest."""
    h = signed((1, tokens, width), seed)
    h[..., [7 % width, 101 % width, 333 % width]] *= 100.0
    return h


def round_trip(codec: codecs.Codec, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    payload = codec.encode_array(x)
    y = codec.decode_array(memoryview(payload), x.shape, LIMITS)
    assert y.shape == x.shape and y.dtype == np.float32
    if x.size:
        err = float(np.max(np.abs(y - x)))
        assert err <= codec.error_bound(x), (err, codec.error_bound(x))
    (z,) = codecs.decode(codec.encode(torch.from_numpy(x)))  # through the container too
    assert np.array_equal(z.numpy(), y)
    return y


SHAPES = [(0,), (2, 0, 3), (), (1,), (7,), (3, 5), (2, 3, 5), (1, 16, 8, 8), (2, 7, 5, 3)]
SHAPES += [(1, 3, 1, 9), (1, 1, 1, 1), (1, 12, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("params", [{}, {"quality": 0.1}, {"quality": 1.0, "n_blocks": 1}])
def test_round_trip_within_bound(shape: tuple[int, ...], params: dict) -> None:
    codec = codecs.get("slicer", **params)
    round_trip(codec, relu_map(shape, 1) if len(shape) == 4 else signed(shape, 1))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((2, 4, 8, 8)),
        np.full((3, 50), 0.75),
        np.full((3, 50), -2.0),
        -np.abs(signed((2, 8, 6, 6))),
        np.array([1e-30, -1e-30, 3e38, -3e38, 0.0]),
        np.array([5.0]),
        np.array([-5.0]),
        np.linspace(-1, 1, 1001).reshape(7, 11, 13),
    ],
    ids=["zeros", "const", "const-neg", "all-neg", "extremes", "one", "one-neg", "ramp"],
)
@pytest.mark.parametrize("quality", [0.05, 0.5, 1.0])
def test_special_inputs(x: np.ndarray, quality: float) -> None:
    round_trip(codecs.get("slicer", quality=quality), x)


def test_all_zero_and_all_dropped_payloads_are_tiny() -> None:
    codec = codecs.get("slicer")
    assert codec.encode_array(np.zeros((4, 16), np.float32)) == b"\x00"
    dropped = codecs.get("slicer", keep_pos=0.0, keep_neg=0.0)
    assert dropped.encode_array(signed((4, 16))) == b"\x00"
    assert codec.encode_array(np.zeros((0, 3), np.float32)) == b""


@pytest.mark.parametrize("keep_pos,keep_neg", [(0.3, 0.7), (0.9, 0.1), (1.0, 0.0), (0.0, 0.5)])
def test_asymmetric_keep_fractions(keep_pos: float, keep_neg: float) -> None:
    x = signed((2, 16, 12, 12), seed=3)
    codec = codecs.get("slicer", keep_pos=keep_pos, keep_neg=keep_neg)
    y = round_trip(codec, x)
    n_pos, n_neg = int((x > 0).sum()), int((x < 0).sum())
    assert int((y > 0).sum()) == round(keep_pos * n_pos)
    assert int((y < 0).sum()) == round(keep_neg * n_neg)
    # the kept ones are the largest of their sign
    if 0 < keep_pos < 1:
        assert x[y > 0].min() >= x[(x > 0) & (y == 0)].max()
    if 0 < keep_neg < 1:
        assert x[y < 0].max() <= x[(x < 0) & (y == 0)].min()


def test_relu_features_keep_fraction_of_positives() -> None:
    x = relu_map((1, 32, 16, 16), seed=4)
    y = round_trip(codecs.get("slicer", keep_pos=0.6), x)
    assert int((y > 0).sum()) == round(0.6 * int((x > 0).sum()))
    assert not (y < 0).any()


def test_large_tensor_keeps_exact_fractions() -> None:
    x = signed((2, 16, 64, 65), seed=5)
    y = round_trip(codecs.get("slicer", keep_pos=0.4, keep_neg=0.2), x)
    assert int((y > 0).sum()) == round(0.4 * int((x > 0).sum()))
    assert int((y < 0).sum()) == round(0.2 * int((x < 0).sum()))


@pytest.mark.parametrize("n", [1, 7, 4096, 5000, 100_003])
def test_kth_largest_is_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    x = np.maximum(rng.standard_normal(n).astype(np.float32), 0)  # ReLU: many ties at 0
    ref = np.sort(x)[::-1]
    for k in sorted({1, max(1, n // 3), max(1, n // 2), n}):
        assert kth_largest(x, k, 1) == ref[k - 1]
        assert kth_largest(-x, k, -1) == ref[k - 1]


def test_rate_monotone_in_quality() -> None:
    cls = codecs.codec_class("slicer")
    grid = cls.quality_grid
    assert list(grid) == sorted(grid) and 8 <= len(grid) <= 12 and cls.quality_param == "quality"
    for x in (relu_map((1, 32, 16, 16), seed=6), signed((1, 24, 14, 14), seed=6)):
        sizes = [len(codecs.get("slicer", quality=q).encode_array(x)) for q in grid]
        errors = []
        for q in grid:
            c = codecs.get("slicer", quality=q)
            y = c.decode_array(memoryview(c.encode_array(x)), x.shape, LIMITS)
            errors.append(float(np.mean((y - x) ** 2)))
        assert sizes == sorted(sizes), sizes
        # fidelity follows (the step grows a little with keep at the low end: within 2 %)
        assert all(b <= a * 1.02 for a, b in zip(errors, errors[1:], strict=False)), errors
        assert errors[-1] < 0.2 * errors[0]


def test_distortion_and_blocks_overrides() -> None:
    x = relu_map((1, 32, 16, 16), seed=7)
    fine = codecs.get("slicer", keep_pos=0.7, distortion=0.5)
    coarse = codecs.get("slicer", keep_pos=0.7, distortion=4.0)
    assert len(fine.encode_array(x)) > len(coarse.encode_array(x))
    assert fine.error_bound(x) < coarse.error_bound(x)
    for n_blocks in (1, 2, 8, 16):
        round_trip(codecs.get("slicer", n_blocks=n_blocks, distortion=0.2), x)


def test_context_model_beats_zero_order_on_clustered_masks() -> None:
    """The mask of smooth features costs well under its zero-order entropy."""
    x = relu_map((1, 32, 16, 16), seed=8)
    codec = codecs.get("slicer", keep_pos=0.7, distortion=64.0)  # values ~free: mostly mask
    y = round_trip(codec, x)
    p = float((y != 0).mean())
    h0 = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) * x.size
    assert 8 * len(codec.encode_array(x)) < 0.9 * h0


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("tokens", [1, 32])
def test_llm_outlier_channels_do_not_collapse(axis: int, tokens: int) -> None:
    h = llm_hidden(tokens)
    codec = codecs.get("slicer", quality=0.7, axis=axis)
    y = round_trip(codec, h)
    normal = np.ones(h.shape[-1], bool)
    normal[[7, 101, 333]] = False
    err = y[..., normal] - h[..., normal]
    assert float(np.mean(err**2)) < 0.25 * float(np.mean(h[..., normal] ** 2))
    assert np.unique(y[..., normal]).size > 8  # many distinct levels survive
    out = ~normal
    assert float(np.max(np.abs(y[..., out] - h[..., out]))) < 0.1 * float(np.abs(h).max())
    assert 8 * len(codec.encode_array(h)) / h.size < (6.0 if tokens == 1 else 4.0)


def test_extreme_tail_gets_its_own_block() -> None:
    """A tail 10**5 x the body would need ~10**5 levels at the body's step: one block must
    coarsen everything; magnitude blocks cut the tail off at its gap, the body keeps its step."""
    x = signed((1, 8, 16, 16), seed=17)
    x.reshape(-1)[[5, 900, 1500]] = [1e5, 2e5, -3e5]
    body = np.abs(x) < 100

    def body_error(n_blocks: int) -> float:
        codec = codecs.get("slicer", quality=0.6, n_blocks=n_blocks)
        y = round_trip(codec, x)
        return float(np.mean((y[body] - x[body]) ** 2) / np.mean(x[body] ** 2))

    codec = codecs.get("slicer", quality=0.6, n_blocks=4)
    signs, _, _ = codec._quantize(x.reshape(-1))
    assert all(g.starts.size > 1 for _, g in signs)
    assert body_error(4) < 0.1 < 0.2 < body_error(1)


def test_value_context_used_on_feature_maps() -> None:
    """Large enough maps code phase-B levels by neighbour context (flags bit 3)."""
    x = relu_map((1, 32, 16, 16), seed=10)
    payload = codecs.get("slicer", keep_pos=0.7, distortion=1.0).encode_array(x)
    assert payload[0] & 8
    round_trip(codecs.get("slicer", keep_pos=0.7, distortion=1.0), x)
    tiny = codecs.get("slicer").encode_array(signed((3, 5), 1))
    assert not tiny[0] & 8


def test_reconstruction_offset_tracks_the_data() -> None:
    """Levels decode below mid-cell when values crowd the low end of their cells."""
    x = relu_map((1, 32, 16, 16), seed=11)
    codec = codecs.get("slicer", keep_pos=0.7, distortion=3.0)
    signs, _, _ = codec._quantize(x.reshape(-1))
    assert signs[0][1].offset < 128


def test_non_finite_input_raises() -> None:
    codec = codecs.get("slicer")
    for bad in (np.nan, np.inf, -np.inf):
        x = signed((2, 3, 4))
        x[1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            codec.encode_array(x)


def test_bad_params_rejected() -> None:
    with pytest.raises(ValueError):
        codecs.get("slicer", quality=0.0)
    with pytest.raises(ValueError):
        codecs.get("slicer", keep_pos=1.5)
    with pytest.raises(ValueError):
        codecs.get("slicer", n_blocks=0)


def test_deterministic_bytes() -> None:
    x = relu_map((2, 16, 8, 8), seed=9)
    a = codecs.get("slicer", quality=0.4).encode_array(x)
    b = codecs.get("slicer", quality=0.4).encode_array(x.copy())
    assert a == b


# -- hostile payloads ------------------------------------------------------------------------
def _decode_or_reject(payload: bytes, shape: tuple[int, ...], params: dict) -> None:
    codec = codecs.get("slicer", **params)
    try:
        y = codec.decode_array(memoryview(payload), shape, LIMITS)
    except BitstreamError:
        return
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == np.float32


_SAMPLES = [
    ((1, 8, 6, 6), {}, relu_map((1, 8, 6, 6), 11)),
    ((2, 5, 7), {"axis": -1}, signed((2, 5, 7), 12)),
    ((33,), {"quality": 0.9}, signed((33,), 13)),
    ((1, 4, 9, 9), {"distortion": 0.05}, llm_hidden(4, 81, 14).reshape(1, 4, 9, 9)),
    ((1, 16, 16, 16), {"keep_pos": 0.7, "distortion": 1.0}, relu_map((1, 16, 16, 16), 15)),
    ((1, 12, 14, 14), {"quality": 0.6}, signed((1, 12, 14, 14), 16)),
]


@pytest.mark.parametrize("shape,params,x", _SAMPLES)
def test_truncated_payloads(shape, params, x) -> None:
    payload = codecs.get("slicer", **params).encode_array(np.ascontiguousarray(x))
    for cut in range(len(payload)):
        _decode_or_reject(payload[:cut], shape, params)
    _decode_or_reject(payload + b"\x00\x00\x00\x00", shape, params)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.integers(0, len(_SAMPLES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flipped_payloads(case: int, flips: list[tuple[int, int]]) -> None:
    shape, params, x = _SAMPLES[case]
    data = bytearray(codecs.get("slicer", **params).encode_array(np.ascontiguousarray(x)))
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    _decode_or_reject(bytes(data), shape, params)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=300),
    shape=st.sampled_from([(1, 8, 6, 6), (2, 5, 7), (33,), (), (1, 1, 1, 1)]),
    axis=st.sampled_from([1, -1, 5]),
)
def test_random_payloads(payload: bytes, shape: tuple[int, ...], axis: int) -> None:
    _decode_or_reject(payload, shape, {"axis": axis})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.sampled_from([b"\x01", b"\x03", b"\x05", b"\x07", b"\x02"]),
    body=st.binary(min_size=4, max_size=120),
)
def test_random_payloads_with_valid_flags(head: bytes, body: bytes) -> None:
    """Random bytes behind a plausible flags byte get past the first checks more often."""
    _decode_or_reject(head + body, (1, 8, 6, 6), {})

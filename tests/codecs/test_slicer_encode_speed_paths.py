"""The fast slicer encoder's pieces equal their references: the rANS encode by reciprocals
against the division, the compiled thresholds against ``_slicer_quant.threshold``, and the
two-call encoder (and where it declines) against the numpy path's bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import _slicer_jit as jit
from splitcomp.codecs import _slicer_mask as mk
from splitcomp.codecs import _slicer_quant as sq

from .jit_paths import jit_path

pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")


def ans():
    from splitcomp.codecs.entropy import _ans_jit

    return _ans_jit.kernels()


def fast():
    from splitcomp.codecs import _slicer_fused_enc as fe

    jit.kernels()
    return fe


def cdf_of(freqs: np.ndarray) -> np.ndarray:
    cdf = np.empty(freqs.size + 1, np.uint32)
    assert ans().quantized_cdf(freqs.astype(np.float64), cdf)
    return cdf


def by_division(cdf: np.ndarray, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Words and state of ``symbols``, one ``write`` call a symbol (the division path)."""
    k = ans()
    words = np.zeros(4 * symbols.size + 8, np.uint32)
    st_ = np.zeros(2, np.uint64)
    for i in range(symbols.size - 1, -1, -1):
        assert k.write(words, st_, cdf, symbols, i, i + 1)
    return words[: int(st_[1])].copy(), st_


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_sym=st.integers(2, 300), skew=st.floats(0, 12),
       count=st.integers(1, 3000))
def test_reciprocal_encode_equals_division(seed, n_sym, skew, count) -> None:
    """Skewed models give probabilities over 1/2 (states past 2**63, where the reciprocal
    is one too high) and of 1/2**24 (the division fallback)."""
    rng = np.random.default_rng(seed)
    freqs = np.exp(-skew * np.arange(n_sym) / n_sym * rng.uniform(0.5, 2.0))
    cdf = cdf_of(freqs)
    p = np.diff(cdf.astype(np.float64))
    symbols = rng.choice(n_sym, count, p=p / p.sum()).astype(np.int32)
    symbols[rng.integers(0, count, max(1, count // 50))] = n_sym - 1  # the rarest too
    ref_words, ref_state = by_division(cdf, symbols)
    k = ans()
    rcp = np.empty(n_sym, np.uint64)
    rsh = np.empty(n_sym, np.uint64)
    k.reciprocals(cdf, rcp, rsh)
    words = np.zeros(4 * count + 8, np.uint32)
    st_ = np.zeros(2, np.uint64)
    assert k.write_rcp(words, st_, cdf, rcp, rsh, symbols, 0, count)
    assert np.array_equal(st_, ref_state)
    assert np.array_equal(words[: int(st_[1])], ref_words)
    st2 = np.zeros(2, np.uint64)  # write() takes the reciprocal path for long streams
    assert k.write(words, st2, cdf, symbols, 0, count)
    assert np.array_equal(st2, ref_state) and np.array_equal(words[: int(st2[1])], ref_words)


def test_reciprocal_quotients_near_two_to_the_64() -> None:
    """The largest states for every probability scale: the quotient by multiply-high,
    shift and the remainder check is the division's."""
    k = ans()
    rng = np.random.default_rng(1)
    powers = ((1 << np.arange(1, 24))[:, None] + np.array([-1, 0, 1])).ravel()
    freqs = np.unique(np.concatenate([np.arange(1, 2000), rng.integers(2, 1 << 24, 3000),
                                      powers, (1 << 24) - np.arange(1, 40)]))
    for f in freqs.tolist():
        cdf = np.array([0, f, 1 << 24], np.uint32)
        top = (f << 40) - 1  # the largest state write_rcp divides for this probability
        states = [top, top - 1, top - f + 1, top // 2, 1 << 63 if top >= 1 << 63 else top // 3]
        for s in states:
            words = np.zeros(4, np.uint32)
            got = np.array([s, 0], np.uint64)
            sym = np.zeros(1, np.int32)
            rcp = np.empty(2, np.uint64)
            rsh = np.empty(2, np.uint64)
            k.reciprocals(cdf, rcp, rsh)
            assert k.write_rcp(words, got, cdf, rcp, rsh, sym, 0, 1)
            want = ((s // f) << 24) | (s % f)
            assert int(got[0]) == want, (f, s)


def reference_thresholds(x: np.ndarray, keep_pos: float, keep_neg: float):
    hi, lo = float(x.max()), float(x.min())
    n_pos = int(np.count_nonzero(x > 0)) if hi > 0 else 0
    n_neg = int(np.count_nonzero(x < 0)) if lo < 0 else 0
    ts = sq.threshold(x, n_pos, keep_pos, 1), sq.threshold(x, n_neg, keep_neg, -1)
    kept = (int(np.count_nonzero(x >= np.float32(ts[0]))) if math.isfinite(ts[0]) else 0,
            int(np.count_nonzero(x <= -np.float32(ts[1]))) if math.isfinite(ts[1]) else 0)
    return hi, lo, ts, kept


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9000),
       kind=st.sampled_from(["normal", "relu", "negative", "ties", "denormal", "zeros",
                             "signed_zeros", "outliers"]),
       keep=st.sampled_from([0.0, 0.01, 0.5, 0.55, 0.8, 0.9, 1.0]))
def test_compiled_thresholds_equal_numpy(seed, n, kind, keep) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "denormal":
        x = (x * np.float32(1e-40)).astype(np.float32)
    elif kind == "zeros":
        x[:] = 0
    elif kind == "signed_zeros":
        x = np.where(x > 0, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
        x[:: 7] = 1.5
    elif kind == "outliers":
        x[::97] *= 1e4
    hi, lo, (t_pos, t_neg), kept = reference_thresholds(x, keep, 1.0 - keep / 2)
    g_hi, g_lo, finite, g_pos, g_neg, k_pos, k_neg = fast().kernels().thresholds(
        x, keep, 1.0 - keep / 2)
    assert finite
    assert (g_pos, g_neg, k_pos, k_neg) == (t_pos, t_neg, *kept)
    assert (g_hi > 0) == (hi > 0) and (g_lo < 0) == (lo < 0)
    if hi != 0.0:
        assert g_hi == hi
    if lo != 0.0:
        assert g_lo == lo


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compiled_thresholds_flag_non_finite(bad: float) -> None:
    x = np.ones(5000, np.float32)
    x[4321] = bad
    assert not fast().kernels().thresholds(x, 0.8, 0.8)[2]


def same_bytes(x: np.ndarray, **params) -> bytes:
    codec = codecs.get("slicer", **params)
    with jit_path(False):
        ref = codec.encode_array(x)
    with jit_path(True):
        got = codec.encode_array(x)
    assert got == ref
    return got


def run_fast(x: np.ndarray, **params):
    codec = codecs.get("slicer", **params)
    geo = mk.geometry(x.shape, codec._axis(x.ndim))
    return fast().encode_fast(x.reshape(-1), codec._keep_pos, codec._keep_neg,
                              codec._distortion, codec.params["n_blocks"], geo)


def test_fast_encoder_declines_blocks_and_too_many_levels() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    assert run_fast(x) == same_bytes(x)
    spiky = x.copy()
    spiky[0, 0, 0, :4] = 1e5  # magnitude blocks: the numpy quantizer's case
    assert run_fast(spiky) is None
    same_bytes(spiky)
    # one block: the coarser step of allocate() (a wide range, few values), taken here
    assert run_fast(spiky, n_blocks=1) is not None
    same_bytes(spiky, n_blocks=1)
    same_bytes(spiky, n_blocks=1, quality=1.0)
    wide = np.linspace(1.0, 1.0e6, 100_000, dtype=np.float32).reshape(1, 10, 10_000)
    params = {"n_blocks": 1, "distortion": 1e-5, "keep_pos": 0.8}
    assert run_fast(wide, **params) is None  # over MAX_LEVELS: numpy doubles the step
    same_bytes(wide, **params)
    same_bytes(np.zeros((2, 3, 4), np.float32))  # all dropped


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1),
       shape=st.sampled_from([(1, 32, 16, 16), (2, 8, 5, 7), (1, 3, 64), (4, 1, 1, 1),
                              (1, 1, 9, 11), (3, 10)]),
       kind=st.sampled_from(["relu", "normal", "negative", "sparse", "ties"]),
       quality=st.sampled_from(codecs.codec_class("slicer").quality_grid),
       n_blocks=st.sampled_from([1, 4]), axis=st.sampled_from([1, -1, 7]))
def test_fast_encoder_same_bytes(seed, shape, kind, quality, n_blocks, axis) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x - 0.3, 0)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "sparse":
        x = np.where(rng.random(shape) < 0.1, x, 0).astype(np.float32)
    elif kind == "ties":
        x = np.round(x)
    same_bytes(x, quality=quality, n_blocks=n_blocks, axis=axis)

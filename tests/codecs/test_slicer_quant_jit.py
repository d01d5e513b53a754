"""SLICER's compiled quantization gives the numpy path's grids, keep mask and levels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import _slicer_quant as sq

from .jit_paths import jit_path

pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")


def both(codec, x: np.ndarray):
    with jit_path(False):
        ref = codec._quantize(x)
    with jit_path(True):
        got = codec._quantize(x)
    return ref, got


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6000),
       kind=st.sampled_from(["normal", "relu", "negative", "ties", "outliers", "tiny"]),
       quality=st.sampled_from(codecs.codec_class("slicer").quality_grid),
       n_blocks=st.sampled_from([1, 4]))
def test_same_grids_mask_and_levels(seed, n, kind, quality, n_blocks) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x - 0.2, 0)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "outliers":
        x[::97] *= 1000
    elif kind == "tiny":
        x *= np.float32(1e-30)
    codec = codecs.get("slicer", quality=quality, n_blocks=n_blocks)
    (g0, k0, v0), (g1, k1, v1) = both(codec, x)
    assert np.array_equal(k0, k1) and np.array_equal(v0, v1) and v0.dtype == v1.dtype
    assert len(g0) == len(g1)
    for (s0, a), (s1, b) in zip(g0, g1, strict=True):
        assert s0 == s1 and a.t == b.t and a.offset == b.offset
        for f in ("starts", "steps", "cells"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f


def test_fast_path_is_taken_and_declines_what_needs_blocks() -> None:
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    assert sq.quantize_fast(x, 0.8, 0.8, 2.5, 4) is not None
    x[:8] *= 1e5  # a tail of outliers: magnitude blocks, the numpy path's job
    assert sq.quantize_fast(x, 0.8, 0.8, 2.5, 4) is None
    with pytest.raises(ValueError, match="NaN or inf"):
        sq.quantize_fast(np.array([1.0, np.nan], np.float32), 0.8, 0.8, 2.5, 4)

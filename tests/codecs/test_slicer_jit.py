"""The compiled slicer path writes the same bytes and decodes to the same arrays as numpy."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import _slicer_jit as jit
from splitcomp.codecs import _slicer_mask as mk

from .golden import GOLDEN_PATH, golden_inputs
from .jit_paths import jit_path as path

pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")

QUALITIES = codecs.codec_class("slicer").quality_grid


def both_ways(x: torch.Tensor, **params) -> tuple[bytes, bytes]:
    codec = codecs.get("slicer", **params)
    with path(False):
        ref = codec.encode(x)
    with path(True):
        got = codec.encode(x)
    return ref, got


def decode_both(blob: bytes) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    with path(False):
        ref = codecs.decode(blob)
    with path(True):
        got = codecs.decode(blob)
    return ref, got


def assert_same(x: torch.Tensor, **params) -> None:
    ref, got = both_ways(x, **params)
    assert got == ref, f"compiled stream differs for {tuple(x.shape)} {params}"
    a, b = decode_both(ref)
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and torch.equal(u, v)


def test_compiled_path_is_on_by_default_when_numba_imports() -> None:
    if __import__("os").environ.get("SPLITCOMP_SLICER_JIT") == "0":
        pytest.skip("SPLITCOMP_SLICER_JIT=0 selects the numpy path in this run")
    assert jit.active()
    jit.warm_up()


def test_kernels_actually_run() -> None:
    """The compiled path is taken (a broken kernel must fail, not fall back silently)."""
    x = torch.randn(1, 2, 5, 7)
    saved = jit._KERNELS
    jit._KERNELS = None
    try:
        jit._build = _broken  # type: ignore[assignment]
        with path(True), pytest.raises(RuntimeError, match="kernel"):
            codecs.get("slicer").encode(x)
    finally:
        jit._build = _real_build
        jit._KERNELS = saved


_real_build = jit._build


def _broken():
    raise RuntimeError("kernel called")


def test_groups_round_trip_with_order_and_padding() -> None:
    """The numpy path's grouped mask runs (a stable order, runs padded to 4 bits) come back
    through the coder as they went in."""
    from splitcomp.codecs.entropy.coder import AnsReader, AnsWriter

    rng = np.random.default_rng(3)
    key = rng.integers(0, 20, 1001).astype(np.uint8)
    codes = rng.integers(1, 256, 20).astype(np.uint8)
    bits = rng.random(1001) < 0.3
    groups = mk.phase_b_groups(key, codes)
    for compiled in (False, True):  # either coder backend
        with path(compiled):
            writer = AnsWriter()
            for symbols, model in groups.encode(bits):
                assert symbols.dtype == np.int32
                writer.add_model(symbols, model)
            reader = AnsReader(writer.finish())
            assert np.array_equal(groups.decode(reader), bits) and reader.is_empty()


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
specials = st.sampled_from(["none", "zeros", "relu", "const", "outliers", "tiny"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    kind=specials,
    seed=st.integers(0, 2**31 - 1),
    quality=st.sampled_from(QUALITIES),
    n_blocks=st.sampled_from([1, 4, 16]),
    axis=st.sampled_from([1, -1, 7]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_hypothesis_tensors_same_bytes(shape, kind, seed, quality, n_blocks, axis, dtype) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "zeros":
        x[:] = 0
    elif kind == "relu":
        x = np.maximum(x - 0.3, 0)
    elif kind == "const":
        x[:] = -1.5
    elif kind == "outliers":
        x.reshape(-1)[:: 7] *= 1000.0
    elif kind == "tiny":
        x *= 1e-30
    assert_same(torch.from_numpy(x).to(dtype), quality=quality, n_blocks=n_blocks, axis=axis)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_refused_on_both_paths(bad: float) -> None:
    x = torch.randn(1, 4, 6, 6)
    x[0, 1, 2, 3] = bad
    codec = codecs.get("slicer")
    for compiled in (False, True):
        with path(compiled), pytest.raises(ValueError, match="NaN or inf"):
            codec.encode(x)


@pytest.mark.parametrize("quality", QUALITIES)
def test_larger_maps_same_bytes(quality: float) -> None:
    """Feature-map sizes (ResNet-20 layer2, an LLM row with outlier channels)."""
    g = torch.Generator().manual_seed(int(quality * 100))
    relu = (torch.randn(2, 32, 16, 16, generator=g) * 0.8 - 0.3).relu()
    assert_same(relu, quality=quality)
    llm = torch.randn(1, 33, 96, generator=g)
    llm[..., [3, 50]] *= 100.0
    assert_same(llm, quality=quality, axis=-1)


def test_golden_inputs_and_streams_same_on_both_paths() -> None:
    for tensors in golden_inputs().values():
        for q in (None, *QUALITIES):
            params = {} if q is None else {"quality": q}
            for x in tensors:
                assert_same(x, **params)
    if not GOLDEN_PATH.exists():
        pytest.skip("no golden.json")
    golden = json.loads(GOLDEN_PATH.read_text())
    slicer = [e for e in golden.values() if e["codec"] == "slicer"]
    assert slicer, "no slicer golden streams"
    for entry in slicer:
        a, b = decode_both(base64.b64decode(entry["small_b64"]))
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)


def test_env_var_selects_numpy_path() -> None:
    import subprocess
    import sys

    code = "from splitcomp.codecs import _slicer_jit as j; print(j.active())"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**__import__("os").environ, "SPLITCOMP_SLICER_JIT": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        assert out.stdout.strip() == want


def test_numba_that_fails_to_import_falls_back_to_numpy() -> None:
    x = torch.randn(1, 8, 6, 6)
    with path(False):
        ref = codecs.get("slicer").encode(x)
    saved = jit._KERNELS
    jit._KERNELS = None

    def no_numba():
        raise ImportError("numba is broken here")

    try:
        jit._build = no_numba  # type: ignore[assignment]
        with path(True):
            assert codecs.get("slicer").encode(x) == ref
            assert not jit.active()
    finally:
        jit._build = _real_build
        jit._KERNELS = saved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), edits=st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 2**31 - 1), st.integers(0, 255)),
    min_size=1, max_size=3))
def test_corrupt_payloads_fail_or_decode_alike(seed, edits) -> None:
    """The fused decoder accepts exactly what the numpy decoder accepts, with equal output;
    what one refuses the other refuses with a BitstreamError (never a crash)."""
    rng = np.random.default_rng(seed)
    shape, axis = [((1, 6, 8, 8), 1), ((1, 5, 24), -1), ((3, 7), 7)][seed % 3]
    x = rng.standard_normal(shape).astype(np.float32)
    if seed % 2:
        x = np.maximum(x, 0)
    codec = codecs.get("slicer", quality=float(rng.choice(QUALITIES)), axis=axis)
    data = bytearray(codec.encode_array(x))
    for kind, where, value in edits:
        if not data:
            break
        i = where % len(data)
        if kind == 0:
            data[i] ^= 1 << (value % 8)
        elif kind == 1:
            data = data[:i]
        else:
            data[i] = value
    results = []
    for compiled in (False, True):
        with path(compiled):
            try:
                results.append(codec.decode_array(memoryview(bytes(data)), shape,
                                                  codecs.DecodeLimits()))
            except codecs.BitstreamError:
                results.append(None)
    ref, got = results
    assert (ref is None) == (got is None)
    if ref is not None:
        assert np.array_equal(ref, got)


def test_numba_cache_folder_is_keyed_by_the_kernel_sources(monkeypatch, tmp_path) -> None:
    """numba checks a cached kernel against its own file only: a folder per digest of every
    kernel source (and the constants they import) keeps a changed callee from loading stale."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")  # restored (or removed) when the test ends
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("SPLITCOMP_CACHE", str(tmp_path))
    jit._numba_cache()
    digest = jit.kernels_digest()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "numba" / digest)
    assert len(digest) == 12 and int(digest, 16) >= 0
    here = Path(jit.__file__).parent
    names = {p.name for pattern in jit.KERNEL_SOURCES for p in here.glob(pattern)}
    assert {"_ans_kernels.py", "_rows_kernels.py", "_slicer_fused_kernels.py",
            "_tokenwise_predict_kernels.py", "_ans_jit.py"} <= names


def one_lane_payload(codec, x: np.ndarray) -> bytes:
    """``x`` in the layout before two lanes (flags bit 4 clear, one rANS stack), as the
    numpy encoder wrote it then: its lane writer swapped for the one-stack writer."""
    from splitcomp.codecs import slicer
    from splitcomp.codecs.entropy.coder import AnsWriter

    saved = slicer.LaneWriter, slicer._FLAG_LANES
    slicer.LaneWriter, slicer._FLAG_LANES = AnsWriter, 0
    try:
        with path(False):
            return codec.encode_array(x)
    finally:
        slicer.LaneWriter, slicer._FLAG_LANES = saved


@pytest.mark.parametrize("seed", range(12))
def test_one_lane_streams_decode_alike(seed: int) -> None:
    """Streams of the single-stack layout (before flags bit 4) decode on both paths to the
    floats their two-lane encoding decodes to; corrupted, both paths agree (or both refuse)."""
    rng = np.random.default_rng(seed)
    shape, axis = [((1, 6, 8, 8), 1), ((1, 5, 24), -1), ((3, 7), 7), ((2, 8, 5, 5), 1)][seed % 4]
    x = rng.standard_normal(shape).astype(np.float32)
    if seed % 2:
        x = np.maximum(x, 0)
    if seed % 3 == 0:
        x.reshape(-1)[0] = 1e4  # magnitude blocks
    codec = codecs.get("slicer", quality=float(QUALITIES[seed % len(QUALITIES)]), axis=axis)
    old = one_lane_payload(codec, x)
    assert not old[0] & 16
    new = codec.encode_array(x)
    assert new == b"\0" or new[0] & 16
    limits = codecs.DecodeLimits()
    want = codec.decode_array(memoryview(new), shape, limits)
    for data in [old] + [bytes(old[:i]) + bytes([old[i] ^ (1 << (i % 8))]) + old[i + 1:]
                         for i in rng.integers(0, len(old), 6)] + [old[:-1], old + bytes(4)]:
        results = []
        for compiled in (False, True):
            with path(compiled):
                try:
                    results.append(codec.decode_array(memoryview(data), shape, limits))
                except codecs.BitstreamError:
                    results.append(None)
        assert (results[0] is None) == (results[1] is None)
        if results[0] is not None:
            assert np.array_equal(results[0], results[1])
        if data is old:
            assert np.array_equal(results[0], want)

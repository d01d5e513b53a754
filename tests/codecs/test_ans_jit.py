"""The compiled rANS kernels write and read constriction's words exactly (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp.codecs.entropy.coder import AnsWriter, categorical

pytest.importorskip("numba", reason="numba not installed: constriction is the only coder")
constriction = pytest.importorskip("constriction")

from splitcomp.codecs.entropy import _ans_jit  # noqa: E402

K = _ans_jit.kernels()


def cdf_of(freqs: np.ndarray, pad_to: int = 0) -> np.ndarray:
    cdf = np.full(max(freqs.size + 1, pad_to), 1 << 24, np.uint32)
    assert K.quantized_cdf(freqs, cdf)
    return cdf


def random_parts(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.choice([2, 7, 16, 17, 64, 65, 300]))
        freqs = rng.integers(0, 1000, n).astype(np.float64)
        if rng.random() < 0.3:  # very skewed rows: most symbols at the smallest probability
            freqs = (rng.integers(0, 4, n) ** rng.integers(0, 30, n)).astype(np.float64)
        freqs[rng.integers(0, n)] += 1
        size = int(rng.integers(0, 1500)) if rng.random() < 0.8 else 3000  # long: slot tables
        sym = rng.choice(n, size, p=freqs / freqs.sum()).astype(np.int32)
        parts.append((freqs, sym))
    return parts


def constriction_words(parts) -> np.ndarray:
    w = AnsWriter()
    for freqs, sym in parts:
        w.add_model(sym, categorical(freqs))
    return np.frombuffer(w.finish(), "<u4").copy()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_same_words_and_symbols_as_constriction(seed: int) -> None:
    parts = random_parts(seed)
    ref = constriction_words(parts)
    buf, state = np.zeros(ref.size + 4, np.uint32), np.zeros(2, np.uint64)
    for freqs, sym in reversed(parts):
        assert K.write(buf, state, cdf_of(freqs), sym, 0, sym.size)
    n = K.finish(buf, state)
    assert np.array_equal(buf[:n], ref)
    state = np.zeros(2, np.uint64)
    assert K.reader_init(ref, state)
    for freqs, sym in parts:
        out = np.zeros(sym.size, np.int32)
        K.read(ref, state, cdf_of(freqs, pad_to=17), freqs.size, sym.size, out, 0)
        assert np.array_equal(out, sym)
    assert state[0] == 0  # constriction's is_empty()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), flip=st.integers(0, 2**31 - 1))
def test_corrupt_words_decode_as_constriction_does(seed: int, flip: int) -> None:
    parts = random_parts(seed)
    words = constriction_words(parts)
    if words.size == 0:
        return
    words[flip % words.size] ^= np.uint32(1 << (flip % 32))
    state = np.zeros(2, np.uint64)
    ok = K.reader_init(words, state)
    if words[-1] == 0:  # constriction refuses a stream ending in a zero word
        assert not ok
        with pytest.raises(ValueError):
            constriction.stream.stack.AnsCoder(words)
        return
    ref = constriction.stream.stack.AnsCoder(words.copy())
    for freqs, sym in parts:
        out = np.zeros(sym.size, np.int32)
        K.read(words, state, cdf_of(freqs), freqs.size, sym.size, out, 0)
        want = ref.decode(categorical(freqs).native(), sym.size) if sym.size else out
        assert np.array_equal(out, want)
    assert (state[0] == 0) == ref.is_empty()


def test_refusals() -> None:
    cdf = np.zeros(8, np.uint32)
    assert not K.quantized_cdf(np.array([5.0]), cdf)  # one symbol
    assert not K.quantized_cdf(np.zeros(4), cdf)  # no mass
    assert not K.quantized_cdf(np.ones(9), cdf)  # no room for the table
    buf, state = np.zeros(1, np.uint32), np.zeros(2, np.uint64)
    assert not K.write(buf, state, cdf_of(np.ones(4)), np.array([4], np.int32), 0, 1)
    assert not K.write(buf, state, cdf_of(np.ones(4)), np.array([-1], np.int32), 0, 1)
    many = np.ones(200, np.int32)  # 200 symbols at 2 bits need more than one word
    assert not K.write(buf, state, cdf_of(np.ones(4)), many, 0, many.size)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_writer_and_reader_backends_agree(seed: int) -> None:
    """AnsWriter/AnsReader give the same words and symbols with constriction and compiled,
    models of every kind (a large alphabet takes the slot-table search) and per-symbol rows."""
    from splitcomp.codecs import _slicer_jit as jit
    from splitcomp.codecs.entropy.coder import AnsReader

    rng = np.random.default_rng(seed)
    parts = random_parts(seed)
    rows = rng.random((int(rng.integers(0, 40)), int(rng.integers(2, 30)))) + 1e-6
    rows /= rows.sum(axis=1, keepdims=True)
    row_sym = np.array([rng.choice(rows.shape[1], p=r) for r in rows], np.int32)
    out = {}
    old = jit.ENABLED
    try:
        for compiled in (False, True):
            jit.ENABLED = compiled
            w = AnsWriter()
            for freqs, sym in parts:
                w.add_model(sym, categorical(freqs))
            w.add_rows(row_sym, rows)
            data = w.finish()
            r = AnsReader(data)
            for freqs, sym in parts:
                assert np.array_equal(r.read_model(sym.size, categorical(freqs)), sym)
            assert np.array_equal(r.read_rows(rows), row_sym)
            assert r.is_empty()
            out[compiled] = data
    finally:
        jit.ENABLED = old
    assert out[False] == out[True]

"""The fast slicer decoder's pieces equal their references: the slot-table rANS read
(:func:`slot_entries` + :func:`read_entries`) against :func:`read` (same symbols, same state,
on valid and on arbitrary words), the nibble reader against ``read`` of the 16-ary mask
models, and the fused decoder against the numpy path on the shapes and streams its new
loops single out (no kept phase-B position, more than 64 levels, no value contexts)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs

from .jit_paths import jit_path

pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")


def ans():
    from splitcomp.codecs.entropy import _ans_jit

    return _ans_jit.kernels()


def fused():
    from splitcomp.codecs import _slicer_fused as f

    return f.kernels()


def padded_cdf(freqs: np.ndarray) -> np.ndarray:
    cdf = np.full(max(freqs.size + 1, 17), 1 << 24, np.uint32)
    assert ans().quantized_cdf(freqs.astype(np.float64), cdf)
    return cdf


def both_reads(words: np.ndarray, cdf: np.ndarray, n_sym: int, bits: int, count: int):
    """(symbols, state) of ``read`` and of ``read_entries`` over the same words."""
    k = ans()
    tbl = np.empty(1 << bits, np.int64)
    k.slot_entries(cdf, n_sym, bits, tbl)
    out = []
    for fast in (False, True):
        st_ = np.zeros(2, np.uint64)
        k.reader_init(words, st_)
        sym = np.full(count, -1, np.int32)
        if fast:
            k.read_entries(words, st_, cdf, tbl, bits, count, sym, 0)
        else:
            k.read(words, st_, cdf, n_sym, count, sym, 0)
        out.append((sym, st_.copy()))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_sym=st.integers(2, 64), bits=st.sampled_from([8, 10]),
       zeros=st.floats(0.0, 0.9), skew=st.floats(0.0, 12.0))
def test_slot_table_read_equals_search(seed, n_sym, bits, zeros, skew) -> None:
    """On a valid stream and on random words (a corrupt stream): the same symbols and the
    same final state; absent symbols (frequency 0) and very skewed models included."""
    rng = np.random.default_rng(seed)
    freqs = np.exp(-skew * rng.random(n_sym) ** 2) * (rng.random(n_sym) >= zeros)
    freqs[rng.integers(n_sym)] += 1.0
    cdf = padded_cdf(freqs)
    count = int(rng.integers(1, 600))
    sym = rng.choice(n_sym, size=count, p=(freqs + 1e-3) / (freqs + 1e-3).sum())
    buf = np.zeros(count + 8, np.uint32)
    state = np.zeros(2, np.uint64)
    assert ans().write(buf, state, cdf[: n_sym + 1], sym.astype(np.int32), 0, count)
    valid = buf[: ans().finish(buf, state)].copy()
    junk = rng.integers(1, 2**32, size=int(rng.integers(1, 40)), dtype=np.uint64)
    for words in (valid, junk.astype(np.uint32)):
        (a, sa), (b, sb) = both_reads(words, cdf, n_sym, bits, count)
        assert np.array_equal(a, b) and np.array_equal(sa, sb)
    (a, _), _ = both_reads(valid, cdf, n_sym, bits, count)
    assert np.array_equal(a, sym)


def test_slot_entries_mark_split_slots() -> None:
    """A slot holding one symbol: its symbol, start and probability; one a boundary splits:
    ``-1 - `` the symbol at its start."""
    cdf = padded_cdf(np.array([1.0, 1e-4, 1e-4, 2.0]))
    tbl = np.empty(1 << 8, np.int64)
    ans().slot_entries(cdf, 4, 8, tbl)
    drop = 24 - 8
    for i, e in enumerate(tbl):
        lo, hi = i << drop, (i + 1) << drop
        s = int(np.searchsorted(cdf[:5], lo, side="right")) - 1
        if cdf[s + 1] < hi:
            assert e == -1 - s
        else:
            assert (e & 0xFF, (e >> 8) & 0x1FFFFFF, e >> 33) == (s, cdf[s], cdf[s + 1] - cdf[s])


@pytest.mark.parametrize("code", [1, 7, 64, 128, 200, 255])
@pytest.mark.parametrize("lanes", [1, 2])
def test_nibble_reader_equals_read(code: int, lanes: int) -> None:
    """The mask reader's bits are ``read``'s 16-ary symbols, low bit first, on random words:
    one lane, or two (symbol ``k`` from lane ``k & 1``, each lane its own stack)."""
    from splitcomp.codecs import _slicer_lanes_kernels as m

    k = fused()
    rng = np.random.default_rng(code)
    w = [rng.integers(1, 2**32, size=64, dtype=np.uint64).astype(np.uint32) for _ in range(2)]
    count = 301
    sym = np.empty(count, np.int32)
    ref = np.zeros(4, np.uint64)
    for lane in range(lanes):
        ans().reader_init(w[lane], ref[2 * lane : 2 * lane + 2])
        part = np.empty(len(range(lane, count, lanes)), np.int32)
        ans().read(w[lane], ref[2 * lane : 2 * lane + 2], k.quad[code], 16, part.size, part, 0)
        sym[lane::lanes] = part
    st = np.zeros(4, np.uint64)
    ans().reader_init(w[0], st[:2])
    if lanes == 2:
        ans().reader_init(w[1], st[2:])
    bits = np.empty(4 * count, np.uint8)
    m.nibbles(lanes, w[0], w[1][:0] if lanes == 1 else w[1], st, k.quad[code],
              k.quad_lut[code], count, bits, 0)
    want = ((sym[:, None] >> np.arange(4)) & 1).reshape(-1)
    assert np.array_equal(bits, want) and np.array_equal(st, ref)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 300])
def test_two_lane_levels_equal_read(fast: bool, count: int) -> None:
    """Two lanes: symbol ``k`` is ``read``'s next symbol of lane ``k & 1``, by the slot
    table or the search, and both lanes' states end where ``read`` leaves them."""
    from splitcomp.codecs import _slicer_lanes_kernels as m

    rng = np.random.default_rng(count)
    cdf = padded_cdf(rng.integers(1, 50, 12).astype(np.float64))
    tbl = np.empty(1 << m.level_bits, np.int64)
    ans().slot_entries(cdf, 12, m.level_bits, tbl)
    w = [rng.integers(1, 2**32, size=40, dtype=np.uint64).astype(np.uint32) for _ in range(2)]
    want = np.empty(count, np.int32)
    ref = np.zeros(4, np.uint64)
    for lane in range(2):
        ans().reader_init(w[lane], ref[2 * lane : 2 * lane + 2])
        part = np.empty(len(range(lane, count, 2)), np.int32)
        ans().read(w[lane], ref[2 * lane : 2 * lane + 2], cdf, 12, part.size, part, 0)
        want[lane::2] = part
    st = np.zeros(4, np.uint64)
    ans().reader_init(w[0], st[:2])
    ans().reader_init(w[1], st[2:])
    got = np.full(count + 1, -1, np.int32)
    m.levels(2, w[0], w[1], st, cdf, tbl, fast, 12, count, got, 1)
    assert np.array_equal(got[1:], want) and np.array_equal(st, ref)


def decode_both(codec, payload: bytes, shape):
    out = []
    for compiled in (False, True):
        with jit_path(compiled):
            try:
                out.append(codec.decode_array(memoryview(payload), shape,
                                              codecs.DecodeLimits()))
            except codecs.BitstreamError:
                out.append(None)
    return out


@pytest.mark.parametrize("case", ["no_kept_b", "many_levels", "one_level", "no_context",
                                  "odd_planes"])
def test_fused_decoder_edge_streams(case: str) -> None:
    """Streams the new loops treat apart decode to the numpy path's floats, and each
    truncation of them fails on both paths or on neither."""
    rng = np.random.default_rng(3)
    shape, axis, params = (1, 6, 8, 8), 1, {}
    x = rng.standard_normal(shape).astype(np.float32)
    if case == "no_kept_b":  # only phase-A positions (y + x even) kept
        yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        x = np.where(((yy + xx) % 2 == 0)[None, None], np.abs(x) + 1, 0).astype(np.float32)
    elif case == "many_levels":  # fine grids: more than 64 levels, the search path
        x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
        shape, params = x.shape, {"quality": 1.0, "distortion": 0.05}
    elif case == "one_level":
        x = np.where(rng.random(shape) < 0.5, 1.0, 0.0).astype(np.float32)
    elif case == "no_context":
        x, shape, axis = x.reshape(3, 128), (3, 128), 7
    else:
        x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
        shape = x.shape
    codec = codecs.get("slicer", axis=axis, **params)
    payload = codec.encode_array(x)
    ref, got = decode_both(codec, payload, shape)
    assert ref is not None and got is not None and np.array_equal(ref, got)
    for cut in range(0, len(payload), max(len(payload) // 40, 1)):
        ref, got = decode_both(codec, payload[:cut], shape)
        assert (ref is None) == (got is None)
        if ref is not None:
            assert np.array_equal(ref, got)

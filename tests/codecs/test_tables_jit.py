"""The compiled table, cost-model and one-pass coder kernels give the numpy path's results.

``splitcomp.codecs.entropy._tables_kernels`` / ``_choose_kernels`` / ``_rows_kernels`` back the
compiled path of ``FreqTable``, ``encode_symbols`` / ``decode_symbol_indices`` (tokenwise,
bottleneck) and the ``rans`` codec. The numpy path is the reference: the same bytes on encode,
the same arrays on decode, and a BitstreamError on exactly the corrupt inputs it refuses.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import _slicer_jit
from splitcomp.codecs.bytes_io import Reader
from splitcomp.codecs.entropy import tables
from splitcomp.codecs.errors import BitstreamError, DecodeLimits

from .jit_paths import jit_path as jit

pytest.importorskip("numba", reason="numba not installed: only the numpy path exists")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = DecodeLimits()


def both(fn):
    """``fn()`` on the numpy path and on the compiled path: ("ok", value) or ("error", type)."""
    out = []
    for on in (False, True):
        with jit(on):
            try:
                out.append(("ok", fn()))
            except (BitstreamError, ValueError) as e:
                out.append(("error", type(e)))
    return out


def assert_same(results) -> None:
    (kind_a, a), (kind_b, b) = results
    assert kind_a == kind_b, results
    if kind_a == "error":
        assert a is b
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_same([("ok", x), ("ok", y)])
    else:
        assert a == b


def corruptions(data: bytes, rng: np.random.Generator) -> list[bytes]:
    """Truncations, bit flips, a byte overwritten, a byte appended."""
    out = [data + b"\x00", data + bytes([int(rng.integers(0, 256))])]
    if data:
        out += [data[: int(rng.integers(0, len(data)))], data[:-1]]
        for flips in (1, 2, 5):
            d = bytearray(data)
            for _ in range(flips):
                d[int(rng.integers(0, len(d)))] ^= 1 << int(rng.integers(0, 8))
            out.append(bytes(d))
        d = bytearray(data)
        d[int(rng.integers(0, min(len(d), 12)))] = int(rng.integers(0, 256))
        out.append(bytes(d))
    return out


# -- kernels ------------------------------------------------------------------------------
def test_pairwise_sum_is_numpys() -> None:
    with jit(True):
        assert _slicer_jit.active()
        from splitcomp.codecs.entropy import _tables_kernels as k
    rng = np.random.default_rng(0)
    for n in [*range(0, 300), 1000, 4097, 65537, 300001]:
        a = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 6)
        assert k.np_sum(a) == a.sum()


def test_log2_table_is_numpys() -> None:
    lg = tables._log2_table(1 << 16)
    c = np.arange(1 << 16, dtype=np.float64)
    assert np.array_equal(c * lg[: c.size], c * np.log2(np.maximum(c, 1)))
    assert tables._log2_table(tables._LG_CAP + 1) is None


# -- frequency tables ---------------------------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), rows=st.sampled_from([1, 1, 2, 7, 40]),
       m=st.integers(1, 600), spread=st.sampled_from([1, 2, 50, 1 << 30]))
def test_freq_table_fit_bytes_read(seed: int, rows: int, m: int, spread: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.sort(rng.choice(m * spread, m, replace=False)).astype(np.int64)
    counts = rng.integers(0, 4, (rows, m)) ** rng.integers(0, 14, (rows, m))
    counts[:, int(rng.integers(0, m))] += 1
    cap = int(rng.choice([tables.MAX_ALPHABET, 4 * m + 7, 64]))

    def fit():
        t = tables.FreqTable.fit(alphabet, counts, cap)
        return t.to_bytes(), t.k, t.shift, t.codes.copy(), t.bins.copy()

    results = both(fit)
    assert_same(results)
    if results[0][0] != "ok":
        return
    data = results[0][1][0]
    assert_same(both(lambda: tables.estimate_table_bits(counts, alphabet)))
    for blob in [data, *corruptions(data, rng)]:
        def read(blob=blob):
            r = Reader(blob)
            t = tables.FreqTable.read(r, rows, tables.MAX_SYMBOL, cap)
            return r.pos, t.k, t.shift, t.bins.copy(), t.codes.copy(), t.freqs(rows - 1).copy()

        assert_same(both(read))


def test_fit_refuses_bad_alphabets_on_both_paths() -> None:
    for alphabet, counts in [(np.array([3, 2]), np.array([1, 1])), (np.zeros(0), np.zeros(0)),
                             (np.array([-1, 2]), np.array([1, 1]))]:
        assert_same(both(lambda a=alphabet, c=counts: tables.FreqTable.fit(a, c).to_bytes()))


# -- one-call form (tokenwise, bottleneck) ------------------------------------------------
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 3000),
       top=st.sampled_from([0, 1, 3, 40, 1000, 70000, 1 << 30]))
def test_encode_decode_symbols(seed: int, n: int, top: int) -> None:
    rng = np.random.default_rng(seed)
    u = np.minimum(rng.geometric(rng.uniform(0.01, 0.9), n) - 1, top)
    if rng.random() < 0.2 and n:
        u[int(rng.integers(0, n))] = top  # one far outlier: the wide histogram
    u = u.astype(rng.choice([np.int64, np.int32, np.uint16 if top < 1 << 16 else np.int64]))
    results = both(lambda: tables.encode_symbols(u))
    assert_same(results)
    data = results[0][1]
    for blob in [data, *corruptions(data, rng)]:
        assert_same(both(lambda b=blob: tables.decode_symbol_indices(b, n, max(top, 1))))
        assert_same(both(lambda b=blob: tables.decode_symbols(b, n)))


# -- codecs -------------------------------------------------------------------------------
def tensor(seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 9, int(rng.integers(1, 5))))
    if kind == "runs":
        shape = (*shape[:-1], int(rng.integers(64, 700)))
    if kind == "long":
        shape = (2, int(rng.integers(1000, 6000)))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "constant":
        x[...] = np.float32(rng.choice([0.0, 1.5, -3e30]))
    elif kind == "extreme":
        scale = 3e38 / max(float(np.abs(x).max()), 1e-30)
        x = (x.astype(np.float64) * scale).clip(-3.4e38, 3.4e38).astype(np.float32)
        x[..., 0] = np.float32(rng.choice([3.4e38, -3.4e38, 1e-38]))
    elif kind == "outliers":
        x.reshape(-1)[:: max(1, x.size // 3)] *= np.float32(1e5)
    elif kind == "empty":
        x = x[..., :0]
    elif kind == "runs":  # zeros in long runs: the cost model picks runs mode
        flat = x.reshape(-1)
        run = int(rng.integers(4, 64))
        zero = np.repeat(rng.random(-(-flat.size // run)) < rng.uniform(0.2, 0.9), run)
        flat[zero[: flat.size]] = 0
        if rng.random() < 0.5:
            flat[...] = np.abs(flat)
    return x


KINDS = ["normal", "relu", "constant", "extreme", "outliers", "empty", "long", "runs", "runs"]


def test_runs_kind_reaches_runs_mode() -> None:
    """The "runs" tensors do make the rans cost model pick runs mode (flag bit 0)."""
    modes = [codecs.get("rans").encode_array(tensor(seed, "runs"))[:1] for seed in range(40)]
    assert sum(m[0] & 1 for m in modes if m) >= 10


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(KINDS),
       bits=st.integers(2, 16), clip=st.sampled_from([1.0, 0.99, 0.5]),
       coder=st.sampled_from(["ans", "ans", "pco"]))
def test_rans_same_bytes_and_arrays(seed: int, kind: str, bits: int, clip: float,
                                    coder: str) -> None:
    x = tensor(seed, kind)
    codec_round_trips_alike(codecs.get("rans", bits=bits, clip=clip, coder=coder), x, seed)


def codec_round_trips_alike(codec, x: np.ndarray, seed: int) -> None:
    """Both paths encode ``x`` to the same bytes, and decode it and its corruptions to the
    same arrays or the same error."""
    results = both(lambda: codec.encode_array(x))
    assert_same(results)
    assert results[0][0] == "ok"
    payload = results[0][1]
    rng = np.random.default_rng(seed)
    for blob in [payload, *corruptions(payload, rng)]:
        assert_same(both(lambda b=blob: codec.decode_array(memoryview(b), x.shape, LIMITS)))


def test_rans_refuses_non_finite_on_both_paths() -> None:
    codec = codecs.get("rans")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((3, 5), np.float32)
        x[1, 2] = bad
        assert_same(both(lambda x=x: codec.encode_array(x)))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(KINDS),
       level=st.integers(-8, 16))
def test_tokenwise_same_bytes_and_arrays(seed: int, kind: str, level: int) -> None:
    x = tensor(seed, kind)
    if kind == "extreme":
        x = x / np.float32(1e6)  # tokenwise steps overflow near float32's range: out of scope
    codec_round_trips_alike(codecs.get("tokenwise", level=level), x, seed)


def test_overlong_interval_varints() -> None:
    """Interval lists take varints of up to 9 bytes (read_varints), one of 10 is refused."""
    alphabet, counts = np.array([0, 1, 100, 101]), np.array([3, 1, 2, 9])
    with jit(False):
        data = tables.FreqTable.fit(alphabet, counts).to_bytes()
    head = bytes([data[0], 4, 0, 101, 0, 2])  # spec, m, first, width, layout 0, 2 intervals
    assert data.startswith(head + bytes([1, 97, 1]))  # lengths - 1 and the gap - 1
    codes = data[len(head) + 3 :]
    for body, ok in ((b"\x81" + b"\x80" * 7 + b"\x00", True), (b"\x81" + b"\x80" * 8 + b"\x00",
                                                                False)):
        blob = head + body + bytes([97, 1]) + codes
        results = both(lambda b=blob: tables.FreqTable.read(Reader(b), 1).bins.tolist())
        assert_same(results)
        assert (results[0] == ("ok", [0, 1, 100, 101])) if ok else results[0][0] == "error"


def test_cost_model_pieces_are_numpys() -> None:
    """The compiled cost-model pieces return numpy's integers and floats bit for bit."""
    from splitcomp.codecs import rans

    with jit(True):
        assert _slicer_jit.active()  # numba's cache folder set before the kernels load
    from splitcomp.codecs.entropy import _choose_kernels as ck

    rng = np.random.default_rng(3)
    codec = codecs.get("rans")
    for seed in range(60):
        x = tensor(seed, ["runs", "relu", "normal", "outliers"][seed % 4]).reshape(-1)
        if x.size == 0:
            continue
        lg = tables._log2_table(x.size + 1)
        clip = 1 - (int(x.size * 0.01) + 1) / x.size
        tail = int(x.size * (1.0 - clip))  # as rans._range derives it
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        with jit(False):
            ref_range = rans._range(x, lo, hi, clip)
            delta, _, _, q_min, _, u, alphabet, counts = codec._quantize(x)
        assert tail == 0 or ck.clip_range(x, lo, hi, tail) == ref_range
        inv = np.float32(1.0) / delta
        u2, ok, a2, c2 = ck.quantize(x, inv, q_min, max(4 * x.size, 1 << 16))
        assert np.array_equal(u2, u) and (not ok or (np.array_equal(a2, alphabet)
                                                      and np.array_equal(c2, counts)))
        r = tables.ranks(u, alphabet)
        zero = int(np.searchsorted(alphabet, -q_min))
        if zero < alphabet.size and alphabet[zero] == -q_min:
            first, lengths = tables_runs(r != zero)
            bits, parts = rans._run_tables(lengths, first)
            got = ck.run_tables(r, zero, lg)
            assert bool(got[0]) == first and np.array_equal(got[1], lengths) and got[2] == bits
            for i, part in enumerate(parts):
                for a, b in zip(part, got[4 + 3 * i : 7 + 3 * i], strict=True):
                    assert np.array_equal(a, b)
        assert ck.xlogx_sum(counts, lg) == float(rans._xlogx(counts).sum())
        rows = int(rng.choice([1, 2, 4]))
        if r.size % rows == 0:
            mat, mult = ck.block_counts(r, rows, alphabet.size)
            ref = np.stack([np.bincount(b, minlength=alphabet.size) for b in r.reshape(rows, -1)])
            assert np.array_equal(mat, ref) and np.array_equal(mult, np.bincount(ref.reshape(-1)))
            assert rans._sum_xlogx(mat, lg, mult) == rans._sum_xlogx(ref)


def tables_runs(mask: np.ndarray):
    from splitcomp.codecs.entropy import runs

    return runs(mask)

"""splitcomp.codecs.entropy: round trips (property-based), model determinism, hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitcomp.codecs import entropy as E
from splitcomp.codecs.bytes_io import Reader
from splitcomp.codecs.entropy import tables as T
from splitcomp.codecs.errors import BitstreamError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

symbol_arrays = st.one_of(
    hnp.arrays(np.int64, st.integers(0, 400), elements=st.integers(0, 7)),
    hnp.arrays(np.int64, st.integers(0, 400), elements=st.integers(0, 70_000)),
    hnp.arrays(np.int64, st.integers(0, 60), elements=st.integers(0, E.MAX_SYMBOL)),
)


@FAST
@given(symbol_arrays)
def test_symbols_round_trip(u: np.ndarray) -> None:
    data = E.encode_symbols(u)
    out = E.decode_symbols(data, u.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, u)


def test_symbols_close_to_entropy() -> None:
    rng = np.random.default_rng(0)
    u = np.minimum(rng.geometric(0.15, 200_000) - 1, 200)
    counts = np.bincount(u)
    p = counts[counts > 0] / u.size
    entropy_bytes = -(p * np.log2(p)).sum() * u.size / 8
    size = len(E.encode_symbols(u))
    assert entropy_bytes <= size <= entropy_bytes * 1.003 + 64


def test_single_symbol_costs_no_coded_bits() -> None:
    data = E.encode_symbols(np.full(10_000, 42))
    assert len(data) < 16
    np.testing.assert_array_equal(E.decode_symbols(data, 10_000), np.full(10_000, 42))


@FAST
@given(st.lists(st.integers(0, 2**63 - 1), max_size=80))
def test_varints_round_trip(values: list[int]) -> None:
    data = E.put_varints(values)
    r = Reader(data)
    out = E.read_varints(r, len(values))
    assert out.tolist() == values and r.remaining() == 0


def test_varints_reject_truncation_and_overlong() -> None:
    data = E.put_varints([5, 300, 2**40])
    with pytest.raises(BitstreamError):
        E.read_varints(Reader(data[:-1]), 3)
    with pytest.raises(BitstreamError):
        E.read_varints(Reader(b"\x80" * 12 + b"\x01"), 1)


@FAST
@given(st.integers(1, 16), st.data())
def test_pack_bits_round_trip_msb_first(width: int, data: st.DataObject) -> None:
    values = data.draw(
        hnp.arrays(np.int64, st.integers(0, 70), elements=st.integers(0, 2**width - 1))
    )
    packed = E.pack_bits(values, width)
    bits = [(int(v) >> (width - 1 - i)) & 1 for v in values for i in range(width)]
    assert packed == np.packbits(np.array(bits, np.uint8)).tobytes()
    np.testing.assert_array_equal(E.unpack_bits(packed, values.size, width), values)


def test_unpack_bits_checks_length_and_padding() -> None:
    packed = E.pack_bits(np.array([1, 2, 3]), 5)  # 15 bits: one spare bit
    with pytest.raises(BitstreamError):
        E.unpack_bits(packed + b"\0", 3, 5)
    with pytest.raises(BitstreamError):
        E.unpack_bits(packed[:-1] + bytes([packed[-1] | 1]), 3, 5)


@FAST
@given(hnp.arrays(np.bool_, st.integers(0, 300)))
def test_runs_round_trip(mask: np.ndarray) -> None:
    first, lengths = E.runs(mask)
    assert lengths.sum() == mask.size and (lengths >= 1).all()
    np.testing.assert_array_equal(E.mask_from_runs(first, lengths, mask.size), mask)


def test_mask_from_runs_rejects_bad_lengths() -> None:
    with pytest.raises(BitstreamError):
        E.mask_from_runs(True, np.array([3, 4]), 8)
    with pytest.raises(BitstreamError):
        E.mask_from_runs(False, np.array([3, 0, 5]), 8)


def test_histogram_and_ranks_with_far_outliers() -> None:
    u = np.array([5, 3, 3, 10**9, 5, 7, 10**12, 3])
    alphabet, counts = E.histogram(u)
    assert alphabet.tolist() == [3, 5, 7, 10**9, 10**12]
    assert counts.tolist() == [3, 2, 1, 1, 1]
    np.testing.assert_array_equal(alphabet[E.ranks(u, alphabet)], u)


def test_freq_codes_are_fixed_integers() -> None:
    """The model is defined by integer arithmetic: pin it (a change breaks old bitstreams)."""
    alphabet = np.arange(6)
    counts = np.array([[1, 2, 3, 100, 5000, 0]])
    table = E.FreqTable.fit(alphabet, counts)
    f = table.freqs(0)
    assert (f[:5] > 0).all() and f[5] == 0
    assert [T._code_freqs(np.arange(10), k).tolist() for k in (1, 2)] == [
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256],
        [0, 1, 1, 2, 3, 4, 6, 8, 11, 16],
    ]


@FAST
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**31))
def test_table_and_multi_stream_round_trip(rows: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.unique(rng.integers(0, 10 * m, m))
    streams = [
        alphabet[rng.integers(0, alphabet.size, int(rng.integers(0, 200)))] for _ in range(rows)
    ]
    counts = np.stack(
        [np.bincount(np.searchsorted(alphabet, s), minlength=alphabet.size) for s in streams]
    )
    table = E.FreqTable.fit(alphabet, counts)
    writer = E.AnsWriter()
    for row, s in enumerate(streams):
        writer.add(table.ranks(s), table.freqs(row))
    data = table.to_bytes() + writer.finish()
    r = Reader(data)
    got = E.FreqTable.read(r, rows, max_symbol=10 * m)
    assert (got.shift, got.k) == (table.shift, table.k)
    np.testing.assert_array_equal(got.symbols, table.symbols)
    np.testing.assert_array_equal(got.codes, table.codes)
    reader = E.AnsReader(r.take(r.remaining()))
    for row, s in enumerate(streams):
        np.testing.assert_array_equal(got.symbols[reader.read(s.size, got.freqs(row))], s)


def test_wide_bins_for_short_streams() -> None:
    """A few hundred values spread over many symbols: one code per bin of symbols is cheaper."""
    rng = np.random.default_rng(0)
    u = np.rint(np.abs(rng.normal(0, 60, 500))).astype(np.int64)
    alphabet, counts = E.histogram(u)
    assert E.FreqTable.fit(alphabet, counts).shift > 0
    assert E.FreqTable.fit(alphabet, counts * 10_000).shift == 0
    data = E.encode_symbols(u)
    np.testing.assert_array_equal(E.decode_symbols(data, u.size), u)


def _decodes_sanely(data: bytes, n: int, max_symbol: int) -> None:
    try:
        out = E.decode_symbols(data, n, max_symbol)
    except BitstreamError:
        return
    assert out.shape == (n,) and out.dtype == np.int64
    assert n == 0 or (out.min() >= 0 and out.max() <= max_symbol)


def test_decoder_survives_truncation_and_bit_flips() -> None:
    rng = np.random.default_rng(1)
    for u in (rng.integers(0, 5, 500), np.minimum(rng.geometric(0.02, 300), 900), np.arange(40)):
        data = E.encode_symbols(u)
        for cut in range(len(data)):
            _decodes_sanely(data[:cut], u.size, 1000)
        for _ in range(300):
            b = bytearray(data)
            b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
            _decodes_sanely(bytes(b), u.size, 1000)


@FAST
@given(st.binary(max_size=200), st.integers(0, 5000))
def test_decoder_survives_random_bytes(data: bytes, n: int) -> None:
    _decodes_sanely(data, n, 2**20)


def test_hostile_table_is_refused_before_allocating() -> None:
    # claims 2**40 symbols, then 2**20 symbols spanning 2**50: both refused without allocating
    for fields in ([2**40, 0, 2**40, 2], [2**20, 0, 2**50, 1], [2**20, 0, 2**20 - 1, 2]):
        data = E.put_varints(fields[:3]) + bytes([fields[3]]) + b"\0" * 64
        with pytest.raises(BitstreamError):
            E.FreqTable.read(Reader(data), 1, max_symbol=2**30)
    with pytest.raises(BitstreamError):  # more rows than the payload could describe
        E.FreqTable.read(Reader(b"\x01\x00\x00\x02\x11\x00"), 10**9)


def test_ans_reader_rejects_partial_words() -> None:
    with pytest.raises(BitstreamError):
        E.AnsReader(b"\1\2\3")
    with pytest.raises(BitstreamError):  # constriction refuses data ending in a zero word
        E.AnsReader(b"\1\0\0\0\0\0\0\0")


@FAST
@given(hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 2**32 - 1)))
def test_pco_round_trip(u: np.ndarray) -> None:
    np.testing.assert_array_equal(E.pco_decode(E.pco_encode(u), u.size), u)


def test_pco_decoder_survives_corruption() -> None:
    rng = np.random.default_rng(2)
    u = np.minimum(rng.geometric(0.05, 3000), 300)
    data = E.pco_encode(u)
    for cut in range(0, len(data), 7):
        with pytest.raises(BitstreamError):
            E.pco_decode(data[:cut], u.size)
    with pytest.raises(BitstreamError):  # more values expected than the stream holds
        E.pco_decode(data, u.size + 1)
    with pytest.raises(BitstreamError):
        E.pco_decode(data, u.size, max_symbol=100)
    for _ in range(300):
        b = bytearray(data)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        try:
            out = E.pco_decode(bytes(b), u.size, max_symbol=1000)
        except BitstreamError:
            continue
        assert out.shape == u.shape and out.max() <= 1000

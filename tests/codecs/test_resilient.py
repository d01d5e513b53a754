"""The resilient stream mode and the bit-flipping channel: slices checked and concealed one by
one, the header still protected, existing streams unchanged, decoding never crashes on any
input (the registry-wide tests cover the codec's strict default)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits
from splitcomp.codecs import bottleneck as bn
from splitcomp.codecs.channel_errors import flip_bits, sample_rng, transmit
from splitcomp.codecs.container import RESILIENT_COMPACT_MAGIC, RESILIENT_MAGIC
from splitcomp.codecs.hostile import payload_of, stream
from splitcomp.codecs.resilient import CHECK_BYTES, concealing, crc16, decode_resilient
from splitcomp.plan.channel import Channel

from .test_bottleneck import laplace_tables, latent, quantized

pytestmark = pytest.mark.timeout(300)
SHAPE = (1, 16, 8, 8)


@pytest.fixture(scope="module")
def tables() -> bn.BottleneckTables:
    return laplace_tables(channels=16)


def bottleneck_codec(tables: bn.BottleneckTables, **params) -> codecs.Codec:
    tid = bn.register_tables(tables)
    return codecs.get("resilient", inner="bottleneck", tables=tid, **params)


def slice_spans(data: bytes, slices: int) -> list[tuple[int, int]]:
    """[start, end) of each slice (body and check) in a one-tensor full stream."""
    head = codecs.peek(data)
    pos, size = head.header_bytes, head.tensors[0].payload_bytes
    w = max(1, (size.bit_length() + 7) // 8)
    table = (slices - 1) * w
    ends = [int.from_bytes(data[pos + k * w: pos + (k + 1) * w], "little") + table
            for k in range(slices - 1)] + [size]
    starts = [table, *ends[:-1]]
    return [(pos + a, pos + b) for a, b in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_bottleneck_slices_round_trip_exactly(tables, axis: int) -> None:
    codec = bottleneck_codec(tables, slices=4, slice_axis=axis)
    y = latent(tables, (2, *SHAPE[1:]))
    for compact in (False, True):
        data = codec.encode(torch.from_numpy(y), compact=compact)
        assert data[:2] == (RESILIENT_COMPACT_MAGIC if compact else RESILIENT_MAGIC)
        (out,) = codecs.decode(data)
        assert np.array_equal(out.numpy(), quantized(tables, y))
        head = codecs.peek(data)
        assert head.resilient and head.params["tables"] == tables.table_id
        assert head.params["inner"] == "bottleneck" and head.params["slices"] == 4


def test_overhead_is_offsets_and_checks(tables) -> None:
    y = torch.from_numpy(latent(tables, SHAPE))
    plain = bn.BottleneckCodec.with_tables(tables)
    one = bottleneck_codec(tables, slices=1)
    # one slice: the inner payload and its check, nothing else
    assert (codecs.peek(one.encode(y)).tensors[0].payload_bytes
            == codecs.peek(plain.encode(y)).tensors[0].payload_bytes + CHECK_BYTES)
    assert len(one.encode(y, compact=True)) == len(plain.encode(y, compact=True)) + CHECK_BYTES


def test_a_corrupt_slice_is_concealed_alone(tables) -> None:
    codec = bottleneck_codec(tables, slices=8)  # rows: slice k is row k
    y = latent(tables, SHAPE)
    data = codec.encode(torch.from_numpy(y))
    spans = slice_spans(data, 8)
    bad = bytearray(data)
    bad[spans[3][0] + 1] ^= 0x04
    with pytest.raises(BitstreamError, match="slice 3 of 8: CRC mismatch"):
        codecs.decode(bytes(bad))  # strict unless asked
    (out,), concealed = decode_resilient(bytes(bad))
    assert concealed == 1
    want = quantized(tables, y)
    got = out.numpy()
    keep = [r for r in range(8) if r != 3]
    assert np.array_equal(got[:, :, keep], want[:, :, keep])
    medians = np.broadcast_to(tables.medians.reshape(1, -1, 1), (1, 16, 8))
    assert np.array_equal(got[:, :, 3], medians)  # the channel medians fill the lost row
    with concealing() as counter:
        codecs.decode(bytes(bad))
    assert counter.slices == 1


def test_channel_slices_conceal_their_channels(tables) -> None:
    codec = bottleneck_codec(tables, slices=4, slice_axis=1)
    y = latent(tables, SHAPE)
    data = codec.encode(torch.from_numpy(y))
    spans = slice_spans(data, 4)
    bad = bytearray(data)
    bad[spans[1][1] - 1] ^= 0x80  # slice 1's check itself
    (out,), concealed = decode_resilient(bytes(bad))
    assert concealed == 1
    got = out.numpy()
    assert np.array_equal(got[:, :4], quantized(tables, y)[:, :4])
    assert np.array_equal(got[0, 4:8], np.broadcast_to(
        tables.medians[4:8].reshape(-1, 1, 1), (4, 8, 8)))


def test_generic_codecs_conceal_with_zeros() -> None:
    codec = codecs.get("resilient", inner="fp16", slices=4)
    x = torch.randn(2, 4, 8, 6)
    data = codec.encode(x)
    bad = bytearray(data)
    bad[slice_spans(data, 4)[0][0]] ^= 1
    (out,), concealed = decode_resilient(bytes(bad))
    assert concealed == 1
    assert not out[:, :, :2].any()
    assert torch.equal(out[:, :, 2:], x[:, :, 2:].half().float())


def test_corrupt_offsets_cost_two_slices_at_most() -> None:
    codec = codecs.get("resilient", inner="int8", slices=8)
    x = torch.randn(1, 4, 16, 16)
    data = codec.encode(x)
    start = codecs.peek(data).header_bytes
    for k in range(7):  # each one-byte offset
        for bit in range(8):
            bad = bytearray(data)
            bad[start + k] ^= 1 << bit
            try:
                _, concealed = decode_resilient(bytes(bad))
            except BitstreamError:
                pytest.fail("an offset error must not lose the request")
            assert 1 <= concealed <= 2


def test_header_errors_lose_the_request(tables) -> None:
    codec = bottleneck_codec(tables, slices=4)
    y = torch.from_numpy(latent(tables, SHAPE))
    full = codec.encode(y)
    head = codecs.peek(full).header_bytes
    for pos in range(head):
        for bit in range(8):
            bad = bytearray(full)
            bad[pos] ^= 1 << bit
            with pytest.raises(BitstreamError):
                decode_resilient(bytes(bad))
    small = codec.encode(y, compact=True)
    for pos in [*range(5), len(small) - 1]:  # the prefix and the header CRC
        bad = bytearray(small)
        bad[pos] ^= 0x01
        with pytest.raises(BitstreamError):
            decode_resilient(bytes(bad))


def test_raw_tensors_carry_their_own_check() -> None:
    codec = codecs.get("resilient", inner="fp32", slices=2)
    idx = torch.arange(6, dtype=torch.int64)
    data = codec.encode([torch.ones(2, 3), idx])
    out, concealed = decode_resilient(data)
    assert torch.equal(out[1], idx) and concealed == 0
    bad = bytearray(data)
    bad[-6] ^= 0x01  # inside the raw tensor's bytes
    with pytest.raises(BitstreamError, match="raw tensor CRC"):
        decode_resilient(bytes(bad))


def test_framing_rules() -> None:
    """Only a codec that checks its payload may drop the payload from the CRC; the resilient
    codec's streams still decode in the ordinary framing (whole-stream CRC)."""
    plain = codecs.get("int8").encode(torch.ones(1, 4, 4, 4))
    n_head = codecs.peek(plain).header_bytes
    body = RESILIENT_MAGIC + plain[2:-4]
    forged = body + struct.pack("<I", zlib.crc32(body[:n_head]))
    with pytest.raises(BitstreamError, match="does not check its payload"):
        codecs.decode(forged)
    codec = codecs.get("resilient", inner="fp16", slices=3)
    x = torch.randn(1, 3, 5, 5)
    resilient = codec.encode(x)
    ordinary = stream(codec, x.shape, payload_of(resilient))
    assert ordinary[:2] == b"SC"
    assert torch.equal(codecs.decode(ordinary)[0], codecs.decode(resilient)[0])


def test_existing_codecs_write_the_ordinary_framing() -> None:
    for name in codecs.available():
        if name == "resilient":
            continue
        data = codecs.get(name).encode(torch.ones(1, 2, 3, 3))
        assert data[:2] == b"SC" and not codecs.peek(data).resilient


def test_flip_bits() -> None:
    data = bytes(range(256)) * 40
    assert flip_bits(data, 0.0, np.random.default_rng(0)) == data
    assert flip_bits(data, 1.0, np.random.default_rng(0)) == bytes(b ^ 0xFF for b in data)
    a = flip_bits(data, 1e-2, np.random.default_rng(5))
    assert a == flip_bits(data, 1e-2, np.random.default_rng(5))  # seeded
    flips = sum(bin(x ^ y).count("1") for x, y in zip(a, data, strict=True))
    n = 8 * len(data)
    assert abs(flips - 1e-2 * n) < 5 * (1e-2 * n) ** 0.5
    with pytest.raises(ValueError):
        flip_bits(data, 1.5, np.random.default_rng(0))
    ch = Channel(ber=1e-2)
    assert ch.corrupt(data, np.random.default_rng(5)) == a
    assert Channel().corrupt(data, np.random.default_rng(5)) == data


def test_transmit_counts_losses_and_concealment(tables) -> None:
    y = torch.from_numpy(latent(tables, SHAPE))
    plain = bn.BottleneckCodec.with_tables(tables)
    resilient = bottleneck_codec(tables, slices=8)
    lost = {"plain": 0, "resilient": 0}
    concealed = 0
    for i in range(60):
        for name, codec in (("plain", plain), ("resilient", resilient)):
            d = transmit(codec, y, 2e-3, sample_rng(7, i), compact=True)
            if d.lost:
                lost[name] += 1
                assert d.flipped
            elif name == "resilient":
                concealed += d.concealed
                assert d.tensors[0].shape == SHAPE
            else:
                assert not d.flipped
    assert lost["resilient"] < lost["plain"]
    assert concealed > 0


# -- never crash, never hang ----------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
LIMITS = DecodeLimits(max_elements=1 << 16, max_tensors=4, max_bytes=1 << 20)


def _decoded_or_rejected(data: bytes, shapes: list[tuple[int, ...]] | None) -> None:
    """Either tensors of the declared shapes (concealment allowed) or BitstreamError."""
    try:
        out, concealed = decode_resilient(data, LIMITS)
    except BitstreamError:
        return
    assert concealed >= 0
    if shapes is not None:
        assert [tuple(t.shape) for t in out] == shapes
    assert sum(t.numel() for t in out) <= LIMITS.max_elements


@FUZZ
@given(inner=st.sampled_from(["int8", "fp16", "rans", "slicer", "bottleneck", "zstd",
                              "blockwise8", "tokenwise"]),
       slices=st.integers(1, 9), axis=st.integers(-3, 3), compact=st.booleans(),
       ber=st.sampled_from([1e-3, 1e-2, 5e-2]), seed=st.integers(0, 2**16))
def test_property_bit_flips_decode_or_reject(inner: str, slices: int, axis: int,
                                             compact: bool, ber: float, seed: int) -> None:
    codec = codecs.get("resilient", inner=inner, slices=slices, slice_axis=axis)
    x = torch.randn(1, 6, 5, 4, generator=torch.Generator().manual_seed(seed)).relu()
    data = codec.encode(x, compact=compact)
    received = flip_bits(data, ber, np.random.default_rng(seed))
    _decoded_or_rejected(received, [tuple(x.shape)])


@FUZZ
@given(blob=st.binary(max_size=300), compact=st.booleans(), fix_crc=st.booleans(),
       inner=st.integers(0, 12))
def test_property_random_bytes_decode_or_reject(blob: bytes, compact: bool, fix_crc: bool,
                                                inner: int) -> None:
    if compact:
        pre = RESILIENT_COMPACT_MAGIC + blob[:3].ljust(3, b"\0")
        data = pre + blob[3:] + struct.pack("<I", zlib.crc32(pre) if fix_crc else 0)
    else:
        body = RESILIENT_MAGIC + b"\x01\x0b" + bytes([inner]) + blob
        data = body + struct.pack("<I", zlib.crc32(body))  # a CRC over everything: wrong
        if fix_crc:  # a valid header CRC wherever the header may end
            for end in range(4, len(body) + 1):
                cand = body + struct.pack("<I", zlib.crc32(body[:end]))
                _decoded_or_rejected(cand, None)
    _decoded_or_rejected(data, None)


@FUZZ
@given(data=st.data())
def test_property_mangled_payload_behind_a_valid_header(data: st.DataObject) -> None:
    """Edits anywhere behind the (valid, protected) header: concealed or rejected, the
    declared shape kept."""
    tables = laplace_tables(channels=6)
    inner = data.draw(st.sampled_from(["int8", "rans", "bottleneck-tables"]))
    params = {"slices": data.draw(st.integers(1, 6)),
              "slice_axis": data.draw(st.integers(1, 3))}
    codec = (bottleneck_codec(tables, **params) if inner == "bottleneck-tables"
             else codecs.get("resilient", inner=inner, **params))
    x = torch.from_numpy(latent(tables, (2, 6, 5, 3)))
    clean = codec.encode(x)
    head = codecs.peek(clean).header_bytes
    body = bytearray(clean)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(head, len(body) - 5))
        body[pos] = data.draw(st.integers(0, 255))
    _decoded_or_rejected(bytes(body), [tuple(x.shape)])
    assert crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE's check value

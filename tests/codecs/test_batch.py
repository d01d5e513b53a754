"""codecs.decode_batch and the raw forms: every registered codec decodes a batch as it decodes
each stream alone, one bad stream fails alone, headers are checked before any payload."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, RawArray, context_scope
from splitcomp.codecs import batch as batch_module
from splitcomp.codecs.container import FLOAT_CODES, numpy_dtype, unpack_arrays

from .registries import unregistered

NAMES = codecs.available()


def _inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 6, 5, 3, generator=g).relu() * 3,
            torch.randn(2, 7, generator=g).to(torch.float16), torch.arange(4)]


def _blobs(name: str, n: int = 4) -> list[bytes]:
    codec = codecs.get(name)
    return [codec.encode(_inputs(i)) for i in range(n)]


def _as_arrays(parts) -> list[np.ndarray]:
    """What unpack_arrays returns, from a batch item's parts (raw forms dequantized)."""
    out = []
    for code, a in parts:
        if isinstance(a, RawArray):
            a = a.dequantize()
        out.append(a.astype(numpy_dtype(code), copy=False) if code in FLOAT_CODES else a)
    return out


def _flip(blob: bytes, at: float = 0.6) -> bytes:
    bad = bytearray(blob)
    bad[int(len(bad) * at)] ^= 0x10
    return bytes(bad)


@pytest.mark.parametrize("raw", [False, True], ids=["arrays", "raw"])
@pytest.mark.parametrize("pool", [False, True], ids=["here", "pool"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_each_stream_alone(name: str, raw: bool, pool: bool) -> None:
    blobs = _blobs(name)
    blobs[1] = _flip(blobs[1])  # same header, a payload bit flipped
    blobs.append(b"SC\x01garbage")
    with ThreadPoolExecutor(2) as ex:
        items = codecs.decode_batch(blobs, raw=raw, executor=ex if pool else None, chunks=3)
    assert len(items) == len(blobs)
    for blob, item in zip(blobs, items, strict=True):
        try:
            want = unpack_arrays(blob)
        except BitstreamError as e:
            assert isinstance(item.error, BitstreamError) and str(item.error) == str(e)
            assert item.parts is None
            continue
        assert item.error is None and item.header == codecs.peek(blob)
        got = _as_arrays(item.parts)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype
                   for a, b in zip(got, want, strict=True)), name
    assert isinstance(items[-1].error, BitstreamError)


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8", "blockwise8"])
def test_raw_forms_dequantize_to_decode_array(name: str) -> None:
    for params in ([{}, {"per_channel": True, "axis": 1}, {"per_channel": True, "axis": -1}]
                   if name == "int8" else [{"block": 7}, {}] if name == "blockwise8" else [{}]):
        codec = codecs.get(name, **params)
        for shape in [(2, 5, 3), (1,), (0, 4), (3, 70)]:
            x = (np.random.default_rng(1).standard_normal(shape) * 4).astype(np.float32)
            payload = memoryview(codec.encode_array(x))
            raw = codec.decode_raw(payload, shape, codecs.DEFAULT_LIMITS)
            assert isinstance(raw, RawArray)
            want = codec.decode_array(payload, shape, codecs.DEFAULT_LIMITS)
            assert raw.dequantize().shape == shape
            assert np.array_equal(raw.dequantize(), want)


def test_codecs_without_a_raw_form_say_none() -> None:
    payload = memoryview(codecs.get("zstd").encode_array(np.ones(4, np.float32)))
    assert codecs.get("zstd").decode_raw(payload, (4,), codecs.DEFAULT_LIMITS) is None


def test_raw_forms_check_their_payload() -> None:
    codec = codecs.get("int8")
    payload = codec.encode_array(np.ones((2, 3), np.float32))
    with pytest.raises(BitstreamError, match="size"):
        codec.decode_raw(memoryview(payload[:-1]), (2, 3), codecs.DEFAULT_LIMITS)


def test_every_header_is_checked_before_any_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real = batch_module.decode_payloads

    def spy(*args, **kwargs):
        events.append("payload")
        return real(*args, **kwargs)

    def check(header) -> None:
        events.append("check")
        if header.codec_name == "zstd":
            raise PermissionError("not this codec")

    monkeypatch.setattr(batch_module, "decode_payloads", spy)
    blobs = _blobs("fp32", 2) + _blobs("zstd", 1) + _blobs("int8", 2)
    items = codecs.decode_batch(blobs, check=check)
    assert events == ["check"] * 5 + ["payload"] * 4
    assert isinstance(items[2].error, PermissionError)
    assert [i.error is None for i in items] == [True, True, False, True, True]


def test_shared_headers_still_check_each_stream_crc() -> None:
    """Streams with equal header bytes share one parse; each one's own CRC still decides."""
    for name in ("fp32", "resilient"):
        good = _blobs(name, 3)
        end_crc = bytearray(good[2])
        end_crc[-1] ^= 1
        bad = [_flip(good[1], 0.9), bytes(end_crc)]
        items = codecs.decode_batch([good[0], *bad])
        assert items[0].error is None
        for item, blob in zip(items[1:], bad, strict=True):
            with pytest.raises(BitstreamError) as e:
                codecs.decode(blob)
            assert isinstance(item.error, BitstreamError) and str(item.error) == str(e.value)


def test_resilient_conceals_only_when_asked() -> None:
    good = _blobs("resilient", 2)
    bad = _flip(good[1], 0.7)
    strict = codecs.decode_batch([good[0], bad])
    assert strict[0].error is None and isinstance(strict[1].error, BitstreamError)
    concealed = codecs.decode_batch([good[0], bad], conceal=True)
    assert concealed[1].error is None and concealed[1].concealed >= 1
    assert concealed[0].concealed == 0


def test_session_contexts_reach_the_pool() -> None:
    from splitcomp.codecs import tokenwise as tw

    rng = np.random.default_rng(0)
    ctx = tw.calibrate(rng.laplace(size=(300, 8)).astype(np.float32))
    codec = tw.TokenwiseCodec.with_context(ctx, level=-4)
    key = tw.TokenwiseCodec.context_key(ctx)
    blobs = [codec.encode(torch.from_numpy(rng.laplace(size=(1, 5, 8)).astype(np.float32)))
             for _ in range(4)]
    with unregistered(tw.TokenwiseCodec.context_registry, key), ThreadPoolExecutor(2) as ex:
        items = codecs.decode_batch(blobs, contexts={key: ctx}, executor=ex)
        assert all(i.error is None for i in items)
        with context_scope({key: ctx}):  # an enclosing scope travels to the pool too
            items = codecs.decode_batch(blobs, executor=ex)
        assert all(i.error is None for i in items)
        lost = codecs.decode_batch(blobs, executor=ex)
        assert all(isinstance(i.error, BitstreamError) for i in lost)

"""Batched decode on the server (``runtime.batch_decode``): a batch answers exactly as request
by request does (``batch_decode=False``), for every registered codec, whatever mix of good and
bad streams it holds; raw forms dequantized in torch equal the codecs' numpy dequantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.runtime import Deployment, ErrorCode, InputSpec
from splitcomp.runtime.batch_decode import BatchDecoder, dequantize
from splitcomp.runtime.device import resolve_device

pytestmark = pytest.mark.timeout(120)
NAMES = codecs.available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))]


def tail(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every input back (float ones times two): what was decoded is what is answered."""
    return tuple(x * 2 if x.is_floating_point() else x for x in xs)


def _inputs(seed: int, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 6, 5, 3, generator=g).relu() * 3,
            torch.randn(batch, 7, generator=g).to(torch.float16),
            torch.arange(batch * 2).reshape(batch, 2)]


def _flip(blob: bytes, at: float) -> bytes:
    bad = bytearray(blob)
    bad[min(int(len(bad) * at), len(bad) - 1)] ^= 0x10
    return bytes(bad)


def _answers(dep: Deployment, blobs: list[bytes]) -> list[tuple]:
    """Each reply as (error code and message) or (result bytes, batch size)."""
    return [(r.error.code, r.error.message) if r.error else (r.result, r.batch_size)
            for r in dep.run_batch(blobs).replies]


def _pair(threads: int = 0, **options) -> tuple[Deployment, Deployment]:
    return (Deployment("d", tail, input_specs=None, decode_threads=threads, **options),
            Deployment("d", tail, input_specs=None, batch_decode=False, **options))


@pytest.mark.parametrize("threads", [0, 2], ids=["worker", "pool"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_answers_as_request_by_request(name: str, threads: int) -> None:
    codec = codecs.get(name)
    blobs = [codec.encode(_inputs(i, batch=1 + i % 2)) for i in range(6)]
    blobs[2] = _flip(blobs[2], 0.7)  # corrupt among good ones (resilient: concealed)
    blobs.insert(4, b"not a bitstream")
    new, old = _pair(threads)
    got, want = _answers(new, blobs), _answers(old, blobs)
    assert got == want
    assert got[4][0] == ErrorCode.BAD_BITSTREAM and got[0][0] not in set(ErrorCode)
    assert (got[2][0] == ErrorCode.BAD_BITSTREAM) == (name != "resilient")
    assert new.concealed_slices == old.concealed_slices == (name == "resilient")
    new.close()


def test_header_errors_are_typed_as_before() -> None:
    specs = [InputSpec(torch.float32, (4, 8, 8), 4)]
    fp32, int8 = codecs.get("fp32"), codecs.get("int8")
    blobs = [fp32.encode(torch.randn(1, 4, 8, 8)), codecs.get("zstd").encode(torch.randn(1, 4)),
             fp32.encode(torch.randn(1, 4, 6, 6)), fp32.encode(torch.randn(9, 4, 8, 8)),
             int8.encode(torch.randn(2, 4, 8, 8)), fp32.encode(torch.randn(1, 4, 8, 8))]
    new, old = _pair(codecs=["fp32", "int8"], max_request_samples=4)
    new.input_specs = old.input_specs = specs
    got = _answers(new, blobs)
    assert got == _answers(old, blobs)
    assert [g[0] if isinstance(g[0], ErrorCode) else "ok" for g in got] == [
        "ok", ErrorCode.CODEC_NOT_ALLOWED, ErrorCode.BAD_INPUT, ErrorCode.TOO_LARGE, "ok", "ok"]


def test_a_decoder_bug_is_internal_and_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitcomp.codecs.int8 import Int8Codec

    def broken(self, payload, shape, limits):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(Int8Codec, "decode_raw", broken)
    blobs = [codecs.get(n).encode(torch.ones(1, 3)) for n in ("fp32", "int8")]
    new = Deployment("d", tail, input_specs=None)
    replies = new.run_batch(blobs).replies
    assert replies[0].error is None
    assert replies[1].error.code == ErrorCode.INTERNAL and "ZeroDivisionError" in \
        replies[1].error.message


def test_per_request_figures_share_the_batch() -> None:
    dep = Deployment("d", tail, input_specs=None)
    blobs = [codecs.get("int8").encode(_inputs(i)) for i in range(4)]
    report = dep.run_batch(blobs)
    assert report.decode_s > 0 and report.decode_cpu_s > 0
    shares = {r.decode_s for r in report.replies}
    assert len(shares) == 1 and abs(shares.pop() * 4 - report.decode_s) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,params", [
    ("fp32", {}), ("fp16", {}), ("int8", {}), ("int8", {"per_channel": True, "axis": 1}),
    ("int8", {"per_channel": True, "axis": -1}), ("blockwise8", {}), ("blockwise8", {"block": 7}),
])
def test_dequantize_on_the_device_equals_numpy(name: str, params: dict, device: str) -> None:
    codec = codecs.get(name, **params)
    dev = resolve_device(device)
    rng = np.random.default_rng(3)
    for shape in [(2, 6, 5, 3), (1, 70), (0, 4)]:
        xs = [(rng.standard_normal(shape) * rng.uniform(0.1, 50)).astype(np.float32)
              for _ in range(3)]
        payloads = [memoryview(codec.encode_array(x)) for x in xs]
        raws = [codec.decode_raw(p, shape, codecs.DEFAULT_LIMITS) for p in payloads]
        got = dequantize(raws, dev)
        for t, r, p in zip(got, raws, payloads, strict=True):
            assert t.device.type == dev.type and t.dtype == torch.float32
            want = codec.decode_array(p, shape, codecs.DEFAULT_LIMITS)
            assert np.array_equal(t.cpu().numpy(), r.dequantize())
            assert np.array_equal(t.cpu().numpy(), want) and t.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_decoded_inputs_are_on_the_tails_device(device: str) -> None:
    dev = resolve_device(device)
    blobs = [codecs.get(n).encode(_inputs(0)) for n in ("int8", "zstd", "fp16")]
    batch = BatchDecoder(dev).decode(blobs, codecs.DEFAULT_LIMITS)
    assert batch.errors == [None] * 3
    for inputs in batch.inputs:
        assert [t.device.type for t in inputs] == [dev.type] * 3
        assert [t.dtype for t in inputs] == [torch.float32, torch.float16, torch.int64]


KINDS = ["fp32", "int8", "blockwise8", "zstd", "slicer", "resilient", "fp16"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 3),
                          st.sampled_from(["good", "flip", "cut", "junk", "crc"]),
                          st.floats(0, 1)), min_size=1, max_size=10),
       st.sampled_from([0, 2]))
def test_property_any_mix_answers_as_request_by_request(mix, threads: int) -> None:
    blobs = []
    for kind, seed, how, at in mix:
        blob = codecs.get(kind).encode(_inputs(seed))
        if how == "flip":
            blob = _flip(blob, at)
        elif how == "cut":
            blob = blob[: int(len(blob) * at)]
        elif how == "junk":
            blob = bytes(np.random.default_rng(seed).integers(0, 256, int(at * 40), np.uint8))
        elif how == "crc":
            blob = blob[:-1] + bytes([blob[-1] ^ 1])
        blobs.append(blob)
    new, old = _pair(threads, codecs=["fp32", "int8", "blockwise8", "zstd", "slicer",
                                      "resilient"])
    assert _answers(new, blobs) == _answers(old, blobs)
    assert new.concealed_slices == old.concealed_slices
    new.close()

"""Hostile requests against a vision deployment: streams under 1 KB claiming huge shapes are
refused from their header, with a typed error, before any payload is decoded, allow-list or
not; transport-free and through a real server on 127.0.0.1."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import DecodeLimits
from splitcomp.codecs.hostile import bombs
from splitcomp.runtime import Deployment, ErrorCode, InputSpec, ServerError, SplitClient
from splitcomp.runtime.deployment import limits_for

pytestmark = pytest.mark.timeout(120)
NAMES = codecs.available()
SAMPLE = (32, 16, 16)  # what the r20 tail takes per sample
REFUSED = {ErrorCode.TOO_LARGE, ErrorCode.BAD_INPUT, ErrorCode.BAD_BITSTREAM}
ALLOW = [None, NAMES]
ALLOW_IDS = ["any-codec", "allow-list"]


def traced_peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def huge_bombs() -> list[tuple[str, str, bytes]]:
    """(codec, kind, stream) claiming 2**28 elements: a huge batch, or one flat row."""
    out = []
    for name in NAMES:
        for shape in [(1 << 15, *SAMPLE), (1, 1 << 28)]:
            out += [(name, kind, data) for kind, data in bombs(name, shape).items()]
    return out


def test_decode_limits_follow_the_tail(r20) -> None:
    dep = Deployment("r20", r20.tail, max_request_samples=64)
    assert dep.decode_limits == DecodeLimits(max_elements=64 * math.prod(SAMPLE),
                                             max_tensors=1, max_ndim=4)
    dep.max_request_samples = 8  # derived when used: a setting changed later counts
    assert dep.decode_limits.max_elements == 8 * math.prod(SAMPLE)
    tight = DecodeLimits(max_elements=1000, max_tensors=4, max_ndim=8, max_bytes=1 << 20)
    assert Deployment("r20", r20.tail, limits=tight).decode_limits == DecodeLimits(
        max_elements=1000, max_tensors=1, max_ndim=4, max_bytes=1 << 20)


def test_limits_for_tails_without_fixed_shapes() -> None:
    base = codecs.DEFAULT_LIMITS
    assert limits_for(None, 256, base) == base
    varying = [InputSpec(torch.float32, None, 3), InputSpec(torch.int64, (5,), 2)]
    assert limits_for(varying, 256, base) == DecodeLimits(
        max_elements=base.max_elements, max_tensors=2, max_ndim=3, max_bytes=base.max_bytes)
    fixed = [InputSpec(torch.float32, (4, 8), 3), InputSpec(torch.int64, (5,), 2)]
    assert limits_for(fixed, 10, base).max_elements == 10 * (32 + 5)


@pytest.mark.parametrize("allowed", ALLOW, ids=ALLOW_IDS)
def test_bombs_are_refused_from_the_header(r20, allowed) -> None:
    dep = Deployment("r20", r20.tail, codecs=allowed)
    items = huge_bombs()
    report: list = []
    peak = traced_peak(lambda: report.append(dep.run_batch([d for _, _, d in items])))
    got = {(n, k, r.error.code if r.error else None)
           for (n, k, _), r in zip(items, report[0].replies, strict=True)}
    assert {code for _, _, code in got} <= REFUSED, sorted(got)
    assert report[0].tail_calls == []
    assert peak < 4 << 20  # a whole batch of them: no payload decoded


def test_the_largest_request_the_tail_takes_still_decodes(r20) -> None:
    dep = Deployment("r20", r20.tail, max_request_samples=4)
    for name in ("rans", "slicer", "bottleneck"):
        zeros = bombs(name, (4, *SAMPLE))["zeros"]
        assert len(zeros) < 64
        (reply,) = dep.run_batch([zeros]).replies
        assert reply.error is None and reply.batch_size == 4
        (reply,) = dep.run_batch([bombs(name, (5, *SAMPLE))["zeros"]]).replies
        assert reply.error is not None and reply.error.code == ErrorCode.TOO_LARGE


def test_a_tail_without_fixed_shapes_keeps_the_given_limits() -> None:
    dep = Deployment("any", lambda x: x.sum(1), input_specs=None,
                     limits=DecodeLimits(max_elements=1 << 12))
    data = bombs("rans", (1, 1 << 20))["zeros"]
    (reply,) = dep.run_batch([data]).replies
    assert reply.error is not None and reply.error.code == ErrorCode.BAD_BITSTREAM
    (reply,) = dep.run_batch([bombs("rans", (1, 1 << 12))["zeros"]]).replies
    assert reply.error is None


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), batch=st.integers(257, 1 << 20),
       sample=st.lists(st.integers(1, 1 << 12), min_size=1, max_size=3))
def test_hypothesis_claimed_shapes_get_typed_errors(r20, name, batch, sample) -> None:
    dep = Deployment("r20", r20.tail)
    streams = list(bombs(name, (batch, *sample)).values())
    report: list = []
    peak = traced_peak(lambda: report.append(dep.run_batch(streams)))
    assert all(r.error is not None and r.error.code in REFUSED for r in report[0].replies)
    assert peak < 4 << 20


@pytest.mark.parametrize("allowed", ALLOW, ids=ALLOW_IDS)
def test_bombs_through_a_server_get_typed_errors(r20, start_server, allowed) -> None:
    srv = start_server(Deployment("r20", r20.tail, codecs=allowed, max_batch_size=8))
    items = huge_bombs()
    codes: dict[tuple[str, str], ErrorCode] = {}
    with SplitClient(srv.url, r20.head, "fp32", "r20", retries=0) as client:
        def send_all() -> None:
            for name, kind, data in items:
                with pytest.raises(ServerError) as info:
                    client.infer_encoded(data)
                codes[name, kind] = info.value.code

        peak = traced_peak(send_all)  # the server runs in this process: it is traced too
        assert set(codes.values()) <= REFUSED
        assert peak < 16 << 20
        x = torch.randn(1, 3, 32, 32)
        assert client.infer(x).shape == (1, 10)  # and it still serves

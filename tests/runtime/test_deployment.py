"""Deployment.run_batch, transport-free: decode, group, one tail call per group, split, encode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitcomp import codecs
from splitcomp.runtime import Deployment, ErrorCode, InputSpec

pytestmark = pytest.mark.timeout(60)
FP32 = codecs.get("fp32")


class PoolTail(nn.Module):
    """Takes any spatial size; refuses NaN inputs (to test isolating a failing request)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.isnan(x).any():
            raise ValueError("NaN input")
        return self.conv(x).mean((2, 3))


def _outputs(report) -> list[torch.Tensor]:
    return [codecs.decode(r.result)[0] for r in report.replies]


def test_results_equal_local_tail_at_the_same_batch_size(r20) -> None:
    dep = Deployment("r20", r20.tail, max_batch_size=8)
    feats = [r20.features(torch.randn(1, 3, 32, 32)) for _ in range(3)]
    report = dep.run_batch([FP32.encode(f) for f in feats])
    assert report.tail_calls == [3]
    for f, out, reply in zip(feats, _outputs(report), report.replies, strict=True):
        assert reply.batch_size == 3 and reply.error is None
        assert torch.equal(out, r20.reference(f, 3))


def test_requests_are_grouped_by_sample_shape_and_chunked() -> None:
    torch.manual_seed(0)
    dep = Deployment("pool", PoolTail(), max_batch_size=4, input_specs=None)
    xs = [torch.randn(2, 4, 8, 8) for _ in range(5)] + [torch.randn(1, 4, 5, 5)]
    report = dep.run_batch([FP32.encode(x) for x in xs])
    assert sorted(report.tail_calls) == [1, 2, 4, 4]
    for x, out in zip(xs, _outputs(report), strict=True):
        torch.testing.assert_close(out, dep.tail(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("allowed", [["fp32", "fp16"], None], ids=["allow-list", "any-codec"])
def test_one_bad_request_never_fails_the_others(allowed: list[str] | None) -> None:
    """With an allow-list headers are checked before decoding, otherwise decoded tensors."""
    dep = Deployment("pool", PoolTail(), codecs=allowed,
                     input_specs=[InputSpec(torch.float32, (4, 8, 8), 4)], max_request_samples=3)
    good = FP32.encode(torch.randn(1, 4, 8, 8))
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    cases = {
        "good": good,
        "corrupt": bytes(corrupt),
        "garbage": b"not a bitstream",
        "codec": codecs.get("int8").encode(torch.randn(1, 4, 8, 8)),
        "shape": FP32.encode(torch.randn(1, 4, 6, 6)),
        "count": FP32.encode([torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)]),
        "too_many": FP32.encode(torch.randn(4, 4, 8, 8)),
        "nan": FP32.encode(torch.full((1, 4, 8, 8), float("nan"))),
        "good2": codecs.get("fp16").encode(torch.randn(1, 4, 8, 8)),
    }
    report = dep.run_batch(list(cases.values()))
    got = {k: (r.error.code if r.error else "ok") for k, r in zip(cases, report.replies,
                                                                    strict=True)}
    assert got == {
        "good": "ok", "corrupt": ErrorCode.BAD_BITSTREAM, "garbage": ErrorCode.BAD_BITSTREAM,
        "codec": ErrorCode.CODEC_NOT_ALLOWED if allowed else "ok", "shape": ErrorCode.BAD_INPUT,
        "count": ErrorCode.BAD_INPUT, "too_many": ErrorCode.TOO_LARGE,
        "nan": ErrorCode.INTERNAL, "good2": "ok",
    }
    assert "NaN input" in report.replies[7].error.message


def test_input_specs_come_from_the_split(r20) -> None:
    dep = Deployment("r20", r20.tail)
    assert dep.input_specs == (InputSpec(torch.float32, (32, 16, 16), 4),)
    with pytest.raises(ValueError):
        Deployment("bad name", r20.tail)
    with pytest.raises(KeyError):
        Deployment("x", r20.tail, codecs=["nope"])


def test_handle_frames_answers_each_frame_in_order() -> None:
    from splitcomp.runtime import protocol as P
    from splitcomp.runtime.handler import handle_frames

    deps = {"a": Deployment("a", PoolTail(), input_specs=None),
            "b": Deployment("b", PoolTail(), input_specs=None)}
    x = torch.randn(1, 4, 8, 8)
    frames = [P.encode_request(1, "a", FP32.encode(x)), b"garbage",
              P.encode_request(2, "b", FP32.encode(x)), P.encode_request(3, "c", b"x"),
              P.encode_request(4, "a", b"not a bitstream"), P.encode_request(5, "a",
                                                                          FP32.encode(x))]
    got = [P.parse_response(f) for f in handle_frames(deps, frames)]
    assert [(r.request_id, r.code) for r in got] == [
        (1, None), (0, ErrorCode.BAD_FRAME), (2, None), (3, ErrorCode.UNKNOWN_DEPLOYMENT),
        (4, ErrorCode.BAD_BITSTREAM), (5, None)]
    assert got[0].timing.batch_size == 2 and got[2].timing.batch_size == 1
    assert torch.equal(codecs.decode(got[0].bitstream)[0], codecs.decode(got[5].bitstream)[0])


def test_a_resilient_stream_with_a_bit_error_is_concealed_not_lost() -> None:
    """A flipped payload bit in a ``resilient`` stream costs a slice (concealed, counted),
    not the request; a plain stream with the same error is refused."""
    from splitcomp.runtime.errors import RequestError

    tail = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 3))
    dep = Deployment("r", tail, input_specs=[InputSpec(torch.float32, (8, 4, 4), 4)])
    x = torch.randn(1, 8, 4, 4)
    good = codecs.get("resilient", inner="int8", slices=4).encode(x)
    bad = bytearray(good)
    bad[-20] ^= 0x10  # inside the last slice's payload
    out = dep.decode(bytes(bad))
    assert out[0].shape == x.shape and dep.concealed_slices == 1
    plain = bytearray(codecs.get("int8").encode(x))
    plain[-20] ^= 0x10
    with pytest.raises(RequestError):
        dep.decode(bytes(plain))

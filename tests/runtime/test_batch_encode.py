"""The server's per-batch fast paths answer as the per-request paths do: results encoded in one
pass (``runtime.batch_encode``) are the bytes ``codec.encode`` gives row by row; a batch's
adjacent decoded rows are stacked without a copy (``deployment.cat_rows``) into what
``torch.cat`` gives; a histogram fed a batch (``observe_many``) holds what ``observe`` gives;
whole answer frames are the same with the fast paths on and off."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.runtime import Deployment, InputSpec
from splitcomp.runtime import batch_encode as BE
from splitcomp.runtime import deployment as D
from splitcomp.runtime import protocol as P
from splitcomp.runtime.stats import Histogram

pytestmark = pytest.mark.timeout(120)


def _per_row(codec: codecs.Codec, out: torch.Tensor, sizes: list[int]) -> list[bytes]:
    return [codec.encode([part]) for part in torch.split(out, sizes)]


@pytest.mark.parametrize("name", ["fp32", "fp16"])
@settings(max_examples=40, deadline=None)
@given(requests=st.integers(2, 40), rows=st.integers(1, 3),
       shape=st.lists(st.integers(1, 6), min_size=0, max_size=3), seed=st.integers(0, 1 << 16),
       scale=st.sampled_from([1.0, 1e5, 1e-30]))
def test_results_encoded_in_one_pass_are_the_codec_bytes(name: str, requests: int, rows: int,
                                                         shape: list[int], seed: int,
                                                         scale: float) -> None:
    codec = codecs.get(name)
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(requests * rows, *shape, generator=g) * scale
    out[0].view(-1)[0] = float("nan")
    sizes = [rows] * requests
    streams = BE.encode_rows(codec, [out], sizes)
    assert streams is not None
    assert streams == _per_row(codec, out, sizes)


def test_one_pass_encoding_declines_what_it_does_not_cover() -> None:
    fp32 = codecs.get("fp32")
    x = torch.randn(4, 3)
    assert BE.encode_rows(fp32, [x], [1, 3]) is None  # unequal sizes
    assert BE.encode_rows(fp32, [x, x], [2, 2]) is None  # several outputs
    assert BE.encode_rows(fp32, [x.double()], [2, 2]) is None  # not float32
    assert BE.encode_rows(fp32, [x], [4]) is None  # one request: the plain path
    assert BE.encode_rows(codecs.get("int8"), [x], [2, 2]) is None  # not elementwise


def test_cat_rows_is_torch_cat_and_a_view_for_adjacent_rows() -> None:
    x = torch.arange(6 * 2 * 3, dtype=torch.float32).reshape(6, 1, 2, 3)
    rows = list(x.unbind(0))
    stacked = D.cat_rows(rows, 6)
    assert torch.equal(stacked, torch.cat(rows)) and stacked.data_ptr() == x.data_ptr()
    for parts in ([rows[0], rows[2], rows[3]],  # not adjacent
                  [rows[1], rows[0]],  # out of order
                  [rows[0], torch.zeros(1, 2, 3)],  # another buffer
                  [x[0:2].reshape(2, 2, 3), x[2:5].reshape(3, 2, 3)],  # requests of 2 and 3
                  [t[:, :, ::2] for t in rows[:2]]):  # not contiguous
        n = sum(p.shape[0] for p in parts)
        assert torch.equal(D.cat_rows(parts, n), torch.cat(parts))
    y = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    halves = list(y.reshape(4, 2, 3).split(2))  # two requests of two rows, one buffer
    assert torch.equal(D.cat_rows(halves, 4), y.reshape(4, 2, 3))


def test_observe_many_is_observe_each() -> None:
    values = [0.0001, 0.001, 0.0015, 7.0, 0.5, 0.5, 1e-9, 3.0]
    one, many = Histogram("h", "h", ("d",)), Histogram("h", "h", ("d",))
    for v in values:
        one.observe(v, ("a",))
    many.observe_many(values[:3], ("a",))
    many.observe_many(values[3:], ("a",))
    assert one.values == many.values and one.render() == many.render()


def test_answer_frames_are_the_same_with_the_fast_paths_off(monkeypatch) -> None:
    """A deployment's answers (several requests a tail call, a bad one among them) are the
    same bytes, timing fields aside, with the one-pass encoding and the view stacking as with
    per-request encoding and ``torch.cat``."""
    codec = codecs.get("fp32")
    spec = [InputSpec(torch.float32, (3, 4), 3)]
    dep = Deployment("d", lambda x: (x.flatten(1) * 2,), input_specs=spec,
                     max_batch_size=8)
    g = torch.Generator().manual_seed(3)
    streams = [codec.encode(torch.randn(1, 3, 4, generator=g)) for _ in range(10)]
    streams[4] = streams[4][:-3]  # broken: answered with its own error
    fast = dep.answer(list(range(1, 11)), streams)
    monkeypatch.setattr(D, "encode_rows", lambda *a: None)
    monkeypatch.setattr(D, "cat_rows", lambda parts, rows: torch.cat(parts))
    slow = dep.answer(list(range(1, 11)), streams)
    assert fast.errors == slow.errors and fast.tail_calls == slow.tail_calls
    for a, b in zip(fast.frames, slow.frames, strict=True):
        ra, rb = P.parse_response(a), P.parse_response(b)
        assert (ra.request_id, ra.code, ra.message) == (rb.request_id, rb.code, rb.message)
        assert (None if ra.bitstream is None else bytes(ra.bitstream)) == (
            None if rb.bitstream is None else bytes(rb.bitstream))


def test_a_tail_that_writes_its_input_then_fails_gets_fresh_rows_alone() -> None:
    """A batched call on rows shared with the decoded batch (no copy) that writes into them
    and fails: each request, run alone, gets its rows as decoded, not as written."""
    def tail(x: torch.Tensor) -> tuple[torch.Tensor]:
        x.add_(100)
        if x.shape[0] > 1:
            raise ValueError("one at a time")
        return (x.flatten(1) * 2,)

    codec = codecs.get("fp32")
    spec = [InputSpec(torch.float32, (3, 4), 3)]
    g = torch.Generator().manual_seed(5)
    streams = [codec.encode(torch.randn(1, 3, 4, generator=g)) for _ in range(5)]
    answers = [Deployment("d", tail, input_specs=spec, batch_decode=b).answer(
        list(range(1, 6)), streams) for b in (True, False)]
    assert answers[0].errors == [None] * 5
    for a, b in zip(answers[0].frames, answers[1].frames, strict=True):
        assert bytes(P.parse_response(a).bitstream) == bytes(P.parse_response(b).bitstream)

"""Every frame parser takes bytes from the network: any input parses or raises FrameError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from splitcomp.runtime import protocol as P

SESSION = bytes(range(P.SESSION_ID_BYTES))
CONTEXT = P.CodecContext.of(9, b"context bytes " * 8)

VALID = [
    P.encode_request(7, "r20", b"SC" + bytes(40)),
    P.encode_result(7, b"SC" + bytes(20), 3, 0.001, 0.002, 0.003),
    P.encode_error(7, P.ErrorCode.BAD_BITSTREAM, "corrupt"),
    P.encode_llm_open(8, "smollm2", P.Sampling(0.7, 40, 5, 3)),
    P.encode_llm_open(8, "smollm2", context=CONTEXT),
    P.encode_llm_step(9, SESSION, 2, [b"SC" + bytes(10), b"SC" + bytes(12)]),
    P.encode_llm_close(10, SESSION),
    P.encode_llm_opened(8, P.LLMOpened(SESSION, 15, 576, 49152, 1024)),
    P.encode_llm_token(9, 42, -0.5, 17, [(42, -0.5), (7, -2.0)]),
    P.encode_llm_closed(10, 33),
]
PARSERS = [P.parse_request, P.parse_response, P.parse_llm_request, P.parse_llm_result]


def _parse_all(frame: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(frame)
        except P.FrameError:
            pass


def test_the_seed_frames_are_valid() -> None:
    """Mutations start from frames their parsers take (parse_response takes LLM results too)."""
    for frame, parse in zip(VALID, [P.parse_request, *[P.parse_response] * 2,
                                    *[P.parse_llm_request] * 4, *[P.parse_llm_result] * 3],
                            strict=True):
        parse(frame)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_mutated_frames_parse_or_raise_frame_error(data: st.DataObject) -> None:
    frame = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(0, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        frame = frame[: data.draw(st.integers(0, len(frame)))]
    if data.draw(st.booleans()):
        frame += data.draw(st.binary(max_size=16))
    _parse_all(bytes(frame))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=96))
def test_random_bytes_parse_or_raise_frame_error(frame: bytes) -> None:
    _parse_all(frame)
    _parse_all(P.MAGIC + frame)  # past the magic, into the headers


@settings(max_examples=100, deadline=None, derandomize=True)
@given(rid=st.integers(1, 2**64 - 1), tokens=st.integers(1, 8),
       blobs=st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=8))
def test_llm_step_round_trips(rid: int, tokens: int, blobs: list[bytes]) -> None:
    req = P.parse_llm_request(P.encode_llm_step(rid, SESSION, tokens, blobs))
    assert (req.request_id, req.op, req.session, req.tokens) == (rid, P.LLMOp.STEP, SESSION,
                                                                 tokens)
    assert [bytes(b) for b in req.bitstreams] == blobs

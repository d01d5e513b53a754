"""Previous-token prediction in the tokenwise codec (context flags bit 2): the guess, its fit,
the context bytes, and streams coded and decoded against the previous decoded row."""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp import codecs
from splitcomp.codecs import BitstreamError, DecodeLimits
from splitcomp.codecs import _tokenwise_temporal as tt
from splitcomp.codecs import tokenwise as tw
from splitcomp.llm.hidden_wire import Wire, decode_hidden, encode_hidden

from .test_tokenwise import C, mutate
from .test_tokenwise_alloc import traces
from .test_tokenwise_predict import correlated
from .test_tokenwise_shaping import anisotropic_fisher

A = 0.9  # the true lag-1 factor of the synthetic sequences


def sequences(n: int, length: int, seed: int) -> list[np.ndarray]:
    """``n`` sequences of ``length`` rows (C,), each row ``A`` times the previous (about a
    mean) plus correlated noise, the first an attention sink (a few huge channels)."""
    rng = np.random.default_rng(seed)
    mean = np.linspace(-1, 1, C).astype(np.float32)
    out = []
    for s in range(n):
        noise = correlated(length, seed=seed * 1000 + s)
        x = np.empty((length, C), np.float32)
        x[0] = mean + noise[0]
        x[0, :3] += 300.0 * rng.choice([-1, 1], 3)
        for t in range(1, length):
            prev = x[t - 1] if t > 1 else mean + noise[0]
            x[t] = mean + A * (prev - mean) + 0.6 * noise[t]
        out.append(x)
    return out


@functools.cache
def contexts(trellis: bool) -> tuple[tw.TokenwiseContext, tw.TokenwiseContext]:
    """The same calibration with and without previous-token prediction."""
    seqs = sequences(8, 100, seed=1)
    t = tw.fit_temporal(seqs)
    out = []
    for rows, temporal in ((np.concatenate(seqs), None), (tw.residual_rows(t, seqs), t)):
        ctx = tw.calibrate(rows, predict=True, trellis=trellis, fisher=anisotropic_fisher())
        ctx.alloc = tw.fit_allocation(rows, traces(rows), ctx.token_codes(rows))
        ctx.temporal = temporal
        ctx.clear_tables()
        out.append(ctx)
    return out[0], out[1]


def code_session(codec: tw.TokenwiseCodec, seq: np.ndarray) -> tuple[int, np.ndarray]:
    """Every row its own stream, in order, as a session codes them: the bytes and the rows
    the receiver decodes (the encoder's own decode matching it row for row)."""
    blobs = encode_hidden(codec, torch.from_numpy(seq)[None], known=set())  # session streams
    got = decode_hidden(blobs)[0].numpy()
    return sum(len(b) for b in blobs), got


def test_the_fit_finds_the_factor_and_leaves_sinks_out() -> None:
    t = tw.fit_temporal(sequences(8, 100, seed=1))
    assert np.all(np.abs(t.coef - A) < 0.1), t.coef
    sink = sequences(1, 2, seed=3)[0][0]
    assert t.guess(sink) is None and t.guess(None) is None
    row = sequences(1, 3, seed=3)[0][2]
    np.testing.assert_allclose(t.guess(row), t.coef * (row - t.mean), rtol=1e-6)


@pytest.mark.parametrize("trellis", [False, True])
def test_context_bytes_carry_the_predictor(trellis: bool) -> None:
    plain, ctx = contexts(trellis)
    data = ctx.to_bytes()
    assert data[5] & 4 and not plain.to_bytes()[5] & 4
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.to_bytes() == data and again.context_id == ctx.context_id
    np.testing.assert_array_equal(again.temporal.coef, ctx.temporal.coef)
    assert len(data) - len(plain.to_bytes()) == tt.Temporal.tail_size(C)
    body = bytearray(data[:-4])  # a coefficient out of range, with a valid CRC: refused
    at = len(body) - 4 * C + 4 * 0
    body[at : at + 2] = np.float16(9.0).tobytes()
    with pytest.raises(BitstreamError, match="temporal"):
        tw.TokenwiseContext.from_bytes(bytes(body) + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize("trellis", [False, True])
def test_tokens_cost_fewer_bytes_within_the_same_bound(trellis: bool) -> None:
    """Held-out sequences, each a session: fewer bytes at the same step (a level is relative
    to the calibration's scale, smaller for residuals) and no larger an error, every value
    within the codec's error bound (computed against the same previous row)."""
    plain, ctx = contexts(trellis)
    sizes, errors = {}, {}
    same_step = round(8 * np.log2(plain.scale / ctx.scale))
    for name, c, level in (("plain", plain, 0), ("temporal", ctx, same_step)):
        codec = tw.TokenwiseCodec.with_context(c, level=level)
        total, err = 0, 0.0
        for seq in sequences(3, 60, seed=7):
            n, got = code_session(codec, seq)
            total += n
            prev = None
            for row, out in zip(seq, got, strict=True):
                scope = {} if prev is None else {tw.PREVIOUS_ROW: prev}
                with codecs.context_scope(scope):
                    bound = codec.error_bound(row[None])
                assert np.abs(out - row).max() <= bound
                err += float(((out - row) ** 2).sum())
                prev = out
        sizes[name], errors[name] = total, err
    assert sizes["temporal"] < 0.9 * sizes["plain"], sizes
    assert errors["temporal"] < 1.2 * errors["plain"], errors


def test_a_stream_of_rows_is_coded_as_its_rows_would_be() -> None:
    """Several rows in one stream: each guessed from the stream's previous decoded row, the
    first from the scope's; the same values as one stream a row."""
    _, ctx = contexts(True)
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    seq = sequences(1, 12, seed=9)[0]
    blob = encode_hidden(codec, torch.from_numpy(seq)[None], per_token=False)
    whole = decode_hidden(blob)[0].numpy()
    _, rows = code_session(codec, seq)
    np.testing.assert_allclose(whole, rows, rtol=1e-5, atol=1e-5)
    assert np.abs(whole - seq).max() <= codec.error_bound(seq[:1]) * 4


def test_decoding_without_the_previous_row_differs_but_stays_finite() -> None:
    """State is the session's: a stream decoded without it (or out of order) gives other
    values, never an error or a non-finite value; the decoder does not change the scope."""
    _, ctx = contexts(True)
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    seq = sequences(1, 5, seed=11)[0]
    state: dict = {}
    blobs = encode_hidden(codec, torch.from_numpy(seq)[None], state=state)
    assert set(state) == {tw.PREVIOUS_ROW}
    scope: dict = {}
    right = decode_hidden(blobs, scope)[0].numpy()
    np.testing.assert_array_equal(scope[tw.PREVIOUS_ROW], state[tw.PREVIOUS_ROW])
    alone = codecs.decode(blobs[3])[0][0, 0].numpy()
    assert np.all(np.isfinite(alone)) and not np.allclose(alone, right[3])
    payload = codec.encode_array(seq[3:4])
    out = codec.decode_array(memoryview(payload), (1, C), DecodeLimits())
    assert np.all(np.isfinite(out))


def test_the_wire_keeps_its_state_until_a_step_is_confirmed() -> None:
    """An edge's :class:`Wire`: a step the server did not answer (no confirm) is coded again
    from the state before it, as the server (which restores its row) decodes it."""
    _, ctx = contexts(False)
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    seq = torch.from_numpy(sequences(1, 6, seed=13)[0])[None]
    wire = Wire(codec, compact=True)
    first = wire.send(seq[:, :3])
    wire.confirm()
    lost = wire.send(seq[:, 3:4])
    again = wire.send(seq[:, 3:4])  # the step after a failure: from the same state
    assert lost == again
    wire.confirm()
    ref = Wire(codec, compact=True)
    ref.send(seq[:, :3])
    ref.confirm()
    assert ref.send(seq[:, 3:4]) == again
    got = wire.receive(first + again)
    assert torch.allclose(got, seq[:, :4], atol=float(codec.error_bound(seq[0].numpy())) * 4)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_context_bytes(data: st.DataObject) -> None:
    """Corrupt temporal contexts, with and without the low-rank term (valid CRC; the
    predictor's bytes most of all) parse to one that codes and decodes a session's rows to
    finite values, or raise BitstreamError (or the encoder refuses the values, ValueError)."""
    ctx = low_rank_context() if data.draw(st.booleans()) else contexts(True)[1]
    raw = ctx.to_bytes()[:-4]
    body = mutate(raw, data, len(raw) - tt.Temporal.tail_size(C, ctx.temporal.rank) - 8,
                  cut=False)
    try:
        parsed = tw.TokenwiseContext.from_bytes(body + struct.pack("<I", zlib.crc32(body)))
    except BitstreamError:
        return
    codec = tw.TokenwiseCodec.with_context(parsed, level=0)
    seq = torch.from_numpy(sequences(1, 4, seed=17)[0])[None]
    try:
        blobs = encode_hidden(codec, seq)
    except ValueError:
        return
    try:
        out = decode_hidden(blobs)
    except BitstreamError:
        return
    assert torch.isfinite(out).all()


def test_a_previous_row_of_another_width_is_refused() -> None:
    _, ctx = contexts(False)
    with codecs.context_scope({tw.PREVIOUS_ROW: np.zeros(C + 1, np.float32)}), \
            pytest.raises(ValueError, match="previous row"):
        tw.TokenwiseCodec.with_context(ctx, level=0).encode_array(np.zeros((1, C), np.float32))


def cross_sequences(n: int, length: int, seed: int) -> list[np.ndarray]:
    """Rows driven by 4 latent factors that rotate from token to token (``s_t = M s_{t-1} +
    noise``, ``M`` 0.9 times two plane rotations; ``x = L s + 0.3 noise``): a channel's next
    value depends on other channels', which one factor a channel cannot follow."""
    fixed = np.random.default_rng(99)
    load = fixed.normal(size=(C, 4)).astype(np.float32)
    rot = [np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in (1.0, 1.7)]
    m = 0.9 * np.block([[rot[0], np.zeros((2, 2))], [np.zeros((2, 2)), rot[1]]])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = np.zeros((length, 4))
        for t in range(1, length):
            s[t] = m @ s[t - 1] + rng.normal(size=4)
        out.append((s @ load.T + 0.3 * rng.normal(size=(length, C)) + 1.0).astype(np.float32))
    return out


def test_the_low_rank_term_guesses_across_channels() -> None:
    """On held-out rows the low-rank guess leaves less than one factor a channel; it is the
    diagonal term plus ``((prev - m) V) U``, and stays off after a sink."""
    train, test = cross_sequences(8, 200, seed=2), cross_sequences(2, 200, seed=5)
    diag, low = tw.fit_temporal(train), tw.fit_temporal(train, rank=4)
    assert diag.rank == 0 and low.rank == 4 and low.basis.shape == (C, 4)
    assert low.mix.shape == (4, C)
    left = [float(np.var(tw.residual_rows(t, test)[1:])) for t in (diag, low)]
    assert left[1] < 0.5 * left[0], left
    row = test[0][7]
    dev = row - low.mean
    np.testing.assert_allclose(low.guess(row), low.coef * dev + (dev @ low.basis) @ low.mix,
                               rtol=1e-5, atol=1e-6)
    assert low.guess(row + 1e4) is None  # a sink: no guess
    with pytest.raises(ValueError, match="rank"):
        tw.fit_temporal(train, rank=tt.MAX_RANK + 1)
    flat = tw.fit_temporal([np.ones((200, C), np.float32)] * 2, rank=4)  # nothing to fit
    assert flat.rank == 4 and np.all(flat.guess(np.ones(C, np.float32)) == 0)


@functools.cache
def low_rank_context() -> tw.TokenwiseContext:
    seqs = cross_sequences(8, 100, seed=1)
    t = tw.fit_temporal(seqs, rank=3)
    rows = tw.residual_rows(t, seqs)
    ctx = tw.calibrate(rows, predict=True, trellis=True)
    ctx.temporal = t
    return ctx


def test_low_rank_context_bytes() -> None:
    """Flags bit 3 and the rank after the allocation bound, ``V`` and ``U`` at the tail; a
    rank without a temporal guess, a zero rank or a non-finite ``U`` is refused."""
    ctx = low_rank_context()
    data = ctx.to_bytes()
    assert data[5] & 12 == 12 and data[7] == 3
    again = tw.TokenwiseContext.from_bytes(data)
    assert again.to_bytes() == data and again.temporal.rank == 3
    np.testing.assert_array_equal(again.temporal.mix, ctx.temporal.mix)
    body = bytearray(data[:-4])
    assert len(body) > tt.Temporal.tail_size(C, 3)

    def sealed(b: bytearray) -> bytes:
        return bytes(b) + struct.pack("<I", zlib.crc32(b))

    for at, value in ((5, data[5] & ~4), (7, 0)):  # bit 3 without bit 2; rank 0
        bad = bytearray(body)
        bad[at] = value
        with pytest.raises(BitstreamError, match="rank|length|flags"):
            tw.TokenwiseContext.from_bytes(sealed(bad))
    bad = bytearray(body)
    bad[-2:] = np.float16(np.inf).tobytes()
    with pytest.raises(BitstreamError, match="low-rank"):
        tw.TokenwiseContext.from_bytes(sealed(bad))


def test_the_low_rank_term_counts_as_decoding_work() -> None:
    """Two C x r products a row, 16 multiply-adds a unit, beside the predictor's C x C."""
    ctx = low_rank_context()
    assert ctx.reconstruction_work(5) == 5 * C * (C + 2 * 3) // 16
    assert tw.stream_work(ctx, 0, np.zeros(5, np.int64)) >= ctx.reconstruction_work(5)


def test_low_rank_sessions_round_trip_in_fewer_bytes() -> None:
    """A session's rows through the low-rank context: within the error bound, fewer bytes
    than through the same calibration with one factor a channel."""
    seqs = cross_sequences(8, 100, seed=1)
    diag_t = tw.fit_temporal(seqs)
    diag = tw.calibrate(tw.residual_rows(diag_t, seqs), predict=True, trellis=True)
    diag.temporal = diag_t
    low = low_rank_context()
    sizes = {}
    for name, ctx in (("diag", diag), ("low", low)):
        codec = tw.TokenwiseCodec.with_context(ctx, level=round(8 * np.log2(1 / ctx.scale)))
        total = 0
        for seq in cross_sequences(2, 60, seed=9):
            n, got = code_session(codec, seq)
            total += n
            assert np.abs(got - seq).max() <= 2.5 * float(ctx.steps(codec.context.row_steps(
                codec.params["level"], None), np.zeros(1, np.int64)).max()) + 1e-3
        sizes[name] = total
    assert sizes["low"] < 0.97 * sizes["diag"], sizes

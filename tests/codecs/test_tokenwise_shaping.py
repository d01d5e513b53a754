"""Fisher noise shaping in the tokenwise encoder: less ``e^T F e`` at the same bits, the
decoder and the context's wire bytes unchanged, the feedback carried by context files only."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitcomp.codecs import BitstreamError, _slicer_jit
from splitcomp.codecs import _tokenwise_shaping as shaping
from splitcomp.codecs import tokenwise as tw
from splitcomp.codecs.errors import DecodeLimits

from .test_tokenwise import C, mutate
from .test_tokenwise_predict import correlated


def anisotropic_fisher(seed: int = 5) -> np.ndarray:
    """A Fisher-like matrix whose diagonal is flat but whose eigenvalues spread (as an LLM's
    at its middle layer): a few strong directions across many channels."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((C, 6)) * 3.0
    f = np.eye(C) * 0.05 + u @ u.T / C
    return f / np.mean(np.diag(f))


@pytest.fixture(scope="module")
def fisher() -> np.ndarray:
    return anisotropic_fisher()


@pytest.fixture(scope="module", params=[True, False], ids=["predict", "plain"])
def pair(request, fisher) -> tuple[tw.TokenwiseContext, tw.TokenwiseContext]:
    x = correlated(800, seed=1)
    return (tw.calibrate(x, predict=request.param),
            tw.calibrate(x, predict=request.param, fisher=fisher))


def _cost(ctx: tw.TokenwiseContext, x: np.ndarray, fisher: np.ndarray, level: int
          ) -> tuple[float, float]:
    """(bits per element, mean e^T F e) of coding each row of ``x`` as its own stream, decoded
    by a context made from the wire bytes alone (what a server holds)."""
    enc = tw.TokenwiseCodec.with_context(ctx, level=level)
    dec = tw.TokenwiseCodec.with_context(tw.TokenwiseContext.from_bytes(ctx.to_bytes()),
                                         level=level)
    nbytes, kl = 0, 0.0
    limits = DecodeLimits()
    for row in x:
        data = enc.encode_array(row[None])
        nbytes += len(data)
        err = (row - dec.decode_array(memoryview(data), (1, C), limits)[0]).astype(np.float64)
        kl += float(err @ fisher @ err)
    return 8 * nbytes / x.size, kl / len(x)


def test_fit_shaping_factors_the_shrunk_matrix(fisher) -> None:
    for shrink in (0.0, 0.5):
        fb, piv = shaping.fit_shaping(fisher, shrink)
        assert np.all(np.triu(fb) == 0) and np.all(piv > 0)
        unit = fb + np.eye(C)
        want = (1 - shrink) * fisher + shrink * np.diag(np.diag(fisher))
        np.testing.assert_allclose(unit.T @ np.diag(piv) @ unit, want, rtol=2e-3, atol=2e-3)
        # the pivots' product is the determinant: the whole eigenvalue gap is available
        assert np.sum(np.log(piv)) == pytest.approx(np.linalg.slogdet(want)[1], rel=1e-2)
    with pytest.raises(ValueError):
        shaping.fit_shaping(np.ones((3, 4)))


def test_less_fisher_weighted_error_at_about_the_same_bits(pair, fisher) -> None:
    plain, shaped = pair
    x = correlated(150, seed=7)
    for level in (4, -4):
        b0, k0 = _cost(plain, x, fisher, level)
        b1, k1 = _cost(shaped, x, fisher, level)
        assert k1 < 0.8 * k0, (level, k0, k1)
        assert b1 < 1.1 * b0, (level, b0, b1)


def test_the_decoder_needs_no_shaping_and_the_id_ignores_it(pair) -> None:
    _, shaped = pair
    wire = shaped.to_bytes()
    again = tw.TokenwiseContext.from_bytes(wire)
    assert again.shaping is None and again.context_id == shaped.context_id
    assert shaped.file_bytes() == wire + shaping.section_bytes(shaped.shaping)
    with pytest.raises(BitstreamError):  # a server parses wire bytes: no file sections there
        tw.TokenwiseContext.from_bytes(shaped.file_bytes())


def test_error_stays_within_the_codec_bound(pair) -> None:
    _, shaped = pair
    x = correlated(30, seed=3, sink=True)
    codec = tw.TokenwiseCodec.with_context(shaped, level=0)
    for rows in (x[:1], x):
        out = codec.decode_array(memoryview(codec.encode_array(rows)), rows.shape,
                                 DecodeLimits())
        assert float(np.abs(out - rows).max()) <= codec.error_bound(rows)


def test_compiled_and_numpy_paths_agree(pair, monkeypatch) -> None:
    _, shaped = pair
    x = correlated(20, seed=4)
    d = shaped.steps(1.0, shaped.token_codes(x))
    got = {}
    for on in (True, False):
        monkeypatch.setattr(_slicer_jit, "ENABLED", on)
        if on and not _slicer_jit.active():
            pytest.skip("numba is not installed: only the numpy path runs")
        got[on] = shaped.quantize_inputs(x, d)
    assert np.mean(got[True][0] == got[False][0]) > 0.999  # a cell edge may round apart
    np.testing.assert_allclose(got[True][1], got[False][1], atol=1e-6)


def test_context_files_carry_it(pair, tmp_path) -> None:
    _, shaped = pair
    tw.CONTEXTS.remove(shaped.context_id)
    tw.register_context(shaped.to_bytes())  # the wire bytes known first: the file still wins
    path = tw.save_context(shaped, tmp_path)
    assert path.read_bytes() == shaped.file_bytes()
    key = tw.load_context_file(path)
    held = tw.registered_context(key)
    assert key == shaped.context_id and held is not None
    assert np.array_equal(held.shaping, shaped.shaping)
    tw.CONTEXTS.remove(key)


def test_calibrate_refuses_mistakes(fisher) -> None:
    x = correlated(100)
    with pytest.raises(ValueError, match="not both"):
        tw.calibrate(x, sensitivity=np.ones(C), fisher=fisher)
    with pytest.raises(ValueError, match="fisher must be"):
        tw.calibrate(x, fisher=np.eye(C + 1))


def _bad(pair, edit) -> bytes:
    _, shaped = pair
    section = bytearray(shaping.section_bytes(shaped.shaping))
    return shaped.to_bytes() + bytes(edit(section))


@pytest.mark.parametrize("edit", [
    lambda s: s[:-8] + struct.pack("<I", 1 << 30) + s[-4:],  # length past the start
    lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:],  # CRC mismatch
    lambda s: s[:-9] + s[-8:],  # one byte short
], ids=["length", "crc", "short"])
def test_a_corrupt_section_is_refused(pair, edit) -> None:
    with pytest.raises(BitstreamError):
        tw.TokenwiseContext.from_file_bytes(_bad(pair, edit))


def test_a_section_for_other_channels_is_refused(pair) -> None:
    _, shaped = pair
    other = shaping.section_bytes(np.tril(np.ones((C + 1, C + 1)), -1))
    with pytest.raises(BitstreamError, match="channels"):
        tw.TokenwiseContext.from_file_bytes(shaped.to_bytes() + other)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_file_bytes_parse_or_raise_typed(pair, data) -> None:
    _, shaped = pair
    body = mutate(shaped.file_bytes(), data, 0, changes=3)
    try:
        ctx = tw.TokenwiseContext.from_file_bytes(body)
    except BitstreamError:
        return
    assert ctx.shaping is None or np.all(np.isfinite(ctx.shaping))

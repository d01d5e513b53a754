"""Codec contexts travel with LLM sessions: a tokenwise context the server lacks is sent at
OPEN (named by its SHA-256 first), kept in a bounded store, and used only by the sessions that
opened with it; corrupt, oversized or unknown contexts get typed errors and the server goes on."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from splitcomp import codecs
from splitcomp.codecs import _tokenwise_context as twc
from splitcomp.codecs import tokenwise as tw
from splitcomp.llm import EdgeHalf, ServerHalf, SplitLM
from splitcomp.llm.hidden_wire import Wire
from splitcomp.llm.tokenwise_calibration import calibrate_edge
from splitcomp.runtime import BackgroundServer, ErrorCode, Server, ServerError, parse_prometheus
from splitcomp.runtime import protocol as P
from splitcomp.runtime.errors import RequestError
from splitcomp.runtime.llm.client import RemoteLM
from splitcomp.runtime.llm.contexts import ContextStore, codec_context
from splitcomp.runtime.llm.service import LLMDeployment, StepItem
from splitcomp.runtime.stats import total

pytestmark = pytest.mark.timeout(60)
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
SPLIT = 2
TW = tw.TokenwiseCodec.codec_id


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[BackgroundServer, LLMDeployment]]]:
    """``serve(model, **deployment_options)``: a server whose deployment ``lm`` knows no
    context but those clients send (``local_contexts=False``)."""
    running: list[BackgroundServer] = []

    def start(model: torch.nn.Module, **options) -> tuple[BackgroundServer, LLMDeployment]:
        options.setdefault("local_contexts", False)
        dep = LLMDeployment("lm", ServerHalf(model, SPLIT), **options)
        bg = Server(llm=[dep], tokens=TOKENS).start_in_thread()
        running.append(bg)
        return bg, dep

    yield start
    for bg in running:
        bg.stop(grace_s=2.0)


def _context(model: torch.nn.Module, seed: int) -> tw.TokenwiseContext:
    """A context calibrated on the tiny model's hidden states over random token windows."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return calibrate_edge(EdgeHalf(model, SPLIT), torch.randint(0, 256, (4, 48),
                                                                    generator=g))


@pytest.fixture(scope="module")
def ctx(tiny_models) -> tw.TokenwiseContext:
    return _context(tiny_models["llama_tiny"], 0)


def _raw(srv: BackgroundServer, who: str = "alice"):
    return connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKENS[who]}"},
                   compression=None, proxy=None, open_timeout=5, max_size=None)


def _ask(ws, frame: bytes) -> P.Response:
    ws.send(frame)
    return P.parse_response(ws.recv(timeout=10))


def test_a_context_the_server_lacks_is_sent_once(tiny_models, serve, prompt, ctx) -> None:
    model = tiny_models["llama_tiny"]
    data = ctx.to_bytes()
    codec = tw.TokenwiseCodec.with_context(ctx, level=-8)
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, 10)]
    srv, dep = serve(model)
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["alice"]) as lm:
        got = [s.token for s in lm.generate(prompt, 10)]
        assert lm.context_bytes_sent == len(data)  # unknown by digest, then sent
    assert got == want
    assert (dep.contexts.uploaded, dep.contexts.upload_bytes) == (1, len(data))
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["bob"]) as lm:
        assert [s.token for s in lm.generate(prompt, 10)] == want
        assert lm.context_bytes_sent == 0  # named by its digest: the server kept it
        assert lm.lm.open_bytes_sent < 100
    assert dep.contexts.uploaded == 1
    metrics = parse_prometheus(srv.metrics_text())
    assert total(metrics, "splitcomp_llm_codec_context_bytes_total") == len(data)
    assert total(metrics, "splitcomp_llm_codec_contexts") == 1


def test_a_resilient_stream_over_tokenwise_names_the_inner_context(tiny_models, serve, prompt,
                                                                   ctx) -> None:
    """The wrapper sends the inner codec's context under the inner codec's id; the server
    decodes the sliced streams with it."""
    model = tiny_models["llama_tiny"]
    inner = tw.TokenwiseCodec.with_context(ctx, level=-8)
    codec = codecs.get("resilient", inner="tokenwise", slices=2, slice_axis=1, **inner.params)
    ref = codec_context(codec)
    assert ref is not None and ref.codec_id == TW
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, 8)]
    srv, dep = serve(model)
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["alice"]) as lm:
        assert [s.token for s in lm.generate(prompt, 8)] == want
        assert lm.context_bytes_sent == len(ctx.to_bytes())
    assert dep.contexts.uploaded == 1


def test_sessions_decode_with_their_own_context(tiny_models, serve, prompt, ctx) -> None:
    """Another context under the same 20-bit id (as a hostile client could make) would not
    change what a session decodes: each session uses the context it opened with."""
    model = tiny_models["llama_tiny"]
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    cid = codec.params["context"]
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, 6)]
    srv, dep = serve(model)
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["alice"]) as lm:
        lm.open()
        other = _context(model, 1)
        saved = twc._STORE.pop(cid)
        twc._STORE[cid] = other  # the registry now says something else for this id
        try:
            assert [s.token for s in lm.generate(prompt, 6)] == want
        finally:
            twc._STORE[cid] = saved


def test_bad_contexts_get_typed_errors_and_the_server_goes_on(tiny_models, serve, prompt,
                                                              ctx) -> None:
    model = tiny_models["llama_tiny"]
    data = ctx.to_bytes()
    srv, dep = serve(model, max_context_bytes=len(data) + 10)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 1
    bad_crc = bytes(flipped)
    garbage = b"SCTX" + bytes(100)
    digest = hashlib.sha256(data).digest()
    cases = {
        "unknown": (P.CodecContext(TW, digest), ErrorCode.CONTEXT_UNKNOWN),
        "crc": (P.CodecContext.of(TW, bad_crc), ErrorCode.BAD_BITSTREAM),
        "garbage": (P.CodecContext.of(TW, garbage), ErrorCode.BAD_BITSTREAM),
        "digest": (P.CodecContext(TW, hashlib.sha256(b"x").digest(), data),
                   ErrorCode.BAD_BITSTREAM),
        "too large": (P.CodecContext.of(TW, data + bytes(11)), ErrorCode.TOO_LARGE),
        "codec": (P.CodecContext.of(3, data), ErrorCode.CODEC_NOT_ALLOWED),
    }
    with _raw(srv) as ws:
        for rid, (label, (ref, code)) in enumerate(cases.items(), 1):
            r = _ask(ws, P.encode_llm_open(rid, "lm", context=ref))
            assert r.code is code, (label, r.message)
        assert len(dep.contexts) == 0 and len(dep.sessions) == 0
        r = _ask(ws, P.encode_llm_open(50, "lm", context=P.CodecContext.of(TW, data)))
        assert r.ok and isinstance(r.llm, P.LLMOpened)
        r = _ask(ws, P.encode_llm_open(51, "lm", context=P.CodecContext(TW, digest)))
        assert r.ok  # now known by digest
    codec = tw.TokenwiseCodec.with_context(ctx, level=0)
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, 5)]
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["bob"]) as lm:
        assert [s.token for s in lm.generate(prompt, 5)] == want
    fp32_srv, _ = serve(model, codecs=["fp32"])
    with pytest.raises(ServerError) as info, RemoteLM(model, SPLIT, fp32_srv.url, "lm", codec,
                                                      token=TOKENS["alice"]) as lm:
        lm.open()
    assert info.value.code is ErrorCode.CODEC_NOT_ALLOWED


def test_context_store_is_bounded(tiny_models) -> None:
    contexts = [_context(tiny_models["llama_tiny"], s).to_bytes() for s in (2, 3, 4)]
    store = ContextStore(max_contexts=2, local=False)

    def digest_only(i: int) -> P.CodecContext:
        return P.CodecContext(TW, hashlib.sha256(contexts[i]).digest())

    held = [store.resolve(P.CodecContext.of(TW, d)) for d in contexts[:2]]  # two sessions
    with pytest.raises(RequestError) as info:  # both in use: refused, nothing forgotten
        store.resolve(P.CodecContext.of(TW, contexts[2]))
    assert info.value.code is ErrorCode.OVERLOADED and len(store) == 2
    del held  # the sessions ended: both are kept for reuse, the oldest goes first
    store.resolve(digest_only(1))
    store.resolve(P.CodecContext.of(TW, contexts[2]))
    assert len(store) == 2
    store.resolve(digest_only(1))
    with pytest.raises(RequestError) as info:
        store.resolve(digest_only(0))
    assert info.value.code is ErrorCode.CONTEXT_UNKNOWN


def test_process_registry_is_an_lru() -> None:
    reg = twc.CONTEXTS
    saved, bound = [reg.get(k) for k in reg.keys()], reg.max_items  # least recent first
    rng = np.random.default_rng(0)
    made = [twc.calibrate(rng.standard_normal((50, 8)).astype(np.float32)) for _ in range(3)]
    try:
        reg.max_items = 2
        reg.clear()
        ids = [twc.register_context(c) for c in made]
        assert reg.keys() == ids[1:] and len(reg) == 2
        with pytest.raises(codecs.BitstreamError, match="not registered"):
            twc.get_context(ids[0])
        assert twc.get_context(ids[1]) is made[1]
        assert reg.keys() == [ids[2], ids[1]]  # a lookup refreshes its place
        with twc.context_scope({ids[0]: made[0], ids[1]: made[0]}):
            assert twc.get_context(ids[0]) is made[0]
            assert twc.get_context(ids[1]) is made[0]  # the scope wins over the registry
        assert ids[0] not in reg
    finally:
        reg.max_items = bound
        reg.clear()
        for ctx in saved:
            reg.register(ctx)


def test_codec_context_of_codecs() -> None:
    assert codec_context(codecs.get("fp32")) is None
    assert codec_context(codecs.get("tokenwise")) is None  # self-contained mode
    ctx = twc.calibrate(np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32))
    ref = codec_context(tw.TokenwiseCodec.with_context(ctx), send=False)
    assert ref is not None and ref.id_only and ref.digest == hashlib.sha256(
        ctx.to_bytes()).digest()


def test_generate_command_sends_the_context(tiny_models, serve, ctx, tmp_path,
                                            capsys) -> None:
    """``--codec-context FILE`` loads the file and makes it the tokenwise codec's context."""
    from splitcomp.cli import generate as cli_generate

    srv, _ = serve(tiny_models["llama_tiny"])
    cid = twc.context_id(ctx.to_bytes())
    path = twc.save_context(ctx, tmp_path)
    p = argparse.ArgumentParser()
    cli_generate.add_arguments(p)
    out = tmp_path / "g.json"
    argv = ["--model", "llama_tiny", "--split", str(SPLIT), "--max-new-tokens", "4",
            "--codec", "tokenwise", "--codec-context", str(path), "--param", "level=-8",
            "--json", str(out), "--server", srv.url, "--token", TOKENS["alice"],
            "--deployment", "lm", "hello"]
    assert cli_generate.run(p.parse_args(argv)) == 0
    report = json.loads(out.read_text())
    assert report["params"]["context"] == cid
    assert report["context_bytes"] == len(ctx.to_bytes()) and report["new_tokens"] == 4
    with pytest.raises(SystemExit, match="--codec-context"):
        cli_generate.run(p.parse_args([*argv[:6], "--codec-context", str(tmp_path / "no"),
                                       "hello"]))
    assert "codec context" in capsys.readouterr().err


def _temporal_context(model: torch.nn.Module) -> tw.TokenwiseContext:
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        ctx = calibrate_edge(EdgeHalf(model, SPLIT), torch.randint(0, 256, (4, 48), generator=g),
                             temporal=True)
    assert ctx.temporal is not None
    return ctx


def test_previous_token_prediction_over_a_server(tiny_models, serve, prompt) -> None:
    """The server session keeps each token's decoded row for the next, as the edge does: the
    same tokens as the in-process split, through a real server."""
    model = tiny_models["llama_tiny"]
    codec = tw.TokenwiseCodec.with_context(_temporal_context(model), level=-8)
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, 10)]
    srv, _ = serve(model)
    with RemoteLM(model, SPLIT, srv.url, "lm", codec, token=TOKENS["alice"]) as lm:
        assert [s.token for s in lm.generate(prompt, 10)] == want


def test_a_failed_step_leaves_the_previous_row_as_it_was(tiny_models, prompt) -> None:
    """A STEP whose second stream is corrupt decodes its first (moving the session's previous
    row) and fails: the row is put back, so the edge, which codes the step again from the
    state before it, and the server agree; the same for a step whose tail fails."""
    model = tiny_models["llama_tiny"]
    ctx = _temporal_context(model)
    codec = tw.TokenwiseCodec.with_context(ctx, level=-8)
    dep = LLMDeployment("lm", ServerHalf(model, SPLIT), local_contexts=False)
    session = dep.sessions.open("alice", contexts={codec.params["context"]: ctx})
    hidden = EdgeHalf(model, SPLIT).step(prompt)
    wire = Wire(codec, compact=False)
    blobs = wire.send(hidden[:, :3])
    assert dep.run_steps([StepItem(1, session, 3, blobs)]).errors == [None]
    wire.confirm()
    row = session.contexts[tw.PREVIOUS_ROW].copy()
    good = wire.send(hidden[:, 3:5])
    bad = [good[0], good[1][:-1] + bytes([good[1][-1] ^ 1])]
    assert dep.run_steps([StepItem(2, session, 2, bad)]).errors == [ErrorCode.BAD_BITSTREAM]
    np.testing.assert_array_equal(session.contexts[tw.PREVIOUS_ROW], row)
    dep.server.step = lambda *a, **k: 1 / 0  # the tail fails after both streams decoded
    assert dep.run_steps([StepItem(3, session, 2, good)]).errors == [ErrorCode.INTERNAL]
    np.testing.assert_array_equal(session.contexts[tw.PREVIOUS_ROW], row)
    del dep.server.step
    assert wire.send(hidden[:, 3:5]) == good  # coded again from the state before: the same
    assert dep.run_steps([StepItem(4, session, 2, good)]).errors == [None]
    wire.confirm()
    np.testing.assert_array_equal(session.contexts[tw.PREVIOUS_ROW], wire._state[tw.PREVIOUS_ROW])

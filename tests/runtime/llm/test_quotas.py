"""Per-client quotas on LLM sessions: one token that opens sessions as fast as it can, fills
its KV-cache share or holds many codec contexts cannot lock another token out; the global caps
still hold; a client's usage is given back when its sessions close or expire."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest
import torch
from websockets.sync.client import connect

from splitcomp.codecs import tokenwise as tw
from splitcomp.llm import EdgeHalf, ServerHalf, greedy_unsplit
from splitcomp.llm.tokenwise_calibration import calibrate_edge
from splitcomp.runtime import BackgroundServer, ErrorCode, Server, ServerError, parse_prometheus
from splitcomp.runtime import protocol as P
from splitcomp.runtime.errors import RequestError
from splitcomp.runtime.llm.client import RemoteLM
from splitcomp.runtime.llm.service import LLMDeployment
from splitcomp.runtime.llm.sessions import SessionError, SessionManager, client_share
from splitcomp.runtime.stats import total

pytestmark = pytest.mark.timeout(60)
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
SPLIT = 2


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[BackgroundServer, LLMDeployment]]]:
    running: list[BackgroundServer] = []

    def start(model: torch.nn.Module, **options) -> tuple[BackgroundServer, LLMDeployment]:
        dep = LLMDeployment("lm", ServerHalf(model, SPLIT), **options)
        bg = Server(llm=[dep], tokens=TOKENS).start_in_thread()
        running.append(bg)
        return bg, dep

    yield start
    for bg in running:
        bg.stop(grace_s=2.0)


def _raw(srv: BackgroundServer, who: str):
    return connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKENS[who]}"},
                   compression=None, proxy=None, open_timeout=5, max_size=None)


def test_one_token_opening_sessions_cannot_lock_another_out(tiny_models, serve,
                                                            prompt) -> None:
    """The issue's attack: one token opens sessions as fast as it can (pipelined, no waiting
    for answers). It gets its share; the other token still opens and generates."""
    model = tiny_models["llama_tiny"]
    srv, dep = serve(model, max_sessions=64)
    share = client_share(64)
    assert dep.sessions.max_sessions_per_client == share == 16
    with _raw(srv, "alice") as ws:
        for rid in range(1, 201):
            ws.send(P.encode_llm_open(rid, "lm"))
        answers = [P.parse_response(ws.recv(timeout=10)) for _ in range(200)]
    opened = [a for a in answers if a.ok]
    refused = {a.code for a in answers if not a.ok}
    assert len(opened) == share and refused == {ErrorCode.KV_CACHE_FULL}
    assert "per client" in next(a.message for a in answers if not a.ok)
    want, _ = greedy_unsplit(model, prompt, 5)
    with RemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["bob"]) as lm:
        assert [s.token for s in lm.generate(prompt, 5)] == want
    assert dep.sessions.refused_by_quota == 200 - share
    metrics = parse_prometheus(srv.metrics_text())
    assert total(metrics, "splitcomp_llm_quota_refusals_total") == 200 - share


def test_kv_share_per_client(tiny_models, serve, prompt) -> None:
    model = tiny_models["llama_tiny"]
    per_token = ServerHalf(model, SPLIT).kv_bytes_per_token
    n = len(prompt)
    # alice's share holds one prompt and two more tokens; the server holds four prompts
    srv, dep = serve(model, max_kv_bytes=4 * n * per_token,
                     max_kv_bytes_per_client=(n + 2) * per_token)
    want, _ = greedy_unsplit(model, prompt, 3)
    with RemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"]) as a1, \
            RemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"]) as a2, \
            RemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["bob"]) as b:
        got = [s.token for s in a1.generate(prompt, 3)]  # n + 2 tokens: her share, full
        assert got == want
        with pytest.raises(ServerError, match="quota of this client") as info:
            a2.step(prompt)
        assert info.value.code is ErrorCode.KV_CACHE_FULL and a2.lm.edge.position == 0
        assert [s.token for s in b.generate(prompt, 3)] == want  # bob is not held back
        a1.close()  # frees alice's share
        assert [s.token for s in a2.generate(prompt, 3)] == want
    assert dep.sessions.reserved_bytes == 0 and not dep.sessions._clients


def _context(model: torch.nn.Module, seed: int) -> tw.TokenwiseContext:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return calibrate_edge(EdgeHalf(model, SPLIT), torch.randint(0, 256, (2, 32),
                                                                    generator=g))


def test_codec_context_share_per_client(tiny_models, serve, prompt) -> None:
    """With 4 context slots a client's sessions may hold 1 context: alice's second one is
    refused before it is uploaded, bob still uploads his, and alice may reuse hers."""
    model = tiny_models["llama_tiny"]
    srv, dep = serve(model, max_contexts=4, local_contexts=False)
    assert dep.sessions.max_contexts_per_client == 1
    ca, cb = _context(model, 0), _context(model, 1)
    codec_a = tw.TokenwiseCodec.with_context(ca, level=0)
    codec_b = tw.TokenwiseCodec.with_context(cb, level=0)
    with RemoteLM(model, SPLIT, srv.url, "lm", codec_a, token=TOKENS["alice"]) as a1, \
            RemoteLM(model, SPLIT, srv.url, "lm", codec_b, token=TOKENS["alice"]) as a2, \
            RemoteLM(model, SPLIT, srv.url, "lm", codec_a, token=TOKENS["alice"]) as a3, \
            RemoteLM(model, SPLIT, srv.url, "lm", codec_b, token=TOKENS["bob"]) as b:
        a1.step(prompt)
        with pytest.raises(ServerError) as info:
            a2.open()
        assert info.value.code is ErrorCode.OVERLOADED and "per client" in info.value.message
        assert dep.contexts.uploaded == 1  # refused before its bytes were looked at
        a3.step(prompt)  # the context her sessions hold already
        b.step(prompt)
        assert dep.contexts.uploaded == 2
        a1.close()
        a3.close()  # alice holds no context now: her other one fits
        a2.step(prompt)
    assert not dep.sessions._clients


def test_usage_is_given_back(tiny_models) -> None:
    now = [0.0]
    half = ServerHalf(tiny_models["llama_tiny"], SPLIT)
    bpt = half.kv_bytes_per_token
    sm = SessionManager(half, max_kv_bytes=100 * bpt, idle_timeout_s=5, clock=lambda: now[0],
                        max_sessions_per_client=2, max_kv_bytes_per_client=10 * bpt,
                        max_contexts_per_client=2)
    ctx = [(9, bytes([i]) * 32) for i in range(3)]
    a = sm.open("alice", client="alice", context_ids=[ctx[0], ctx[0]])
    b = sm.open("alice", client="alice", context_ids=[ctx[1]])
    with pytest.raises(SessionError, match="KV_CACHE_FULL"):
        sm.open("alice", client="alice")
    with pytest.raises(SessionError, match="OVERLOADED"):
        sm.check_contexts("alice", [ctx[2]])
    sm.check_contexts("alice", [ctx[1]])  # held already: no new slot
    sm.reserve(a, 6)
    with pytest.raises(SessionError, match="quota"):
        sm.reserve(b, 5)
    sm.finish(a, 6, ok=False)  # a failed step gives its tokens back to the client too
    sm.reserve(b, 5)
    sm.finish(b, 5, ok=True)
    assert sm.usage("alice").tokens == 5 and sm.usage("alice").sessions == 2
    c = sm.open("bob", client="bob")  # bob's usage is his own
    sm.reserve(c, 10)
    sm.finish(c, 10, ok=True)
    sm.close("alice", a.id)
    assert sm.usage("alice").contexts == {ctx[1]: 1}
    now[0] = 10.0
    assert sm.expire() == 2  # b and c
    assert sm.usage("alice").sessions == 0 and not sm._clients and sm.reserved_bytes == 0
    anon = [sm.open("anonymous") for _ in range(5)]  # no quota key: the global caps only
    assert len(anon) == 5 and not sm._clients


def test_anonymous_clients_are_keyed_by_what_admission_passes(tiny_models) -> None:
    """Without tokens every client is ``anonymous``: one quota for all would cap the whole
    server at a client's share, so they get none unless admission passes a key."""
    dep = LLMDeployment("lm", ServerHalf(tiny_models["llama_tiny"], SPLIT), max_sessions=8)
    req = P.parse_llm_request(P.encode_llm_open(1, "lm"))
    for _ in range(4):
        dep.admit("anonymous", req, lambda: None)
    for _ in range(2):
        dep.admit("anonymous", req, lambda: None, quota_key=("anonymous", "connection", 1))
    with pytest.raises(RequestError) as info:
        dep.admit("anonymous", req, lambda: None, quota_key=("anonymous", "connection", 1))
    assert info.value.code is ErrorCode.KV_CACHE_FULL
    dep.admit("anonymous", req, lambda: None, quota_key=("anonymous", "connection", 2))
    assert len(dep.sessions) == 7
    dep.close()


def test_per_client_defaults_and_flags(tiny_models) -> None:
    from splitcomp.cli._llm_args import add_session_limits, session_limits

    half = ServerHalf(tiny_models["llama_tiny"], SPLIT)
    d = LLMDeployment("lm", half, max_kv_bytes=1 << 30)
    sm = d.sessions
    assert (sm.max_sessions_per_client, sm.max_kv_bytes_per_client,
            sm.max_contexts_per_client) == (1024, 1 << 28, 16)
    d = LLMDeployment("lm", half, max_sessions_per_client=0, max_kv_bytes_per_client=0,
                      max_contexts_per_client=0)
    assert (d.sessions.max_sessions_per_client, d.sessions.max_kv_bytes_per_client,
            d.sessions.max_contexts_per_client) == (None, None, None)
    assert LLMDeployment("lm", half).sessions.max_kv_bytes_per_client is None  # no cap at all
    p = argparse.ArgumentParser()
    add_session_limits(p)
    opts = session_limits(p.parse_args(["--max-sessions-per-client", "3",
                                        "--max-kv-bytes-per-client", "0"]))
    assert opts == {"max_sessions_per_client": 3, "max_kv_bytes_per_client": 0,
                    "max_contexts_per_client": None, "max_step_tokens": 4096,
                    "min_step_bytes_per_token": 8}
    d = LLMDeployment("lm", half, max_sessions=16, **opts)
    assert (d.sessions.max_sessions_per_client, d.sessions.max_kv_bytes_per_client) == (3, None)

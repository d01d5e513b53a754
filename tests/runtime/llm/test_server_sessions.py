"""LLM sessions over a real server on 127.0.0.1: exact generation, isolation between tokens,
the KV-cache cap, the idle timeout, continuous batching and malformed frames."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from websockets.sync.client import connect

from splitcomp import codecs
from splitcomp.codecs.compact import session_stream
from splitcomp.llm import EdgeHalf, ServerHalf, greedy_unsplit
from splitcomp.runtime import BackgroundServer, ErrorCode, Server, ServerError, parse_prometheus
from splitcomp.runtime import protocol as P
from splitcomp.runtime.client import AsyncSplitClient
from splitcomp.runtime.llm.client import AsyncRemoteLM, RemoteLM
from splitcomp.runtime.llm.service import LLMDeployment
from splitcomp.runtime.llm.sessions import SessionError, SessionManager
from splitcomp.runtime.stats import total
from tests.llm.conftest import TINY

pytestmark = pytest.mark.timeout(60)
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
SPLIT = 2


@pytest.fixture
def serve() -> Iterator[Callable[..., BackgroundServer]]:
    """``serve(model, **deployment_options)``: a server with one LLM deployment ``lm``."""
    running: list[BackgroundServer] = []

    def start(model: torch.nn.Module, split: int = SPLIT, **options) -> BackgroundServer:
        dep = LLMDeployment("lm", ServerHalf(model, split), **options)
        bg = Server(llm=[dep], tokens=TOKENS).start_in_thread()
        running.append(bg)
        return bg

    yield start
    for bg in running:
        bg.stop(grace_s=2.0)


def _prompts(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, 256, (int(k),), generator=g)
            for k in torch.randint(2, 9, (n,), generator=g)]


def _metrics(srv: BackgroundServer) -> dict:
    return parse_prometheus(srv.metrics_text())


def _raw(srv: BackgroundServer, who: str = "alice"):
    return connect(srv.url, additional_headers={"Authorization": f"Bearer {TOKENS[who]}"},
                   compression=None, proxy=None, open_timeout=5)


def _ask(ws, frame: bytes) -> P.Response:
    ws.send(frame)
    return P.parse_response(ws.recv(timeout=10))


@pytest.mark.parametrize("name", TINY)
def test_greedy_over_the_server_equals_the_unsplit_model(tiny_models, serve, prompt,
                                                         name) -> None:
    model = tiny_models[name]
    want, logits = greedy_unsplit(model, prompt, 12)
    srv = serve(model)
    with RemoteLM(model, SPLIT, srv.url, "lm", "fp32", token=TOKENS["alice"],
                  sampling=P.Sampling(logprobs=3)) as lm:
        steps = list(lm.generate(prompt, 12))
    assert [s.token for s in steps] == want
    for s, lg in zip(steps, logits, strict=True):
        logp = torch.log_softmax(lg.float(), -1)
        assert s.logprob == pytest.approx(float(logp[s.token]), abs=1e-4)
        assert [t for t, _ in s.top] == logp.topk(3).indices.tolist()
    assert [s.position for s in steps] == [len(prompt) + i for i in range(12)]
    assert steps[0].tokens_sent == len(prompt) and steps[1].tokens_sent == 1
    # a decode step: one fp32 bitstream of H floats, compact (the prefill taught the server
    # its template): a session stream, 5 bytes of container, in a frame of fixed overhead
    h = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    blob = len(session_stream(codecs.get("fp32").encode(torch.zeros(1, 1, h), compact=True)))
    assert blob == 4 * h + 5
    assert steps[1].bytes_sent == 12 + 2 + 16 + 4 + 4 + blob
    assert steps[1].bytes_received == 12 + 2 + 27 + 3 * 8
    s = _metrics(srv)
    assert total(s, "splitcomp_llm_tokens_total") == len(prompt) + 11
    assert total(s, "splitcomp_llm_sessions") == 0 and total(s, "splitcomp_llm_kv_bytes") == 0


def test_seeded_sampling_is_reproducible(tiny_models, serve, prompt) -> None:
    model = tiny_models["llama_tiny"]
    srv = serve(model)

    def run(seed: int) -> list[int]:
        with RemoteLM(model, SPLIT, srv.url, "lm", "fp16", token=TOKENS["bob"],
                      sampling=P.Sampling(temperature=1.5, top_k=20, seed=seed)) as lm:
            return [s.token for s in lm.generate(prompt, 16)]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert a != greedy_unsplit(model, prompt, 16)[0]


def test_sessions_are_bound_to_the_token(tiny_models, serve, prompt) -> None:
    model = tiny_models["llama_tiny"]
    srv = serve(model)
    edge = EdgeHalf(model, SPLIT)
    fp32 = codecs.get("fp32")
    with _raw(srv, "alice") as alice, _raw(srv, "bob") as bob:
        ids = set()
        for rid in (1, 2, 3):
            opened = _ask(alice, P.encode_llm_open(rid, "lm")).llm
            assert isinstance(opened, P.LLMOpened) and len(opened.session) == 16
            ids.add(opened.session)
        assert len(ids) == 3
        sid = opened.session
        prefill = P.encode_llm_step(9, sid, len(prompt), [fp32.encode(edge.step(prompt))])
        assert _ask(alice, prefill).llm.position == len(prompt)
        step = P.encode_llm_step(10, sid, 1, [fp32.encode(edge.step(torch.tensor([5])))])
        unknown = secrets.token_bytes(16)
        answers = [_ask(bob, step), _ask(bob, P.encode_llm_close(11, sid)),
                   _ask(bob, P.encode_llm_close(12, unknown)),
                   _ask(bob, P.encode_llm_step(13, unknown, 1, [b"x"]))]
        assert [a.code for a in answers] == [ErrorCode.SESSION_NOT_FOUND] * 4
        assert len({a.message for a in answers}) == 1  # another's session looks like none
        r = _ask(alice, step)  # alice's session is untouched by bob's attempts
        assert r.ok and r.llm.position == len(prompt) + 1
        assert _ask(alice, P.encode_llm_close(14, sid)).llm == P.LLMClosed(len(prompt) + 1)
        again = P.encode_llm_step(15, sid, 1, [fp32.encode(edge.step(torch.tensor([6])))])
        assert _ask(alice, again).code is ErrorCode.SESSION_NOT_FOUND  # closed
        assert _ask(alice, step).llm.position == len(prompt) + 1  # a retry: the same answer
        retry = _ask(alice, P.encode_llm_close(14, sid))  # a retried id gets the same answer
        assert retry.llm == P.LLMClosed(len(prompt) + 1)


def test_a_session_survives_a_reconnection(tiny_models, serve, prompt) -> None:
    """Sessions belong to the token, not the connection: after a dropped connection the client
    reconnects and the session goes on where it was."""
    model = tiny_models["gpt2_tiny"]
    srv = serve(model)
    want, _ = greedy_unsplit(model, prompt, 8)

    async def main() -> list[int]:
        async with AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"]) as lm:
            got = []
            async for step in lm.generate(prompt, 8):
                got.append(step.token)
                if len(got) == 3:
                    await lm.client._ws.close()  # the next step reconnects
            assert lm.client.reconnects == 1
            return got

    assert asyncio.run(main()) == want


def test_kv_cache_cap_refuses_and_others_keep_going(tiny_models, serve, prompt) -> None:
    model = tiny_models["llama_tiny"]
    per_token = ServerHalf(model, SPLIT).kv_bytes_per_token
    srv = serve(model, max_kv_bytes=(len(prompt) + 4) * per_token,
                max_kv_bytes_per_client=0)  # the global cap alone (quotas: test_quotas.py)
    want, _ = greedy_unsplit(model, prompt, 5)

    async def main() -> None:
        a = AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"])
        b = AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["bob"])
        try:
            first = await a.step(prompt)
            with pytest.raises(ServerError) as info:
                await b.step(prompt)  # 2 x 7 tokens do not fit in 11
            assert info.value.code is ErrorCode.KV_CACHE_FULL
            assert "KV cache full" in info.value.message and b.edge.position == 0
            got = [first.token]
            for _ in range(4):  # a fills the cap exactly: 7 + 4 tokens
                got.append((await a.step(torch.tensor([got[-1]]))).token)
            assert got == want
            with pytest.raises(ServerError, match="KV_CACHE_FULL"):
                await a.step(torch.tensor([got[-1]]))
            assert a.edge.position == len(prompt) + 4  # the refused step is undone here too
            await a.close()  # frees its 11 tokens: b fits now
            assert (await b.step(prompt)).token == want[0]
        finally:
            await asyncio.gather(a.close(), b.close())

    asyncio.run(main())
    s = _metrics(srv)
    assert total(s, "splitcomp_errors_total", code="KV_CACHE_FULL") == 2


def test_idle_sessions_expire_and_free_their_cache(tiny_models, serve, prompt) -> None:
    model = tiny_models["gpt2_tiny"]
    srv = serve(model, idle_timeout_s=0.2)

    async def main() -> None:  # without resume (rebuilding: test_restart.py)
        lm = AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"], resume=False)
        try:
            await lm.step(prompt)
            assert total(_metrics(srv), "splitcomp_llm_kv_bytes") > 0
            deadline = time.monotonic() + 10
            while total(_metrics(srv), "splitcomp_llm_sessions") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            with pytest.raises(ServerError) as info:
                await lm.step(torch.tensor([1]))
            assert info.value.code is ErrorCode.SESSION_NOT_FOUND
        finally:
            await lm.close()  # closing an expired session is not an error

    asyncio.run(main())
    s = _metrics(srv)
    assert total(s, "splitcomp_llm_sessions_expired_total") == 1
    assert total(s, "splitcomp_llm_sessions") == 0 and total(s, "splitcomp_llm_kv_bytes") == 0


@pytest.mark.parametrize("name", TINY)
def test_concurrent_sessions_share_tail_forwards_exactly(tiny_models, serve, name) -> None:
    """Continuous batching: decode steps of different sessions (at different positions) run
    as one tail forward, and every session still gets the tokens it gets alone."""
    model, n, new = tiny_models[name], 6, 8
    prompts = _prompts(n)
    alone = [greedy_unsplit(model, p, new) for p in prompts]
    want = [tokens for tokens, _ in alone]
    srv = serve(model, max_wait_ms=50, max_batch_size=n)

    async def main() -> list[list]:
        client = AsyncSplitClient(srv.url, token=TOKENS["alice"])  # one shared connection
        lms = [AsyncRemoteLM(model, SPLIT, client=client, deployment="lm") for _ in prompts]

        async def run(lm: AsyncRemoteLM, p: torch.Tensor) -> list:
            try:
                return [s async for s in lm.generate(p, new)]
            finally:
                await lm.close()

        try:
            return await asyncio.gather(*(run(lm, p) for lm, p in zip(lms, prompts,
                                                                        strict=True)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [[s.token for s in r] for r in results] == want
    assert max(s.timing.batch_size for r in results for s in r) > 1
    for r, (_, logits) in zip(results, alone, strict=True):  # equal up to float rounding
        got = torch.tensor([s.logprob for s in r])
        ref = torch.stack([torch.log_softmax(lg.float(), -1)[s.token]
                           for s, lg in zip(r, logits, strict=True)])
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    s = _metrics(srv)
    forwards = total(s, "splitcomp_batch_size_count")
    assert total(s, "splitcomp_batch_size_sum") == n * new  # one row per step, prefills too
    assert forwards < n * new  # fewer tail forwards than steps


def test_malformed_llm_frames_get_errors_and_others_go_on(tiny_models, serve, prompt) -> None:
    model = tiny_models["llama_tiny"]
    srv = serve(model, codecs=["fp32", "fp16"])
    want, _ = greedy_unsplit(model, prompt, 12)
    edge = EdgeHalf(model, SPLIT)
    fp32 = codecs.get("fp32")
    with _raw(srv, "alice") as ws, RemoteLM(model, SPLIT, srv.url, "lm",
                                           token=TOKENS["bob"]) as other:
        gen = other.generate(prompt, 12)
        got = [next(gen).token]
        sid = _ask(ws, P.encode_llm_open(1, "lm")).llm.session
        hidden = edge.step(prompt)
        good = P.encode_llm_step(2, sid, len(prompt), [fp32.encode(hidden)])
        bad = {
            "truncated": (good[:40], ErrorCode.BAD_FRAME),
            "llm version": (good[:12] + b"\x07" + good[13:], ErrorCode.BAD_FRAME),
            "op": (good[:13] + b"\x09" + good[14:], ErrorCode.BAD_FRAME),
            "lengths": (good + b"\x00", ErrorCode.BAD_FRAME),
            "corrupt": (good[:-3] + b"\x00\x00\x00", ErrorCode.BAD_BITSTREAM),
            "token count": (P.encode_llm_step(3, sid, 2, [fp32.encode(hidden)]),
                            ErrorCode.BAD_INPUT),
            "width": (P.encode_llm_step(4, sid, 1, [fp32.encode(torch.zeros(1, 1, 3))]),
                      ErrorCode.BAD_INPUT),
            "codec": (P.encode_llm_step(5, sid, len(prompt),
                                        [codecs.get("int8").encode(hidden)]),
                      ErrorCode.CODEC_NOT_ALLOWED),
            "deployment": (P.encode_llm_open(6, "nope"), ErrorCode.UNKNOWN_DEPLOYMENT),
        }
        for label, (frame, code) in bad.items():
            assert _ask(ws, frame).code is code, label
            got.append(next(gen).token)  # the other session keeps being served
        r = _ask(ws, good)  # the refused steps left the session as it was
        assert r.ok and r.llm.position == len(prompt) and r.llm.token == want[0]
        got += [s.token for s in gen]
    assert got == want
    with _raw(srv, "alice") as ws_bad:
        ws_bad.send(b"SP\x01\x02")  # no request id: error id 0, then the connection closes
        assert P.parse_response(ws_bad.recv(timeout=10)).code is ErrorCode.BAD_FRAME


def test_generate_command_with_server(tiny_models, serve, tmp_path, capsys) -> None:
    import argparse
    import json

    from splitcomp.cli import generate as cli_generate

    srv = serve(tiny_models["llama_tiny"])

    def run(*extra: str) -> tuple[str, dict]:
        p = argparse.ArgumentParser()
        cli_generate.add_arguments(p)
        out = tmp_path / "g.json"
        argv = ["--model", "llama_tiny", "--split", str(SPLIT), "--max-new-tokens", "6",
                "--json", str(out), "--force", *extra, "hello"]
        assert cli_generate.run(p.parse_args(argv)) == 0
        return capsys.readouterr().out, json.loads(out.read_text())

    text, embedded = run()
    remote_text, remote = run("--server", srv.url, "--token", TOKENS["alice"],
                              "--deployment", "lm")
    assert remote_text == text and remote["new_tokens"] == embedded["new_tokens"] == 6
    assert remote["prefill_bytes"] == embedded["prefill_bytes"]
    assert remote["wire_bytes"] > 6 * remote["bytes_per_token"]
    with pytest.raises(SystemExit, match="UNAUTHORIZED|refused"):
        run("--server", srv.url, "--token", "wrong-token-0123456789", "--deployment", "lm")


def test_serve_command_builds_an_llm_deployment() -> None:
    import argparse

    from splitcomp.cli import serve as cli_serve

    p = argparse.ArgumentParser()
    cli_serve.add_arguments(p)
    server = cli_serve.build_server(p.parse_args(
        ["--llm", "gpt2_tiny", "--llm-split", "1", "--max-kv-bytes", "4096",
         "--session-idle-timeout", "9", "--port", "0"]))
    (dep,) = server.llm.values()
    assert dep.name == "gpt2_tiny" and dep.server.split == 1 and not server.deployments
    assert dep.sessions.max_kv_bytes == 4096 and dep.sessions.idle_timeout_s == 9
    with pytest.raises(SystemExit, match="llm-split"):
        cli_serve.build_server(p.parse_args(["--llm", "gpt2_tiny"]))


def test_session_manager_accounting(tiny_models) -> None:
    now = [0.0]
    half = ServerHalf(tiny_models["llama_tiny"], SPLIT)
    sm = SessionManager(half, max_kv_bytes=10 * half.kv_bytes_per_token, idle_timeout_s=5,
                        clock=lambda: now[0])
    a, b = sm.open("alice"), sm.open("bob")
    sm.reserve(a, 6)
    with pytest.raises(SessionError, match="SESSION_BUSY"):
        sm.reserve(a, 1)
    with pytest.raises(SessionError, match="KV_CACHE_FULL"):
        sm.reserve(b, 5)
    sm.finish(a, 6, ok=False)  # a failed step gives its tokens back
    sm.reserve(b, 5)
    sm.finish(b, 5, ok=True)
    assert sm.reserved_bytes == 5 * half.kv_bytes_per_token
    with pytest.raises(SessionError, match="SESSION_NOT_FOUND"):
        sm.get("alice", b.id)
    now[0] = 4.0
    sm.reserve(sm.get("alice", a.id), 1)
    sm.finish(a, 1, ok=True)
    now[0] = 8.5  # b idle since 0, a since 4
    assert sm.expire() == 1 and b.id not in sm and a.id in sm
    assert sm.reserved_bytes == half.kv_bytes_per_token and sm.expired == 1
    assert sm.close("alice", a.id) == 0 and len(sm) == 0 and sm.reserved_bytes == 0

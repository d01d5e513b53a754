"""LLM sessions survive the server: after a restart on the same port (the step in flight
included), an idle expiry or a lost answer, the client opens a new session, replays the
bitstreams it sent, and the tokens are those of an uninterrupted run, greedy or sampled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from splitcomp.llm import ServerHalf, greedy_unsplit
from splitcomp.runtime import BackgroundServer, ErrorCode, Server, ServerError
from splitcomp.runtime import protocol as P
from splitcomp.runtime.errors import ConnectionLost
from splitcomp.runtime.llm.client import AsyncRemoteLM, RemoteLM
from splitcomp.runtime.llm.service import LLMDeployment, position_seed
from tests.llm.conftest import TINY

pytestmark = pytest.mark.timeout(90)
TOKENS = {"alice": "alice-token-0123456789"}
SPLIT = 2
NEW = 10


class Servers:
    """Servers of one model, each on the same port as the first."""

    def __init__(self, model: torch.nn.Module, **options) -> None:
        self.model, self.options = model, options
        self.port = 0
        self.running: list[BackgroundServer] = []

    def start(self) -> BackgroundServer:
        dep = LLMDeployment("lm", ServerHalf(self.model, SPLIT), **self.options)
        bg = Server(llm=[dep], tokens=TOKENS, port=self.port).start_in_thread()
        self.port = bg.port
        self.running.append(bg)
        return bg

    def restart_later(self, delay_s: float) -> threading.Thread:
        """Stop the current server now and start a new one on its port after ``delay_s``: a
        step sent meanwhile is in flight across the restart."""
        self.running[-1].stop(grace_s=1.0)
        t = threading.Timer(delay_s, self.start)
        t.start()
        return t


@pytest.fixture
def servers() -> Iterator[Callable[..., Servers]]:
    made: list[Servers] = []

    def make(model: torch.nn.Module, **options) -> Servers:
        s = Servers(model, **options)
        made.append(s)
        return s

    yield make
    for s in made:
        for bg in s.running:
            bg.stop(grace_s=1.0)


def _generate_across_restarts(servers: Servers, prompt: torch.Tensor, at: tuple[int, ...],
                              **options) -> tuple[list[int], RemoteLM]:
    srv = servers.start()
    lm = RemoteLM(servers.model, SPLIT, srv.url, "lm", token=TOKENS["alice"], **options)
    got = []
    try:
        for i, step in enumerate(lm.generate(prompt, NEW)):
            got.append(step.token)
            if i + 1 in at:
                servers.restart_later(0.3)  # the next step is sent meanwhile
        return got, lm
    finally:
        lm.close()


@pytest.mark.parametrize("name", TINY)
def test_greedy_generation_survives_server_restarts(tiny_models, servers, prompt,
                                                    name) -> None:
    model = tiny_models[name]
    want, _ = greedy_unsplit(model, prompt, NEW)
    got, lm = _generate_across_restarts(servers(model), prompt, (3, 7))
    assert got == want
    assert lm.rebuilds == 2 and lm.lm.replay_mismatches == 0
    assert lm.lm.replayed_tokens == (len(prompt) + 2) + (len(prompt) + 6)
    assert lm.lm.client.reconnects >= 2


def test_sampled_generation_survives_a_restart(tiny_models, servers, prompt) -> None:
    """Each draw is seeded by the session's seed and the token's position, so the rebuilt
    session samples what the lost one would have."""
    model = tiny_models["llama_tiny"]
    sampling = P.Sampling(temperature=1.5, top_k=20, seed=7)
    ref = servers(model)
    ref.start()
    with RemoteLM(model, SPLIT, ref.running[-1].url, "lm", token=TOKENS["alice"],
                  sampling=sampling) as lm:
        want = [s.token for s in lm.generate(prompt, NEW)]
    assert want != greedy_unsplit(model, prompt, NEW)[0]
    got, lm = _generate_across_restarts(servers(model), prompt, (4,), sampling=sampling)
    assert got == want and lm.rebuilds == 1 and lm.lm.replay_mismatches == 0
    assert position_seed(7, 10) != position_seed(7, 11) != position_seed(8, 11)


def test_per_message_streams_replay_in_small_chunks(tiny_models, servers, prompt) -> None:
    """One bitstream per step (the prompt's cannot be split) replayed 2 tokens a STEP; a
    server that takes at most 4 tokens a step makes the client halve its chunks itself."""
    model = tiny_models["gpt2_tiny"]
    want, _ = greedy_unsplit(model, prompt, NEW)
    got, lm = _generate_across_restarts(servers(model), prompt, (5,), per_token=False,
                                        replay_chunk_tokens=2)
    assert got == want and lm.rebuilds == 1
    got, lm = _generate_across_restarts(servers(model, max_step_tokens=len(prompt)), prompt,
                                        (5,), replay_chunk_tokens=64)
    assert got == want and lm.rebuilds == 1 and lm.lm.replay_chunk_tokens == 64


def test_an_expired_session_is_rebuilt(tiny_models, servers, prompt) -> None:
    model = tiny_models["llama_tiny"]
    want, _ = greedy_unsplit(model, prompt, 6)
    s = servers(model, idle_timeout_s=0.2)
    srv = s.start()

    async def main() -> list[int]:
        async with AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"]) as lm:
            got = []
            async for step in lm.generate(prompt, 6):
                got.append(step.token)
                if len(got) == 3:
                    dep = srv.server.llm["lm"]
                    while len(dep.sessions):  # expired and freed by the server's upkeep
                        await asyncio.sleep(0.05)
            assert lm.rebuilds == 1
            return got

    assert asyncio.run(main()) == want


def test_a_lost_answer_rebuilds_on_the_next_step(tiny_models, servers, prompt) -> None:
    """A step the server ran but whose answer never came (the connection gave up): the edge
    undoes it, and the next step rebuilds the server session instead of guessing its state."""
    model = tiny_models["llama_tiny"]
    want, _ = greedy_unsplit(model, prompt, 6)
    srv = servers(model).start()

    async def main() -> list[int]:
        async with AsyncRemoteLM(model, SPLIT, srv.url, "lm", token=TOKENS["alice"]) as lm:
            got = [(await lm.step(prompt)).token]
            real = lm.client.exchange

            async def lose_answer(rid: int, frame: bytes):
                await real(rid, frame)  # the server ran it...
                raise ConnectionLost("answer lost")  # ...but the client never heard

            lm.client.exchange = lose_answer
            with pytest.raises(ConnectionLost):
                await lm.step(torch.tensor([got[-1]]))
            lm.client.exchange = real
            assert lm.edge.position == len(prompt)
            while len(got) < 6:
                got.append((await lm.step(torch.tensor([got[-1]]))).token)
            assert lm.rebuilds == 1
            assert len(srv.server.llm["lm"].sessions) == 1  # the old one was closed
            return got

    assert asyncio.run(main()) == want


def test_without_resume_a_restart_is_an_error(tiny_models, servers, prompt) -> None:
    s = servers(tiny_models["llama_tiny"])
    srv = s.start()
    with RemoteLM(s.model, SPLIT, srv.url, "lm", token=TOKENS["alice"], resume=False) as lm:
        gen = lm.generate(prompt, 4)
        next(gen)
        s.restart_later(0.1)
        with pytest.raises(ServerError) as info:
            next(gen)
        assert info.value.code is ErrorCode.SESSION_NOT_FOUND and lm.rebuilds == 0


def test_previous_token_prediction_survives_a_restart(tiny_models, servers, prompt) -> None:
    """A tokenwise context with previous-token prediction: the rebuilt session decodes the
    replayed streams in their order, so it holds the previous row the lost one held, and the
    tokens are those of the split without a restart."""
    from splitcomp.codecs import tokenwise as tw
    from splitcomp.llm import SplitLM

    from .test_session_contexts import _temporal_context

    model = tiny_models["llama_tiny"]
    codec = tw.TokenwiseCodec.with_context(_temporal_context(model), level=-8)
    want = [s.token for s in SplitLM(model, SPLIT, codec).generate(prompt, NEW)]
    got, lm = _generate_across_restarts(servers(model), prompt, (4,), codec=codec)
    assert got == want and lm.rebuilds == 1 and lm.lm.replay_mismatches == 0

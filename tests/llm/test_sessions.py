"""Many sessions on one server half: isolated caches, interleaved or batched steps."""

from __future__ import annotations

import pytest
import torch

from splitcomp.llm import EdgeHalf, ServerHalf, SplitLM

from .conftest import TINY


def _prompts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 256, (n,), generator=g) for n in (5, 9, 3)]


def _alone(model, split: int, prompt: torch.Tensor, n: int) -> list[int]:
    return [s.token for s in SplitLM(model, split, "fp32").generate(prompt, n)]


@pytest.mark.parametrize("name", TINY)
def test_interleaved_sessions_do_not_interfere(tiny_models, name) -> None:
    model, split, n = tiny_models[name], 2, 12
    prompts = _prompts()
    expected = [_alone(model, split, p, n) for p in prompts]
    server = ServerHalf(model, split)
    lms = [SplitLM(model, split, "fp32", server=server) for _ in prompts]
    gens = [lm.generate(p, n) for lm, p in zip(lms, prompts, strict=True)]
    got: list[list[int]] = [[] for _ in prompts]
    for _ in range(n):  # round robin: a, b, c, a, b, c, ...
        for i, g in enumerate(gens):
            got[i].append(next(g).token)
    assert got == expected
    assert len({lm.session.id for lm in lms}) == len(lms)
    assert [lm.session.position for lm in lms] == [len(p) + n - 1 for p in prompts]
    assert [lm.session.kv_bytes for lm in lms] == [
        lm.session.position * server.kv_bytes_per_token for lm in lms]


@pytest.mark.parametrize("name", TINY)
def test_batched_decode_steps_match_separate_runs(tiny_models, name) -> None:
    """Continuous batching: the sessions' decode steps (at different positions) in one tail
    forward give the tokens of separate runs; logits agree to float rounding (the batched
    matmuls and padded attention reorder the sums)."""
    model, split, n = tiny_models[name], 1, 10
    prompts = _prompts()
    expected = [_alone(model, split, p, n) for p in prompts]
    server = ServerHalf(model, split)
    edges = [EdgeHalf(model, split) for _ in prompts]
    sessions = [server.new_session() for _ in prompts]
    # prefills of different lengths in one call: they run one by one inside
    logits = server.step_batch(sessions, [e.step(p) for e, p in zip(edges, prompts, strict=True)])
    got = [[int(lg[0, -1].argmax())] for lg in logits]
    for _ in range(n - 1):
        hiddens = [e.step(torch.tensor([t[-1]])) for e, t in zip(edges, got, strict=True)]
        logits = server.step_batch(sessions, hiddens)
        for t, lg in zip(got, logits, strict=True):
            assert lg.shape == (1, 1, model.config.vocab_size)
            t.append(int(lg[0, -1].argmax()))
    assert got == expected
    assert [s.position for s in sessions] == [len(p) + n - 1 for p in prompts]


def test_batched_logits_close_to_single(tiny_models) -> None:
    model = tiny_models["llama_tiny"]
    server = ServerHalf(model, 2)
    edge_a, edge_b = EdgeHalf(model, 2), EdgeHalf(model, 2)
    ha, hb = edge_a.step(torch.arange(6)), edge_b.step(torch.arange(3))
    solo = server.new_session(), server.new_session()
    batched = server.new_session(), server.new_session()
    for s, h in zip(solo + batched, (ha, hb, ha, hb), strict=True):
        s.step(h)
    na, nb = edge_a.step(torch.tensor([9])), edge_b.step(torch.tensor([8]))
    one = [solo[0].step(na), solo[1].step(nb)]
    both = server.step_batch(batched, [na, nb])
    for x, y in zip(one, both, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert batched[0].kv_bytes == solo[0].kv_bytes > batched[1].kv_bytes == solo[1].kv_bytes
    assert batched[0].kv_bytes == 7 * server.kv_bytes_per_token  # 6 prompt tokens + 1 step
    with pytest.raises(ValueError, match="once per batch"):
        server.step_batch([batched[0], batched[0]], [na, na])


def test_failed_step_leaves_session_unchanged(tiny_models, monkeypatch) -> None:
    model = tiny_models["llama_tiny"]
    edge, server = EdgeHalf(model, 2), ServerHalf(model, 2)
    session = server.new_session()
    session.step(edge.step(torch.arange(4)))
    before = session.kv_bytes
    hidden = edge.step(torch.tensor([5]))
    calls = {"n": 0}
    norm = server.part.norm.forward

    def fail(x):  # the blocks have already written their keys/values by now
        calls["n"] += 1
        raise RuntimeError("boom")

    monkeypatch.setattr(server.part.norm, "forward", fail)
    with pytest.raises(RuntimeError, match="boom"):
        session.step(hidden)
    assert calls["n"] == 1 and session.kv_bytes == before and session.position == 4
    monkeypatch.setattr(server.part.norm, "forward", norm)
    other = ServerHalf(model, 2)
    with pytest.raises(ValueError, match="another server"):
        other.step(session, hidden)
    session.step(hidden)
    assert session.position == 5

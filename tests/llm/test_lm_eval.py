"""Perplexity and the baseline/coded comparison of a split LLM (:mod:`splitcomp.llm.lm_eval`)."""

from __future__ import annotations

import pytest


def test_compare_matches_perplexity(tiny_models) -> None:
    import torch

    from splitcomp import codecs
    from splitcomp.llm import split_model
    from splitcomp.llm.lm_eval import compare, edge_pass, perplexity

    edge, server = split_model(tiny_models["llama_tiny"], 2)
    batches = [edge_pass(edge, torch.randint(0, 256, (1, 24), generator=torch.Generator()
                                             .manual_seed(i))) for i in range(2)]
    c = compare(server, batches, codecs.get("int8"))
    assert c.base.ppl == pytest.approx(perplexity(server, batches, None).ppl)
    assert c.coded.ppl == pytest.approx(perplexity(server, batches, codecs.get("int8")).ppl)
    exact = compare(server, batches, codecs.get("fp32"))
    assert exact.kl == pytest.approx(0, abs=1e-9) and exact.top1_agreement == 1.0


def test_choose_quality_guard_stops_the_walk(tiny_models) -> None:
    """A setting must also pass the guard (e.g. a generation-agreement floor); the guard runs
    only where perplexity met the target, and the walk stops at its first refusal."""
    import torch

    from splitcomp import codecs
    from splitcomp.llm import split_model
    from splitcomp.llm.lm_eval import choose_quality, edge_pass

    edge, server = split_model(tiny_models["llama_tiny"], 2)
    calib = [edge_pass(edge, torch.randint(0, 256, (1, 24), generator=torch.Generator()
                                           .manual_seed(7)))]
    grid = codecs.codec_class("rans").quality_grid  # (2, 3, 4, 5, 6, 8): lowest rate first

    def make(q: float) -> codecs.Codec:
        return codecs.get("rans", bits=int(q))

    free = choose_quality(server, calib, make, grid, 1e9, confidence=0.5)  # one window
    assert free.quality == grid[0] and free.met and len(free.tried) == len(grid)
    seen: list[int] = []

    def guard(codec: codecs.Codec) -> tuple[bool, dict]:
        seen.append(codec.params["bits"])
        return codec.params["bits"] >= 5, {"gen_agreement": codec.params["bits"] / 8}

    got = choose_quality(server, calib, make, grid, 1e9, guard=guard, confidence=0.5)
    assert got.quality == 5 and got.met and seen == [8, 6, 5, 4]
    assert [t["gen_agreement"] for t in got.tried] == [1.0, 0.75, 0.625, 0.5]
    never = choose_quality(server, calib, make, grid, -1e9, guard=guard,
                           confidence=0.5)  # perplexity misses
    assert not never.met and seen == [8, 6, 5, 4] and "gen_agreement" not in never.tried[0]


def _windows(nll: list[float], tokens: int = 100):
    from splitcomp.llm.lm_eval import Perplexity

    return Perplexity(sum(nll), tokens * len(nll), window_nll=nll,
                      window_tokens=[tokens] * len(nll))


def test_increase_bound() -> None:
    """0.5 is the windows' own increase; above it, the bound grows with the windows' spread
    and with the confidence, and shrinks as windows of the same spread are added."""
    import math

    from splitcomp.llm.lm_eval import increase_bound

    base = _windows([300.0] * 4)
    even = _windows([301.0] * 4)  # every window +1 nat: no spread
    own = 100 * math.expm1(4 / 400)
    assert increase_bound(base, even, 0.5) == pytest.approx(own)
    assert increase_bound(base, even, 0.99) == pytest.approx(own)
    spread = _windows([300.0, 302.0, 300.5, 301.5])  # the same mean increase
    b90, b99 = increase_bound(base, spread, 0.9), increase_bound(base, spread, 0.99)
    assert increase_bound(base, spread, 0.5) == pytest.approx(own) and own < b90 < b99
    d = [0.0, 2.0, 0.5, 1.5]  # se by hand: ratio estimator, W / (W - 1)
    se = math.sqrt(sum((x - 1.0) ** 2 for x in d) * 4 / 3) / 400
    z = 1.2815515655446004
    assert b90 == pytest.approx(100 * math.expm1(0.01 + z * math.sqrt(2) * se))
    more = increase_bound(_windows([300.0] * 16), _windows([300.0, 302.0, 300.5, 301.5] * 4),
                          0.9)
    assert own < more < b90
    with pytest.raises(ValueError, match="2 windows"):
        increase_bound(_windows([300.0]), _windows([301.0]), 0.9)
    with pytest.raises(ValueError, match="same windows"):
        increase_bound(base, _windows([301.0] * 3), 0.9)
    with pytest.raises(ValueError, match="probability"):
        increase_bound(base, even, 1.0)


def test_perplexity_keeps_each_window(tiny_models) -> None:
    import torch

    from splitcomp.llm import split_model
    from splitcomp.llm.lm_eval import edge_pass, perplexity

    edge, server = split_model(tiny_models["llama_tiny"], 2)
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(3))
    whole = perplexity(server, [edge_pass(edge, ids)], None)
    alone = [perplexity(server, [edge_pass(edge, ids[i : i + 1])], None) for i in range(3)]
    assert whole.window_tokens == [19] * 3 and whole.tokens == 57
    assert whole.window_nll == pytest.approx([a.nll for a in alone], rel=1e-5)
    assert sum(whole.window_nll) == pytest.approx(whole.nll)

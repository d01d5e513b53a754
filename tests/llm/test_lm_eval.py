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

    free = choose_quality(server, calib, make, grid, 1e9)
    assert free.quality == grid[0] and free.met and len(free.tried) == len(grid)
    seen: list[int] = []

    def guard(codec: codecs.Codec) -> tuple[bool, dict]:
        seen.append(codec.params["bits"])
        return codec.params["bits"] >= 5, {"gen_agreement": codec.params["bits"] / 8}

    got = choose_quality(server, calib, make, grid, 1e9, guard=guard)
    assert got.quality == 5 and got.met and seen == [8, 6, 5, 4]
    assert [t["gen_agreement"] for t in got.tried] == [1.0, 0.75, 0.625, 0.5]
    never = choose_quality(server, calib, make, grid, -1e9, guard=guard)  # perplexity misses
    assert not never.met and seen == [8, 6, 5, 4] and "gen_agreement" not in never.tried[0]

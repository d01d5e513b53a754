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

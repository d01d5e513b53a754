"""With a lossless codec the split model computes exactly what the whole model computes.

Logits are compared with ``torch.equal``, not a tolerance: both halves call the model's own
modules on the same inputs, the masks are built as the library builds them, and the caches
concatenate as its cache does, so every floating-point operation is the same one.
"""

from __future__ import annotations

import pytest
import torch

from splitcomp import codecs
from splitcomp.llm import SplitLM, family_for, greedy_unsplit, split_model

from .conftest import TINY


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("split", [0, 1, 2, 4])
def test_greedy_tokens_and_logits_equal_unsplit(tiny_models, prompt, name, split) -> None:
    model = tiny_models[name]
    ref_tokens, ref_logits = greedy_unsplit(model, prompt, 24)
    assert len(set(ref_tokens)) > 3  # a degenerate repetition would prove little
    lm = SplitLM(model, split, "fp32")
    steps = list(lm.generate(prompt, 24))
    assert [s.token for s in steps] == ref_tokens
    for ref, step in zip(ref_logits, steps, strict=True):
        assert torch.equal(ref, step.logits)


@pytest.mark.parametrize("name", TINY)
def test_teacher_forced_halves_equal_whole_model(tiny_models, name) -> None:
    model = tiny_models[name]
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    edge, server = split_model(model, 2)
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        got = server.forward_full(edge.forward_full(ids))
        last = server.forward_full(edge.forward_full(ids), keep=torch.tensor([19]))
    assert torch.equal(ref, got)
    torch.testing.assert_close(last, ref[:, 19:20])


LOSSLESS = [n for n in codecs.available() if codecs.codec_class(n).lossless]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("codec", LOSSLESS)
def test_every_lossless_codec_stays_exact(tiny_models, prompt, name, codec) -> None:
    model = tiny_models[name]
    ref, ref_logits = greedy_unsplit(model, prompt, 12)
    steps = list(SplitLM(model, 2, codec).generate(prompt, 12))
    assert [s.token for s in steps] == ref
    assert all(torch.equal(a, s.logits) for a, s in zip(ref_logits, steps, strict=True))


def test_bad_split_and_unknown_family(tiny_models) -> None:
    model = tiny_models["llama_tiny"]
    with pytest.raises(ValueError, match="outside"):
        SplitLM(model, 5)
    with pytest.raises(ValueError, match="no split family"):
        family_for(torch.nn.Linear(2, 2))

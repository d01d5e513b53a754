"""What crosses the cut: the prompt's hidden states once, then one token's per step, and
nothing else (no mask, no positions, no cache); every byte is counted."""

from __future__ import annotations

import pytest
import torch

from splitcomp import codecs
from splitcomp.llm import SplitLM, causal_mask
from splitcomp.llm.hidden_wire import overhead_bytes

from .conftest import TINY


@pytest.mark.parametrize("name", TINY)
def test_one_token_per_decode_step(tiny_models, prompt, name, monkeypatch) -> None:
    lm = SplitLM(tiny_models[name], 2, "fp32")
    hidden = lm.edge.hidden_size
    seen: list[list[tuple[int, ...]]] = []
    receive = lm.wire.receive

    def spy(blobs):
        out = receive(blobs)  # the receiver's session learns templates from full streams
        seen.append([codecs.peek(b, contexts=lm.wire.session).tensors[0].shape for b in blobs])
        return out

    monkeypatch.setattr(lm.wire, "receive", spy)
    steps = list(lm.generate(prompt, 10))
    # prefill: one bitstream per prompt token; then exactly one (1, 1, H) per step
    assert seen[0] == [(1, 1, hidden)] * len(prompt)
    assert seen[1:] == [[(1, 1, hidden)]] * (len(steps) - 1)
    # the session's first stream is full, the rest session streams (5 bytes of container)
    full = 4 * hidden + overhead_bytes(codecs.get("fp32").encode(torch.zeros(1, 1, hidden)))
    token_bytes = 4 * hidden + 5
    assert [s.bytes_sent for s in steps] == [full + (len(prompt) - 1) * token_bytes] + \
        [token_bytes] * (len(steps) - 1)
    stats = lm.wire.stats
    assert stats.tokens == len(prompt) + len(steps) - 1
    assert stats.bytes == sum(s.bytes_sent for s in steps)
    assert stats.bytes_per_token == pytest.approx(token_bytes + (full - token_bytes) / stats.tokens)
    assert stats.bits_per_element == pytest.approx(8 * stats.bytes_per_token / hidden)
    # both sides keep their own cache, advanced in step
    assert lm.edge.position == lm.session.position == stats.tokens


def test_per_message_sends_one_bitstream_per_step(tiny_models, prompt) -> None:
    lm = SplitLM(tiny_models["llama_tiny"], 2, "fp16", per_token=False)
    list(lm.generate(prompt, 5))
    assert lm.wire.stats.bitstreams == lm.wire.stats.messages == 5


def test_masks_follow_the_library() -> None:
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask

    from splitcomp.zoo import create_model

    model = create_model("llama_tiny")
    cfg = model.config
    cache = DynamicCache(config=cfg)
    ref = create_causal_mask(config=cfg, inputs_embeds=torch.zeros(1, 5, 64), attention_mask=None,
                             cache=cache, position_ids=torch.arange(5)[None])
    assert torch.equal(causal_mask([0], 5, "eager"), ref)
    assert causal_mask([0], 5, "sdpa") is None and causal_mask([4], 1, "sdpa") is None
    # padded batch: row 0 has 2 past tokens, row 1 has 4; new token sees past + itself
    m = causal_mask([2, 4], 1, "sdpa")
    assert m.shape == (2, 1, 1, 5)
    assert m[0, 0, 0].tolist() == [True, True, True, False, False]
    assert m[1, 0, 0].tolist() == [True] * 5
    with pytest.raises(ValueError, match="not supported"):
        causal_mask([0, 1], 2, "flash_attention_2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_receiver_keeps_each_streams_last_row_as_float32(dtype) -> None:
    """Every receiver of a session's streams keeps the last decoded row (float32) for a codec
    that codes against it, whatever dtype the hidden states cross in."""
    from splitcomp.codecs.contexts import PREVIOUS_ROW
    from splitcomp.llm.hidden_wire import decode_hidden, encode_hidden

    hidden = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    session: dict = {}
    got = decode_hidden(encode_hidden(codecs.get("fp16"), hidden, known=set()), session)
    row = session[PREVIOUS_ROW]
    assert got.dtype == torch.float32
    assert row.dtype.name == "float32" and row.shape == (8,)
    assert torch.equal(torch.from_numpy(row), got[0, -1])

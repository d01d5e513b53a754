"""Any decoder-only causal LM splits exactly: tiny random-weight models of eleven families.

Each family's model is built from its config in well under a second. With the lossless fp32
codec the split model computes what the whole model computes, bit for bit (``torch.equal``),
with a KV cache on each side: Mistral's and Phi-3's sliding window (5 tokens, exceeded by the
prompt and the 24 new tokens), Qwen2's windowed upper layers, Gemma 2/3's alternating
local/global layers (Gemma 3 with a rotary table per kind), Gemma's scaled embeddings and
logit soft-capping, Granite's and Cohere's multipliers, GPT-2's and OPT's learned positions.
Gemma 2 has no ``sdpa`` attention in transformers, so it is tested with ``eager`` only.
"""

from __future__ import annotations

import pytest
import torch

from splitcomp.llm import EdgeHalf, ServerHalf, SplitLM, family_for, greedy_unsplit, split_model

from .conftest import FAMILY_CONFIGS, WINDOW, tiny_family_model

FAMILIES = sorted(FAMILY_CONFIGS)
CASES = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if (f, a) != ("gemma2", "sdpa")]
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def _model(family: str, attn: str = "eager") -> torch.nn.Module:
    if (family, attn) not in _MODELS:
        _MODELS[family, attn] = tiny_family_model(family, attn)
    return _MODELS[family, attn]


@pytest.mark.parametrize(("family", "attn"), CASES)
def test_split_generation_equals_whole_model(family, attn, prompt) -> None:
    model = _model(family, attn)
    ref_tokens, ref_logits = greedy_unsplit(model, prompt, 24)
    assert len(set(ref_tokens)) > 3  # a degenerate repetition would prove little
    for split in (0, 1, 2, 4):
        steps = list(SplitLM(model, split, "fp32").generate(prompt, 24))
        assert [s.token for s in steps] == ref_tokens, split
        for ref, step in zip(ref_logits, steps, strict=True):
            assert torch.equal(ref, step.logits), split


@pytest.mark.parametrize(("family", "attn"), CASES)
def test_teacher_forced_halves_equal_whole_model(family, attn) -> None:
    model = _model(family, attn)
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    edge, server = split_model(model, 2)
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        got = server.forward_full(edge.forward_full(ids))
    assert torch.equal(ref, got)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_server_steps_equal_single_steps(family) -> None:
    """Continuous batching over sessions at different positions, some inside the window and
    some past it: the same tokens as separate runs, logits to float rounding."""
    model, split, n = _model(family), 1, 10
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 256, (k,), generator=g) for k in (2, 9, 4, 13)]
    alone = [[s.token for s in SplitLM(model, split, "fp32").generate(p, n)] for p in prompts]
    server = ServerHalf(model, split)
    edges = [EdgeHalf(model, split) for _ in prompts]
    sessions = [server.new_session() for _ in prompts]
    logits = server.step_batch(sessions, [e.step(p) for e, p in zip(edges, prompts, strict=True)])
    got = [[int(lg[0, -1].argmax())] for lg in logits]
    solo = ServerHalf(model, split)
    solo_sessions = [solo.new_session() for _ in prompts]
    for s, e, p in zip(solo_sessions, [EdgeHalf(model, split) for _ in prompts], prompts,
                       strict=True):
        s.step(e.step(p))
    for _ in range(n - 1):
        hiddens = [e.step(torch.tensor([t[-1]])) for e, t in zip(edges, got, strict=True)]
        logits = server.step_batch(sessions, hiddens)
        singles = [s.step(h) for s, h in zip(solo_sessions, hiddens, strict=True)]
        for t, lg, one in zip(got, logits, singles, strict=True):
            torch.testing.assert_close(lg, one, rtol=1e-4, atol=1e-4)
            t.append(int(lg[0, -1].argmax()))
    assert got == alone


def test_the_window_is_read_and_matters() -> None:
    """The windowed families' blocks get their windows, and the window changes what the model
    says (so the exactness above would catch a side that ignored it)."""
    assert ServerHalf(_model("mistral"), 0).block_windows == [WINDOW] * 4
    assert ServerHalf(_model("qwen2"), 0).block_windows == [None, None, WINDOW, WINDOW]
    assert EdgeHalf(_model("gemma3"), 4).block_windows == [WINDOW, None, WINDOW, None]
    assert ServerHalf(_model("llama"), 0).block_windows == [None] * 4
    model = _model("mistral")
    prompt = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(1))
    windowed, _ = greedy_unsplit(model, prompt, 12)
    model.config.sliding_window = None
    try:
        full, _ = greedy_unsplit(model, prompt, 12)
    finally:
        model.config.sliding_window = WINDOW
    assert windowed != full


def test_sliding_caches_hold_only_the_window(prompt) -> None:
    model = _model("mistral")
    lm = SplitLM(model, 2, "fp32")
    list(lm.generate(prompt, 12))  # 7 + 11 tokens seen
    for cache in (lm.edge.cache, lm.session.cache):
        assert len(cache) == 18
        # each layer holds the window before the last step and that step's token
        assert {k.shape[-2] for k, _ in cache.layers.values()} == {WINDOW}
    lm.edge.cache.truncate(17)  # undoing the last step is possible...
    with pytest.raises(ValueError, match="dropped"):
        lm.edge.cache.truncate(10)  # ...going back past the window is not


@pytest.mark.parametrize(("config", "model", "why"), [
    ("T5Config", "T5ForConditionalGeneration", "encoder-decoder"),
    ("BartConfig", "BartForConditionalGeneration", "encoder-decoder"),
])
def test_models_that_cannot_be_cut_say_why(config, model, why) -> None:
    import transformers

    cfg = getattr(transformers, config)(vocab_size=64, d_model=16, d_ff=32, num_layers=1,
                                        num_heads=2, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2,
                                        encoder_ffn_dim=32, decoder_ffn_dim=32)
    net = getattr(transformers, model)(cfg)
    with pytest.raises(ValueError, match=why) as err:
        family_for(net)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no split family"):
        family_for(torch.nn.Linear(2, 2))


def test_a_part_the_generic_family_does_not_know_is_refused() -> None:
    model = tiny_family_model("llama")
    model.model.extra_proj = torch.nn.Linear(4, 4)  # something its forward might use
    with pytest.raises(ValueError, match="extra_proj.*override"):
        family_for(model)
    model = tiny_family_model("llama")
    positions = torch.nn.Module()
    positions.register_buffer("table", torch.zeros(4, 4), persistent=False)
    model.model.sinusoidal = positions  # no parameters, but a forward might add it
    with pytest.raises(ValueError, match="sinusoidal"):
        family_for(model)
    assert family_for(_model("gpt2")).name == "gpt2" and family_for(_model("opt")).name == "opt"
    assert family_for(_model("gemma3")).name == "generic"


def test_a_failed_batched_step_past_the_window_changes_nothing(monkeypatch) -> None:
    """The sliding-window caches have trimmed themselves when the step fails: rolling back
    keeps the window, and the sessions then go on as if the step had not been tried."""
    model, split = _model("mistral"), 1
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (k,), generator=g) for k in (8, 11)]
    expected = [[s.token for s in SplitLM(model, split, "fp32").generate(p, 6)] for p in prompts]
    server = ServerHalf(model, split)
    edges = [EdgeHalf(model, split) for _ in prompts]
    sessions = [server.new_session() for _ in prompts]
    got = [[int(s.step(e.step(p))[0, -1].argmax())]
           for s, e, p in zip(sessions, edges, prompts, strict=True)]
    norm = server.part.norm.forward
    for i in range(5):
        hiddens = [e.step(torch.tensor([t[-1]])) for e, t in zip(edges, got, strict=True)]
        if i == 2:  # the blocks have written (and trimmed) their caches when the norm fails
            monkeypatch.setattr(server.part.norm, "forward", _boom)
            with pytest.raises(RuntimeError, match="boom"):
                server.step_batch(sessions, hiddens)
            monkeypatch.setattr(server.part.norm, "forward", norm)
        for t, lg in zip(got, server.step_batch(sessions, hiddens), strict=True):
            t.append(int(lg[0, -1].argmax()))
    assert got == expected


def _boom(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("boom")

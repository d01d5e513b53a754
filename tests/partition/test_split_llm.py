"""export path on tiny Hugging Face models: exact halves, one hidden state crossing, causal
masks and rotary tables rebuilt in the tail, caller-given masks sent as inputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from splitcomp.partition import Partitioner, SplitError  # noqa: E402

from .toy_models import (  # noqa: E402
    assert_no_weight_crosses,
    assert_weights_partitioned,
    reload,
    tiny_gpt2,
    tiny_llama,
)

IDS = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    return tiny_gpt2()


@pytest.fixture(scope="module")
def llama_parts(llama) -> Partitioner:
    return Partitioner(llama, IDS)


@pytest.fixture(scope="module")
def gpt2_parts(gpt2) -> Partitioner:
    return Partitioner(gpt2, IDS)


def _no_mask_crosses(head) -> None:
    """Nothing sequence-by-sequence (the O(S^2) causal mask) is sent."""
    assert all(c.shape[-2:] != (12, 12) for c in head.split_info.crossing)


@pytest.mark.parametrize(("at", "later_layers"), [
    ("model.layers.0", True), ("model.layers.1", True), ("model.layers.3", False)])
def test_llama_block_cut(llama, llama_parts: Partitioner, at: str, later_layers: bool) -> None:
    head, tail = llama_parts.split(at)
    info = head.split_info
    assert info.backend == "export" and info.dynamic_batch
    with torch.no_grad():
        crossing = head(IDS)
        out = tail(*crossing)
        want = llama(IDS, use_cache=False)
    assert type(out) is type(want) and torch.equal(out.logits, want.logits)
    assert [tuple(t.shape) for t in crossing] == [(1, 12, 64)]
    assert [c.dtype for c in info.crossing] == [torch.float32]
    _no_mask_crosses(head)
    # the tail rebuilds the causal mask and rotary tables when it still has layers to run
    assert ({"where", "cos", "sin"} <= set(info.rematerialised)) == later_layers
    assert_no_weight_crosses(llama, crossing)
    assert_weights_partitioned(llama, head, tail)


def test_llama_other_batch_sizes(llama, llama_parts: Partitioner) -> None:
    head, tail = llama_parts.split("model.layers.1")
    for batch in (1, 3):
        ids = torch.randint(0, 256, (batch, 12))
        with torch.no_grad():
            assert torch.equal(tail(*head(ids)).logits, llama(ids, use_cache=False).logits)
    with pytest.raises(ValueError, match="exported for shape"):
        head(torch.randint(0, 256, (1, 7)))  # the sequence length is fixed


def test_llama_cut_inside_a_block(llama, llama_parts: Partitioner) -> None:
    head, tail = llama_parts.split("model.layers.1.self_attn")
    with torch.no_grad():
        crossing = head(IDS)
        assert torch.equal(tail(*crossing).logits, llama(IDS, use_cache=False).logits)
    assert [tuple(t.shape) for t in crossing] == [(1, 12, 64), (1, 12, 64)]  # residual too
    assert_weights_partitioned(llama, head, tail)


def test_llama_attention_mask_crosses_as_an_input(llama) -> None:
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    parts = Partitioner(llama, {"input_ids": ids, "attention_mask": mask})
    head, tail = parts.split("model.layers.1")
    info = head.split_info
    assert [(c.name, c.shape, c.source) for c in info.crossing] == [
        ("attention_mask", (2, 12), "input"), (info.crossing[1].name, (2, 12, 64), "activation")]
    _no_mask_crosses(head)  # the 4-D mask is rebuilt in the tail from the 2-D one
    mask2 = torch.ones(3, 12, dtype=torch.long)
    mask2[1, :5] = 0
    ids2 = torch.randint(0, 256, (3, 12))
    for i, m in ((ids, mask), (ids2, mask2)):
        with torch.no_grad():
            got = tail(*head(i, attention_mask=m)).logits
            want = llama(i, attention_mask=m, use_cache=False).logits
        assert torch.equal(got, want)


def test_gpt2_block_cut(gpt2, gpt2_parts: Partitioner) -> None:
    head, tail = gpt2_parts.split("transformer.h.1")
    with torch.no_grad():
        crossing = head(IDS)
        out = tail(*crossing)
        want = gpt2(IDS, use_cache=False)
    assert torch.equal(out.logits, want.logits)
    assert [tuple(t.shape) for t in crossing] == [(1, 12, 64)]
    _no_mask_crosses(head)
    assert_no_weight_crosses(gpt2, crossing)
    # the tied embedding / lm_head weight is the same tensor in both halves
    assert_weights_partitioned(gpt2, head, tail, shared=1)
    shared = {id(p) for p in head.parameters()} & {id(p) for p in tail.parameters()}
    assert shared == {id(gpt2.lm_head.weight)}
    ids = torch.randint(0, 256, (4, 12))
    with torch.no_grad():
        assert torch.equal(tail(*head(ids)).logits, gpt2(ids, use_cache=False).logits)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's own unpickling
def test_exported_halves_survive_pickling(gpt2, gpt2_parts: Partitioner) -> None:
    head, tail = gpt2_parts.split("transformer.h.2")
    head, tail = reload(head), reload(tail)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(tail(*head(ids)).logits, gpt2(ids, use_cache=False).logits)
    with pytest.raises(ValueError, match="exported for shape"):
        head(torch.randint(0, 256, (1, 7)))


def test_gpt2_cut_after_last_node(gpt2, gpt2_parts: Partitioner) -> None:
    last = len(gpt2_parts.index.compute)
    head, tail = gpt2_parts.split(last)
    with torch.no_grad():
        crossing = head(IDS)
        assert torch.equal(tail(*crossing).logits, gpt2(IDS, use_cache=False).logits)
    assert [tuple(t.shape) for t in crossing] == [(1, 12, 256)]
    assert not list(tail.parameters())


def test_unknown_llm_cut(llama_parts: Partitioner) -> None:
    with pytest.raises(SplitError, match=r"model\.layers\.1"):
        llama_parts.split("model.layer.1")


def test_llm_candidates(gpt2_parts: Partitioner) -> None:
    cands = gpt2_parts.candidates(modules_only=True)
    blocks = [c for c in cands if c.name in {f"transformer.h.{i}" for i in range(4)}]
    assert [c.name for c in blocks] == [f"transformer.h.{i}" for i in range(4)]
    assert all(c.shapes == ((1, 12, 64),) for c in blocks)  # no causal mask
    assert all(c.fp32_bytes == 12 * 64 * 4 for c in blocks)
    flops = [c.head_flops for c in cands]
    assert all(a <= b for a, b in zip(flops, flops[1:], strict=False))
    assert cands[-1].name == "lm_head" and cands[-1].head_flops == cands[-1].total_flops

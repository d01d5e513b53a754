"""Each side loads only its part of a model folder (``save_pretrained`` output), and the two
partially loaded sides generate exactly what the whole model generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from splitcomp.llm import SplitLM, family_for, greedy_unsplit, load_side, side_bytes
from splitcomp.llm.partial import held_parameters, materialise, skeleton

from .conftest import tiny_family_model

SPLIT = 2


@pytest.fixture(scope="module", params=["mistral", "gpt2", "qwen3-tied"])
def saved(request, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A tiny model and the folder ``save_pretrained`` wrote it to (GPT-2 and the Qwen3
    variant tie the LM head to the embeddings; Mistral does not)."""
    family = request.param.removesuffix("-tied")
    model = tiny_family_model(family)
    if request.param.endswith("-tied"):
        model.config.tie_word_embeddings = True
        model.tie_weights()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, folder


def _tied(model: torch.nn.Module) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_each_side_holds_only_its_tensors(saved) -> None:
    model, folder = saved
    n = model.config.num_hidden_layers
    edge = load_side(folder, SPLIT, "edge", attn_implementation="eager")
    server = load_side(folder, SPLIT, "server", attn_implementation="eager")
    edge_held, server_held = held_parameters(edge), held_parameters(server)
    assert {k.split(".")[0] for k in edge_held} <= {"embed_tokens", "blocks", "wpe"}
    assert {int(k.split(".")[2]) for k in edge_held if k.startswith("blocks.")} == set(
        range(SPLIT))
    assert {k.split(".")[0] for k in server_held} == {"blocks", "norm", "lm_head"}
    assert {int(k.split(".")[2]) for k in server_held if k.startswith("blocks.")} == set(
        range(n - SPLIT))
    assert not any(p.is_meta for h in (edge, server) for p in h.part.parameters())
    # the server's head is the embedding matrix when they are tied, and only then
    emb = model.get_input_embeddings().weight
    assert torch.equal(server.part.lm_head.weight, model.get_output_embeddings().weight)
    assert torch.equal(server.part.lm_head.weight, emb) == _tied(model)


@pytest.mark.parametrize("side", ["edge", "server"])
def test_nothing_outside_the_side_is_read(saved, side) -> None:
    model, folder = saved
    skel = skeleton(folder)
    family = family_for(skel)
    part = family.edge(skel, SPLIT) if side == "edge" else family.tail(skel, SPLIT)
    loaded = materialise(skel, part, folder)
    held = [p for p in skel.parameters() if not p.is_meta]
    assert loaded == sum(p.nbytes for p in held) == side_bytes(model, SPLIT)[side]
    assert {id(p) for p in held} == {id(p) for p in part.parameters()}


def test_split_generation_from_partial_sides_equals_whole_model(saved, prompt) -> None:
    model, folder = saved
    ref_tokens, ref_logits = greedy_unsplit(model, prompt, 16)
    lm = SplitLM.from_pretrained(folder, SPLIT, "fp32", attn_implementation="eager")
    steps = list(lm.generate(prompt, 16))
    assert [s.token for s in steps] == ref_tokens
    assert all(torch.equal(a, s.logits) for a, s in zip(ref_logits, steps, strict=True))


def test_side_bytes_add_up(saved) -> None:
    model, folder = saved
    sizes = side_bytes(folder, SPLIT)
    whole = sum(p.numel() * 4 for p in model.parameters())
    assert sizes["whole"] == whole
    emb = model.get_input_embeddings().weight.numel() * 4
    # a tied head makes the server hold the embedding matrix too
    assert sizes["edge"] + sizes["server"] == whole + (emb if _tied(model) else 0)
    assert sizes == side_bytes(model, SPLIT)
    assert all(p.is_meta for p in skeleton(folder).parameters())  # sizes cost no memory


def test_sharded_folders_and_missing_tensors(tmp_path, prompt) -> None:
    model = tiny_family_model("llama")
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ref, _ = greedy_unsplit(model, prompt, 8)
    lm = SplitLM.from_pretrained(tmp_path, SPLIT, attn_implementation="eager")
    assert [s.token for s in lm.generate(prompt, 8)] == ref
    # a folder that lacks a tensor the side needs says which
    del index["weight_map"]["lm_head.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    load_side(tmp_path, SPLIT, "edge")  # the edge does not need it
    with pytest.raises(KeyError, match="lm_head.weight"):
        load_side(tmp_path, SPLIT, "server")
    with pytest.raises(ValueError, match="side must be"):
        load_side(tmp_path, SPLIT, "middle")  # type: ignore[arg-type]

"""``SplitCausalLM.from_pretrained(folder, split, server=URL).generate(...)`` against a real
server on 127.0.0.1: a tiny Gemma 3 (not a Llama: alternating sliding-window/global layers,
a rotary table per kind, scaled embeddings) saved with ``save_pretrained``; the client loads
only the edge side, the server only its side, and greedy tokens equal the whole model's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from splitcomp.llm import greedy_unsplit, load_side
from splitcomp.runtime import Server
from splitcomp.runtime.llm import LLMDeployment, SplitCausalLM
from tests.llm.conftest import tiny_family_model

pytestmark = pytest.mark.timeout(120)
TOKEN = "alice-token-0123456789"
SPLIT = 2


class _Bytes:
    """A byte-level tokenizer in the ``transformers`` call shape (the tiny models read bytes)."""

    eos_token_id = None

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode())}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode(errors="replace")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = tiny_family_model("gemma3")
    folder = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def server(saved) -> Iterator[str]:
    """A server whose deployment holds only the server side of the saved model."""
    _, folder = saved
    half = load_side(folder, SPLIT, "server", attn_implementation="eager")
    bg = Server(llm=[LLMDeployment("tiny", half)], tokens={"alice": TOKEN}).start_in_thread()
    yield bg.url
    bg.stop(grace_s=2.0)


def _client(folder: Path, url: str | None, **kw) -> SplitCausalLM:
    return SplitCausalLM.from_pretrained(folder, SPLIT, url, token=TOKEN, deployment="tiny",
                                         attn_implementation="eager", tokenizer=None, **kw)


def test_greedy_tokens_over_the_network_equal_the_whole_model(saved, server, prompt) -> None:
    model, folder = saved
    ref, _ = greedy_unsplit(model, prompt, 16)
    assert len(set(ref)) > 3
    lm = _client(folder, server)
    out = lm.generate(prompt, max_new_tokens=16, ignore_eos=True)
    assert out.shape == (1, len(prompt) + 16)
    assert torch.equal(out[0, : len(prompt)], prompt)
    assert out[0, len(prompt):].tolist() == ref
    assert list(lm.generate(prompt.tolist(), 16, ignore_eos=True, stream=True)) == ref
    assert lm.wire_stats.tokens == len(prompt) + 15  # the last token's state never crosses
    # the client holds the edge's tensors only: no head, no blocks past the cut
    held = {n for n, p in lm.model.named_parameters() if not p.is_meta}
    assert held and all(n.startswith(("model.embed_tokens.", "model.layers.0.",
                                      "model.layers.1.")) for n in held)
    local = _client(folder, None)  # server=None: both halves here, each with its own part
    assert local.generate(prompt, 16, ignore_eos=True)[0, len(prompt):].tolist() == ref


def test_sampling_and_text(saved, server, prompt) -> None:
    _, folder = saved
    remote, local = _client(folder, server), _client(folder, None)
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, ignore_eos=True)
    drawn = remote.generate(prompt, seed=5, **kw)[0].tolist()
    assert drawn == local.generate(prompt, seed=5, **kw)[0].tolist()  # drawn as the server does
    assert drawn == remote.generate(prompt, seed=5, **kw)[0].tolist()  # the seed fixes them
    assert drawn != remote.generate(prompt, seed=6, **kw)[0].tolist()
    with pytest.raises(ValueError, match="tokenizer"):
        remote.generate("hello")
    remote.tokenizer = _Bytes()
    text = remote.generate("hi", max_new_tokens=8, ignore_eos=True)
    ids = remote.generate(torch.tensor(list(b"hi")), 8, ignore_eos=True)[0, 2:].tolist()
    assert text == bytes(ids).decode(errors="replace")
    assert "".join(remote.generate("hi", 8, ignore_eos=True, stream=True)) == text


def test_a_wrong_split_or_name_is_refused(saved, server, prompt) -> None:
    from splitcomp.runtime import ServerError

    _, folder = saved
    with pytest.raises(ValueError, match="cuts at block"):
        SplitCausalLM.from_pretrained(folder, 1, server, token=TOKEN, deployment="tiny",
                                      tokenizer=None).generate(prompt, 2)
    with pytest.raises(ServerError):
        SplitCausalLM.from_pretrained(folder, SPLIT, server, token=TOKEN, deployment="nope",
                                      tokenizer=None).generate(prompt, 2)

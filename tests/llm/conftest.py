"""Fixtures for the split-LLM tests: tiny models (built once), one torch thread."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from splitcomp.zoo import create_model  # noqa: E402

TINY = ("llama_tiny", "gpt2_tiny")


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Tiny models on a busy 2-core machine: one thread is fastest."""


def _sharpen(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw the weight matrices wider (std 0.3; norms and biases kept): GPT-2's own
    initialisation (std 0.02) gives nearly flat logits, and greedy decoding then repeats one
    token, which would prove little."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and ".ln_" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    return {"llama_tiny": create_model("llama_tiny"),
            "gpt2_tiny": _sharpen(create_model("gpt2_tiny"), 0)}


@pytest.fixture(scope="session")
def prompt() -> torch.Tensor:
    return torch.randint(0, 256, (7,), generator=torch.Generator().manual_seed(3))

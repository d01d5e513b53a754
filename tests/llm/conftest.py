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


# -- tiny random-weight models of many families (built from config in well under a second) ---
#: sliding window of the windowed families: a 7-token prompt and 24 new tokens exceed it
WINDOW = 5
_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               bos_token_id=0, eos_token_id=1, pad_token_id=None)
#: family -> (config class, model class, config fields beyond _COMMON; ``...``: leave out)
FAMILY_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    # upper two layers windowed, lower two full: a hybrid stack
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    # alternating local (windowed) / global layers, final logit soft-capping, scaled embeddings
    # (untied head: tied to these random embeddings, greedy decoding repeats one token)
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "tie_word_embeddings": False}),
    # as Gemma 2, plus a rotary table of its own for the local layers
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "sliding_window": WINDOW, "sliding_window_pattern": 2,
                "tie_word_embeddings": False}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": WINDOW}),
    "opt": ("OPTConfig", "OPTForCausalLM",
            {"ffn_dim": 128, "word_embed_proj_dim": 32, "num_key_value_heads": ...,
             "intermediate_size": ...}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 128,
              "hidden_size": ..., "num_hidden_layers": ..., "num_attention_heads": ...,
              "num_key_value_heads": ..., "intermediate_size": ...,
              "max_position_embeddings": ...}),
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                {"embedding_multiplier": 3.0, "logits_scaling": 2.0, "residual_multiplier": 0.5,
                 "attention_multiplier": 0.2}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.5}),
}
#: std of the redrawn weights where 0.3 makes greedy decoding repeat itself
_STD = {"gemma2": 0.05, "gemma3": 0.05}


def tiny_family_model(family: str, attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    """A tiny random-weight model of ``family`` (:data:`FAMILY_CONFIGS`), sharpened."""
    import transformers

    from splitcomp.zoo.hf import build_seeded

    config_name, model_name, extra = FAMILY_CONFIGS[family]
    fields = {k: v for k, v in {**_COMMON, **extra}.items() if v is not ...}
    config = getattr(transformers, config_name)(**fields, attn_implementation=attn)
    model = build_seeded(getattr(transformers, model_name), config, seed)
    return _sharpen_all(model, seed, _STD.get(family, 0.3))


def _sharpen_all(model: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """As :func:`_sharpen`, sparing every norm (Gemma's norms scale by ``1 + weight``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name and ".ln_" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model

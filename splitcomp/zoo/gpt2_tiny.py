"""A small randomly initialised GPT-2 (``GPT2LMHeadModel``) for partitioning tests."""

from __future__ import annotations

from torch import nn

from .hf import build_seeded, require
from .registry import register_model


@register_model(family="gpt2", task="causal-lm", dataset="text", fx_traceable=False)
def gpt2_tiny(num_layers: int = 4, hidden: int = 64, heads: int = 4, vocab: int = 256,
              max_positions: int = 128, seed: int = 0) -> nn.Module:
    """GPT-2 with learned positions, eager attention, fixed-seed random weights."""
    require("transformers", purpose="gpt2_tiny")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab, n_embd=hidden, n_layer=num_layers, n_head=heads,
        n_positions=max_positions, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )
    return build_seeded(GPT2LMHeadModel, config, seed)

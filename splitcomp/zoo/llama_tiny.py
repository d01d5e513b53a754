"""A small randomly initialised Llama (``LlamaForCausalLM``) for partitioning tests."""

from __future__ import annotations

from torch import nn

from .hf import build_seeded, require
from .registry import register_model


@register_model(family="llama", task="causal-lm", dataset="text", fx_traceable=False)
def llama_tiny(num_layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, vocab: int = 256, max_positions: int = 128,
               seed: int = 0) -> nn.Module:
    """Llama with grouped-query attention, eager attention, fixed-seed random weights."""
    require("transformers", purpose="llama_tiny")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1,
        pad_token_id=None, attn_implementation="eager",
    )
    return build_seeded(LlamaForCausalLM, config, seed)

"""Llama family (Llama, SmolLM2, and others sharing ``LlamaForCausalLM``'s layout).

Rotary position tables are rebuilt on each side from the positions, which each side knows
from its own KV-cache length; only the residual stream crosses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import EdgePart, Family, TailPart, register_family


def _blocks(model: nn.Module, start: int, stop: int | None) -> nn.ModuleList:
    return nn.ModuleList(list(model.model.layers)[start:stop])


def _run(blocks: nn.ModuleList, rotary: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
         mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
    if len(blocks) == 0:
        return hidden
    cos_sin = rotary(hidden, position_ids=positions)
    for block in blocks:
        hidden = block(hidden, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=cache is not None, position_embeddings=cos_sin)
    return hidden


class LlamaEdge(EdgePart):
    def __init__(self, model: nn.Module, split: int) -> None:
        super().__init__()
        self.embed_tokens = model.model.embed_tokens
        self.rotary_emb = model.model.rotary_emb
        self.layers = _blocks(model, 0, split)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        return _run(self.layers, self.rotary_emb, hidden, positions, mask, cache)


class LlamaTail(TailPart):
    def __init__(self, model: nn.Module, split: int) -> None:
        super().__init__()
        self.rotary_emb = model.model.rotary_emb
        self.layers = _blocks(model, split, None)
        self.norm = model.model.norm
        self.lm_head = model.lm_head

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        hidden = _run(self.layers, self.rotary_emb, hidden, positions, mask, cache)
        if keep is not None:
            hidden = hidden[:, keep]
        return self.lm_head(self.norm(hidden))


@register_family
class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama",)

    @staticmethod
    def num_layers(model: nn.Module) -> int:
        return len(model.model.layers)

    @staticmethod
    def hidden_size(model: nn.Module) -> int:
        return int(model.config.hidden_size)

    @staticmethod
    def kv_width(model: nn.Module) -> int:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return 2 * cfg.num_key_value_heads * head_dim

    @staticmethod
    def edge(model: nn.Module, split: int) -> EdgePart:
        return LlamaEdge(model, split)

    @staticmethod
    def tail(model: nn.Module, split: int) -> TailPart:
        return LlamaTail(model, split)

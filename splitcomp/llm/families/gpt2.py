"""GPT-2 family (``GPT2LMHeadModel``).

Learned absolute positions are added on the edge (inside the embeddings); the tail needs no
positions at all, only its own causal mask, rebuilt from its KV-cache length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import EdgePart, Family, TailPart, register_family


def _run(blocks: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor | None,
         cache: Any) -> torch.Tensor:
    for block in blocks:
        hidden = block(hidden, cache=cache, attention_mask=mask, use_cache=cache is not None)
    return hidden


class GPT2Edge(EdgePart):
    def __init__(self, model: nn.Module, split: int) -> None:
        super().__init__()
        tr = model.transformer
        self.wte, self.wpe, self.drop = tr.wte, tr.wpe, tr.drop
        self.h = nn.ModuleList(list(tr.h)[:split])

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        hidden = self.drop(self.wte(input_ids) + self.wpe(positions))
        return _run(self.h, hidden, mask, cache)


class GPT2Tail(TailPart):
    def __init__(self, model: nn.Module, split: int) -> None:
        super().__init__()
        tr = model.transformer
        self.h = nn.ModuleList(list(tr.h)[split:])
        self.ln_f = tr.ln_f
        self.lm_head = model.lm_head

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: Any,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        hidden = _run(self.h, hidden, mask, cache)
        if keep is not None:
            hidden = hidden[:, keep]
        return self.lm_head(self.ln_f(hidden))


@register_family
class GPT2Family(Family):
    name = "gpt2"
    model_types = ("gpt2",)

    @staticmethod
    def num_layers(model: nn.Module) -> int:
        return len(model.transformer.h)

    @staticmethod
    def hidden_size(model: nn.Module) -> int:
        return int(model.config.n_embd)

    @staticmethod
    def kv_width(model: nn.Module) -> int:
        return 2 * int(model.config.n_embd)

    @staticmethod
    def edge(model: nn.Module, split: int) -> EdgePart:
        return GPT2Edge(model, split)

    @staticmethod
    def tail(model: nn.Module, split: int) -> TailPart:
        return GPT2Tail(model, split)
